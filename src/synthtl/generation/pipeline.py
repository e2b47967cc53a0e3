"""Building the SD pipeline (hub id, local folder, single file, or tiny); offline failures name the fix."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import warnings
from pathlib import Path

import torch

from synthtl.config import GeneratorConfig
from synthtl.errors import ConfigError, SynthTLError, cause
from synthtl.generation.families import family_of, sd_scheduler, tiny_components, tiny_tokenizer
from synthtl.generation.styles import StyleLora, quiet_transformers
from synthtl.registry import Registry
from synthtl.runtime import Runtime, resolve_runtime

SCHEDULERS: Registry[tuple[str, dict]] = Registry("scheduler")
SCHEDULERS.add("dpmsolver++", ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}))
SCHEDULERS.add("ddim", ("DDIMScheduler", {}))
SCHEDULERS.add("euler_a", ("EulerAncestralDiscreteScheduler", {}))
SCHEDULERS.add("euler", ("EulerDiscreteScheduler", {}))
SCHEDULERS.add("pndm", ("PNDMScheduler", {"skip_prk_steps": True}))


class PipelineError(SynthTLError):
    """The generator's weights cannot be loaded."""


def generator_runtime(gen: GeneratorConfig) -> Runtime:
    """Device from the config; dtype "auto" = fp16 on GPU (Stable Diffusion's usual inference dtype), fp32 on CPU."""
    return resolve_runtime(gen.device, gen.dtype, auto_gpu="fp16")


def sd15_components(dtype: torch.dtype = torch.float32, tokenizer=None) -> dict:
    """SD v1.5's UNet, VAE and CLIP ViT-L/14 from their published configs, random weights (benchmarks; no download)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768))
    if tokenizer is None:
        tokenizer = tiny_tokenizer()
        tokenizer.model_max_length = 77
    parts = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    for m in parts.values():
        m.to(dtype).eval()
    return {**parts, "tokenizer": tokenizer, "scheduler": sd_scheduler()}


def _checkpoint_problem(path: str) -> str:
    """Why a single-file checkpoint holds no readable tensors ("" if it does); a .ckpt is loaded weights_only."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                return "" if list(f.keys()) else "it holds no tensors"
        from synthtl.files import load_torch

        load_torch(path, "PyTorch checkpoint of tensors", "download it again")
        return ""
    except Exception as e:
        return cause(e, 300)


def _offline(what: str, err: Exception) -> PipelineError:
    return PipelineError(
        f"could not load the generator {what!r} ({cause(err)}). Its files "
        "are not in the local Hugging Face cache and the hub is unreachable. Fix: download it once with internet "
        "(huggingface-cli download <id>) or point generator.model at a local diffusers folder or .safetensors file; "
        "generator.model=tiny runs a random-weight pipeline for testing.")


def load_pipeline(gen: GeneratorConfig, rt: Runtime | None = None, style_lora: str = ""):
    """A ready pipeline of the model's family on the resolved device/dtype with its scheduler; `style_lora` is
    fused into its weights before `optimize`, so that fused projections and compile see the styled weights."""
    warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
    rt = rt or generator_runtime(gen)
    model, dtype = gen.model, rt.dtype
    if model != "tiny" and not Path(model).exists() and model.startswith(("/", "./", "../")):
        raise ConfigError(f"generator.model={model!r} does not exist")
    try:
        family = family_of(gen)
    except (OSError, ValueError) as e:  # a hub model whose model_index.json is neither cached nor reachable
        raise _offline(model, e) from e
    cls, common = family.pipeline_class(), family.kwargs()
    if model == "tiny":
        pipe = cls(**tiny_components(gen.tiny_seed), **common)
    elif Path(model).is_file():
        if not model.endswith((".safetensors", ".ckpt")):
            raise ConfigError(f"generator.model={model!r}: a single-file checkpoint must be .safetensors or .ckpt")
        config = {"config": gen.single_file_config} if gen.single_file_config else {}
        from diffusers.utils import logging as diffusers_logging

        try:  # quiet: diffusers' "no local configs, attempting to download" lines (ours says it)
            with quiet_transformers(diffusers_logging):
                pipe = cls.from_single_file(model, torch_dtype=dtype, **config, **common)
        except Exception as e:
            problem = _checkpoint_problem(model)
            if problem:
                raise PipelineError(f"generator.model={model!r} is not a valid checkpoint file ({problem}): it is "
                                    "damaged, truncated or not a checkpoint of weights; download it again or point at "
                                    "another file") from e
            if gen.single_file_config:
                raise _offline(model, e) from e
            raise PipelineError(
                f"could not load the single-file checkpoint {model!r} ({cause(e)}). A single .safetensors/.ckpt file "
                "holds weights only; its configs come from the hub, which is unreachable. Fix: set "
                "generator.single_file_config to a local diffusers folder of the same architecture (e.g. a downloaded "
                "stable-diffusion-v1-5 snapshot)"
            ) from e
    elif Path(model).is_dir():
        pipe = cls.from_pretrained(model, torch_dtype=dtype, **common)
    else:
        try:
            pipe = cls.from_pretrained(model, revision=gen.revision or None, torch_dtype=dtype, **common)
        except Exception as e:
            raise _offline(model, e) from e
    import diffusers

    name, kwargs = SCHEDULERS.get(gen.scheduler)
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **kwargs)
    pipe.to(rt.device)
    if model == "tiny" and dtype != torch.float32:
        pipe.to(dtype=dtype)  # the tiny components are built in fp32
    if style_lora and StyleLora(pipe, style_lora).per_class:
        # Fused q/k/v copies of the weights would not follow the per-class weight switching: left unfused.
        gen = dataclasses.replace(gen, fuse_qkv=False)
    return optimize(pipe, gen, rt)


def optimize(pipe, gen: GeneratorConfig, rt: Runtime):
    """Speed settings that never change the images: fused q/k/v, channels_last, compile (CUDA); SDPA is default."""
    pipe.set_progress_bar_config(disable=True)
    if rt.is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        if gen.fuse_qkv and hasattr(pipe, "fuse_qkv_projections"):
            pipe.fuse_qkv_projections()
        if gen.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if gen.compile:
            pipe.unet = torch.compile(pipe.unet, fullgraph=False)
    return pipe


@functools.cache
def tiny_revision(seed: int) -> str:
    """A fingerprint of the tiny pipeline's configs and random weights (the same recipe as earlier sets used)."""
    comps, h = tiny_components(seed), hashlib.sha256()
    for name in ("unet", "vae", "text_encoder"):
        conf = comps[name].config
        conf = conf.to_dict() if hasattr(conf, "to_dict") else dict(conf)
        h.update(json.dumps({k: v for k, v in conf.items() if not k.startswith("_") and k != "transformers_version"},
                            sort_keys=True, default=str).encode())
        for t in comps[name].state_dict().values():
            h.update(t.detach().float().cpu().numpy().tobytes())
    return "tiny-" + h.hexdigest()[:16]
