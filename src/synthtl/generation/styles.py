"""Applying a learned style to a pipeline (learning it is `synthtl.style`'s business; nothing here imports it).

- A token embedding (`learned_embeds.safetensors`): one key per pseudo-token, a (vectors, dim) tensor; a file with one
  token is exactly what diffusers' `load_textual_inversion` reads, per-class files hold one key per class and are
  loaded token by token, and `style.json` beside it says which class uses which token. SDXL's file holds diffusers'
  layout {"clip_l", "clip_g"}, one call per text encoder.
- A style LoRA (`pytorch_lora_weights.safetensors`, or `adapters/<class index>/` per class): added into the weights
  (fused: no extra cost per image). A per-class LoRA keeps the base weights and `set_style_lora_class(pipe, name)`
  writes W + B_c A_c before each batch; until a class is chosen the UNet refuses to run, so a caller that forgets
  cannot generate unstyled images. lora_B is stored multiplied by alpha / rank, so the file means W + B A."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from synthtl.config import PromptConfig
from synthtl.errors import ConfigError, SynthTLError, cause
from synthtl.files import read_json, sha256_file
from synthtl.generation.families import is_sdxl, text_encoders, tokenizers

EMBEDS = "learned_embeds.safetensors"
STYLE_JSON = "style.json"
WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default name: load_lora_weights(folder) finds it
ADAPTERS = "adapters"  # per-class LoRA: adapters/<class index>/
PREFIXES = ("unet", "text_encoder", "text_encoder_2")  # a LoRA file's key prefixes (diffusers' convention; _2: SDXL)
SDXL_KEYS = ("clip_l", "clip_g")  # diffusers' SDXL textual-inversion layout: one key per text encoder, in order


@contextlib.contextmanager
def quiet_transformers(hf_logging=None) -> Iterator[None]:
    """Silences transformers' notices, noise here: an embedding table resized, a prompt measured as too long.
    `hf_logging`: another library's logging module of the same API (diffusers')."""
    if hf_logging is None:
        from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _load_file(file: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a damaged or foreign file is named with its cause and `fix`, never a traceback."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:
        raise ConfigError(f"{what} {file} could not be read as a safetensors file ({cause(e, 120)}); {fix}") from None


# ---------------------------------------------------------------------------------------------------- tokens
def resolve_path(path: str | os.PathLike) -> Path:
    """A style folder (from `synthtl learn-style`) or the .safetensors file itself."""
    p = Path(path)
    if p.is_dir():
        p = p / EMBEDS
    if not p.is_file():
        raise ConfigError(f"style embedding {path!r} not found: point prompts.style_embedding at the folder written "
                          f"by `synthtl learn-style` or at its {EMBEDS}")
    return p


def class_tokens(path: str | os.PathLike) -> dict[str, str]:
    """class name -> token for a per-class embedding ({} for a dataset-style one)."""
    meta = resolve_path(path).parent / STYLE_JSON
    return dict(read_json(meta).get("class_tokens", {})) if meta.is_file() else {}


def _check_fits(path, token: str, emb: torch.Tensor, encoder, tokenizer, what: tuple[str, str]) -> None:
    """Refuses vectors of another width than the text encoder's, and a token the tokenizer already has."""
    width = encoder.get_input_embeddings().weight.shape[1]
    if emb.shape[-1] != width:
        raise ConfigError(f"style embedding {path} has {what[0]}vectors of size {emb.shape[-1]} but {what[1]} uses "
                          f"{width}: it was learned for another model")
    if token in tokenizer.get_vocab():
        raise ConfigError(f"token {token!r} of {path} is already in the tokenizer; learn the style with another "
                          "style.token")


def load_into_pipeline(pipe, path: str | os.PathLike) -> list[str]:
    """Adds the file's tokens to the pipeline; returns them. SDXL: a key per encoder, the token named in style.json."""
    file = resolve_path(path)
    state = _load_file(file, "style embedding", "point prompts.style_embedding at a `synthtl learn-style` folder or "
                       "its learned_embeds.safetensors")
    state = {k: (v[None] if v.dim() == 1 else v) for k, v in state.items()}
    if not is_sdxl(pipe):
        for token, emb in state.items():
            _check_fits(path, token, emb, pipe.text_encoder, pipe.tokenizer,
                        ("", f"the text encoder of {type(pipe.text_encoder).__name__}"))
        dtype = pipe.text_encoder.get_input_embeddings().weight.dtype
        with quiet_transformers():
            pipe.load_textual_inversion([{t: v.to(dtype)} for t, v in state.items()], token=list(state))
        return list(state)
    if set(state) != set(SDXL_KEYS):
        raise ConfigError(f"style embedding {path} holds {sorted(state)[:3]}, not an SDXL embedding "
                          f"({', '.join(SDXL_KEYS)}): it was learned for an SD 1.x/2.x generator; learn the style "
                          "again with this generator")
    if not (file.parent / STYLE_JSON).is_file():
        raise ConfigError(f"{file} has no {STYLE_JSON} beside it to name its token; point prompts.style_embedding at "
                          "the folder written by `synthtl learn-style`")
    token = read_json(file.parent / STYLE_JSON)["tokens"][0]
    pairs = list(zip(SDXL_KEYS, text_encoders(pipe), tokenizers(pipe), strict=True))
    for key, encoder, tokenizer in pairs:
        _check_fits(path, token, state[key], encoder, tokenizer, (f"{key} ", f"this generator's {key} text encoder"))
    with quiet_transformers():
        for key, encoder, tokenizer in pairs:
            vectors = state[key].to(encoder.get_input_embeddings().weight.dtype)
            pipe.load_textual_inversion(vectors, token=token, text_encoder=encoder, tokenizer=tokenizer)
    return [token]


# ------------------------------------------------------------------------------------------------------ LoRAs
def _weight_files(path: str | Path) -> dict[int, Path]:
    """{-1: the file} for one LoRA, {class index: file} for a per-class folder; ConfigError for anything else."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"prompts.style_lora={str(path)!r} does not exist: point it at a folder written by `synthtl "
                          "learn-style method=lora` (check the path, or learn the style first)")
    if p.is_file() and p.suffix == ".safetensors":
        return {-1: p}
    if (p / WEIGHTS).is_file():
        return {-1: p / WEIGHTS}
    found = {int(d.name): d / WEIGHTS for d in (p / ADAPTERS).iterdir()
             if d.name.isdigit() and (d / WEIGHTS).is_file()} if (p / ADAPTERS).is_dir() else {}
    if found:
        return dict(sorted(found.items()))
    raise ConfigError(f"prompts.style_lora={str(path)!r} is not a LoRA: point it at a folder written by `synthtl "
                      f"learn-style method=lora` (with {WEIGHTS} or {ADAPTERS}/<class>/{WEIGHTS})")


def embeddings_hash(path: str | os.PathLike) -> str:
    """The content hash of a style embedding (style.json's "hash"; a generated set's style_hash)."""
    return sha256_file(resolve_path(path))[:16]


def lora_hash(path: str | Path) -> str:
    """The content hash of a style LoRA (style.json's "hash"): its file, or every class adapter's file."""
    files = _weight_files(path)
    if list(files) == [-1]:
        return sha256_file(files[-1])[:16]
    return hashlib.sha256("".join(f"{c}\0{sha256_file(f)}\n" for c, f in files.items()).encode()).hexdigest()[:16]


def generation_style_hash(prompts: PromptConfig) -> str:
    """What a generated set records as its style: the embedding's hash, "lora-" + the LoRA's, or both joined by "+"."""
    parts = [embeddings_hash(prompts.style_embedding)] if prompts.style_embedding else []
    if prompts.style_lora:
        parts.append("lora-" + lora_hash(prompts.style_lora))
    return "+".join(parts)


def _read_deltas(file: Path, pipe) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """{(component, module): (B, A)} of one LoRA file; ConfigError if a key or shape does not fit this model."""
    fix = "point prompts.style_lora at a folder written by `synthtl learn-style method=lora`"
    state = _load_file(file, "style LoRA", fix)
    out = {}
    for key, a in state.items():
        prefix, _, rest = key.partition(".")
        if ".lora_A." not in key:
            if ".lora_B." in key and prefix in PREFIXES:
                continue
            raise ConfigError(f"{file} holds {key!r}, not a LoRA weight of the UNet or text encoders: {fix}")
        module_name = rest.split(".lora_A.")[0]
        b = state.get(key.replace(".lora_A.", ".lora_B."))
        model = getattr(pipe, prefix, None) if prefix in PREFIXES else None
        try:
            module = model.get_submodule(module_name) if model is not None else None
        except AttributeError:
            module = None
        want = (b.shape[0] if b is not None else -1, a.shape[1])
        if b is None or not isinstance(module, torch.nn.Linear) or tuple(module.weight.shape) != want:
            have = tuple(module.weight.shape) if isinstance(module, torch.nn.Linear) else "no such linear layer"
            raise ConfigError(f"style LoRA {file} does not fit this generator: {prefix}.{module_name} is {have}, the "
                              f"LoRA expects {want}; it was learned for another base model (generator.model)")
        out[(prefix, module_name)] = (b, a)
    return out


class StyleLora:
    """Fuses a style LoRA into a pipeline's weights (`pipe.synthtl_style_lora`); a per-class one switches with
    `set_style_lora_class`, and until then the UNet refuses to run."""

    def __init__(self, pipe, path: str | Path):
        files = _weight_files(path)
        meta = Path(path) / STYLE_JSON if Path(path).is_dir() else None
        self.classes = list(read_json(meta)["classes"]) if meta and meta.is_file() else []
        self.per_class = list(files) != [-1]
        if self.per_class and not self.classes:
            raise ConfigError(f"{path} has per-class adapters but no {STYLE_JSON} naming the classes; point "
                              "prompts.style_lora at the whole folder written by `synthtl learn-style`")
        self.path, self.current = str(path), None
        self.deltas = {c: _read_deltas(f, pipe) for c, f in files.items()}
        names = set().union(*(d.keys() for d in self.deltas.values()))
        self.modules = {k: getattr(pipe, k[0]).get_submodule(k[1]) for k in sorted(names)}
        # The base weights are kept only where they must be restored: per-class switching.
        self.base = {k: m.weight.detach().clone() for k, m in self.modules.items()} if self.per_class else {}
        pipe.synthtl_style_lora = self
        if self.per_class:
            pipe.unet.register_forward_pre_hook(self._need_class)
        else:
            self.write(self.deltas[-1])

    def _need_class(self, module, args) -> None:
        if self.current is None:
            raise SynthTLError(f"{self.path} is a per-class LoRA: call set_style_lora_class(pipe, class_name) before "
                               "generating, so each image gets its class's adapter")

    @torch.no_grad()
    def write(self, deltas: dict) -> None:
        """W = W0 + B A for every module, computed in fp32 from the kept base (no drift over many switches)."""
        for k, m in self.modules.items():
            w = self.base.get(k, m.weight).float()
            if k in deltas:
                b, a = deltas[k]
                w = w + b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)
            m.weight.copy_(w.to(m.weight.dtype))


def set_style_lora_class(pipe, class_name: str) -> None:
    """Writes `class_name`'s adapter into the weights (a per-class LoRA; else a no-op): batches must hold one class."""
    lora = getattr(pipe, "synthtl_style_lora", None)
    if lora is None or not lora.per_class or class_name == lora.current:
        return
    if class_name not in lora.classes:
        raise ConfigError(f"class {class_name!r} has no adapter in the per-class LoRA {lora.path} (learned for "
                          f"{len(lora.classes)} classes: {lora.classes[:5]}...); learn it on this dataset")
    lora.write(lora.deltas[lora.classes.index(class_name)])
    lora.current = class_name
