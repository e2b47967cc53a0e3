"""Classifier factory: `create_classifier(name, num_classes) -> (model, data_config)`; head re-initialisation."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from synthtl.errors import ConfigError, SynthTLError, cause
from synthtl.files import UnsafeFileError, load_torch
from synthtl.registry import Registry

# Short names -> "library:architecture.weights". The paper's backbones are ImageNet-1k ResNets and ViTs; the
# LAION CLIP ViT is the reviewers' control (Stable Diffusion itself saw LAION).
MODELS: Registry[str] = Registry("model")
MODELS.add("resnet18", "timm:resnet18.tv_in1k")
MODELS.add("resnet50", "timm:resnet50.tv_in1k")
MODELS.add("vit_b16", "timm:vit_base_patch16_224.augreg_in21k_ft_in1k")
MODELS.add("vit_l16", "timm:vit_large_patch16_224.augreg_in21k_ft_in1k")
MODELS.add("clip_vit_b16_laion", "timm:vit_base_patch16_clip_224.laion2b")
MODELS.add("tv_resnet18", "tv:resnet18")
MODELS.add("tv_resnet50", "tv:resnet50")
MODELS.add("test_resnet", "timm:test_resnet")  # tiny, for tests and the offline demo
MODELS.add("test_vit", "timm:test_vit")

# Label spaces a pretrained head can be scored in by LEEP (ImageNet-1k/-12k/-21k variants).
_CLASSIFIER_LABEL_SPACES = {1000, 11821, 21841, 21843}


class WeightsError(SynthTLError):
    """Pretrained weights are neither cached locally nor reachable."""


def list_models() -> list[tuple[str, str]]:
    return MODELS.items()


def resolve(name: str) -> tuple[str, str]:
    """("timm" | "tv", architecture) for a short name or a "timm:..." / "tv:..." name."""
    full = MODELS.get(name) if ":" not in name else name
    lib, _, arch = full.partition(":")
    if lib not in ("timm", "tv") or not arch:
        raise ConfigError(f"model.name={name!r}: use a short name ({', '.join(MODELS.names())}) or "
                          "'timm:<architecture>[.<tag>]' or 'tv:<torchvision architecture>'")
    return lib, arch


def _weights_error(name: str, weights: str, err: Exception) -> WeightsError:
    """Local `weights` that don't fit `name`, or (none given) pretrained weights neither cached nor reachable."""
    if weights:
        shapes = re.findall(r"size mismatch for (\S+): copying a param with shape (torch.Size\(\[[^]]*\]\))", str(err))
        missing = re.findall(r'Missing key\(s\) in state_dict: "([^"]+)"', str(err))
        why = ("; ".join(f"{k} is {v} in the file" for k, v in shapes[:4]) if shapes else
               f"the file has no {missing[0]} (and maybe more): weights of another architecture" if missing
               else cause(err))
        return WeightsError(f"model.weights={weights!r} does not fit {name} ({why}); pass weights of that "
                            "architecture")
    return WeightsError(
        f"pretrained weights for {name!r} could not be loaded ({cause(err)}). They are not in the local cache and "
        "the hub is unreachable. Fix: run once with internet to fill the cache, or download the weights file and pass "
        "model.weights=/path/to/weights.safetensors, or set model.pretrained=false for random initialisation.")


def _load_state(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"model.weights={path!r} is a folder: give the weights file in it (.safetensors, .pth, .bin)")
    if not p.is_file():
        raise ConfigError(f"model.weights={path!r} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        state = load_torch(p, "plain state dict of weights", "pass weights saved as .safetensors, or a .pth/.bin state "
                           "dict of tensors")
    except UnsafeFileError as e:
        raise WeightsError(f"model.weights={path!r}: {e}") from e
    except Exception as e:  # a damaged or foreign file: name it and the real cause, never "the hub"
        kind = "safetensors" if p.suffix == ".safetensors" else "PyTorch"
        raise WeightsError(f"model.weights={path!r} could not be read as a {kind} state dict ({cause(e)}); check the "
                           "file (.safetensors, or a .pth/.bin state dict)") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def _timm(arch: str, num_classes: int | None, pretrained: bool, weights: str, img_size: int) -> tuple[nn.Module, dict]:
    import timm

    base = arch.split(".")[0]
    if base not in timm.list_models():
        raise ConfigError(f"timm has no architecture {base!r}; `timm.list_models('*{base[:4]}*')` lists similar ones")
    kwargs: dict = {"num_classes": num_classes} if num_classes is not None else {}
    if img_size:
        kwargs["img_size"] = img_size
    if weights:
        state = _load_state(weights)  # unreadable files fail here, naming the file and the cause
        kwargs["pretrained_cfg_overlay"] = {"file": str(Path(weights).resolve())}
        cfg = timm.get_pretrained_cfg(arch)
        head = state.get(f"{cfg.classifier}.weight") if cfg and isinstance(cfg.classifier, str) else None
        if head is not None and head.ndim == 2:  # a head of another size (weights fine-tuned elsewhere): its own
            kwargs["pretrained_cfg_overlay"]["num_classes"] = head.shape[0]  # label space; a target head replaces it
    try:
        try:
            model = timm.create_model(arch, pretrained=pretrained or bool(weights), **kwargs)
        except TypeError:
            if not kwargs.pop("img_size", 0):  # CNNs take any resolution; only the data config changes
                raise
            model = timm.create_model(arch, pretrained=pretrained or bool(weights), **kwargs)
    except (ConfigError, TypeError):
        raise
    except Exception as e:  # hub/network errors come in many types
        if isinstance(e, RuntimeError) and ("Unknown model" in str(e) or "Invalid pretrained tag" in str(e)):
            raise ConfigError(f"timm cannot build {arch!r}: {e}") from None
        raise _weights_error(f"timm:{arch}", weights, e) from e
    return model, dict(timm.data.resolve_model_data_config(model))


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute, layer) of the classifier: the model's last nn.Linear."""
    found = [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    if not found:
        raise ConfigError(f"{type(model).__name__} has no linear classifier layer to replace")
    parent_name, _, attr = found[-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


def _tv(arch: str, num_classes: int | None, pretrained: bool, weights: str) -> tuple[nn.Module, dict]:
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ConfigError(f"torchvision has no model {arch!r}")
    model = torchvision.models.get_model(arch, weights=None)
    data_config = {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
                   "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}
    if pretrained or weights:
        w = torchvision.models.get_model_weights(arch).DEFAULT
        if weights:
            state = _load_state(weights)
        else:
            try:
                state = w.get_state_dict(progress=False, check_hash=True)
            except Exception as e:
                raise _weights_error(f"tv:{arch}", "", e) from e
        model.load_state_dict(state)
        t = w.transforms()
        crop, resize = t.crop_size[0], t.resize_size[0]
        data_config.update(input_size=(3, crop, crop), mean=tuple(t.mean), std=tuple(t.std), crop_pct=crop / resize,
                           interpolation=t.interpolation.value)
    if num_classes is not None:
        replace_head(model, num_classes)
    return model, data_config


def create_classifier(name: str, num_classes: int | None, pretrained: bool = True, weights: str = "",
                      img_size: int = 0) -> tuple[nn.Module, dict]:
    """(model, its weights' data_config) for a short name, "timm:<arch>[.<tag>]" or "tv:<arch>". `num_classes` None:
    the pretrained head (LEEP); `weights`: a local .safetensors/.pth/.bin file; `img_size` 0: the native one."""
    lib, arch = resolve(name)
    weights = os.fspath(weights) if weights else ""
    model, data_config = (_timm(arch, num_classes, pretrained, weights, img_size) if lib == "timm" else
                          _tv(arch, num_classes, pretrained, weights))
    if img_size:
        data_config["input_size"] = (3, img_size, img_size)
    return model, data_config


def classifier(model: nn.Module) -> nn.Linear:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return head if isinstance(head, nn.Linear) else _last_linear(model)[2]


def source_label_space(model: nn.Module) -> int | None:
    """Size of the pretrained head's label space if it is a classifier LEEP can score in (ImageNet variants)."""
    n = classifier(model).out_features
    clip = "clip" in str((getattr(model, "pretrained_cfg", {}) or {}).get("architecture", ""))
    return n if n in _CLASSIFIER_LABEL_SPACES and not clip else None


def replace_head(model: nn.Module, num_classes: int, seed: int | None = None) -> None:
    """Swaps the classifier for a freshly initialised one with `num_classes` outputs (seeded if `seed`)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if hasattr(model, "reset_classifier") and isinstance(getattr(model, "get_classifier", lambda: None)(),
                                                             nn.Linear):
            model.reset_classifier(num_classes)
        else:
            parent, attr, old = _last_linear(model)
            setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def reset_head(model: nn.Module, seed: int) -> None:
    """Re-initialises the classifier in place (same shape, device and dtype; seeded): bridged transfer++ does this
    before stage 2, as the synthetic-trained head has fitted generator artifacts."""
    head = classifier(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # nn.Linear's own initialisation, computed on CPU so the result does not depend on the device.
        fresh = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
    head.load_state_dict(fresh.state_dict())
