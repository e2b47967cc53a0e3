"""GPU acceptance tests (`pytest -m gpu`): one per CUDA path. Every module here skips itself without CUDA."""

import pytest
import torch

needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def sd15_on_gpu(dtype: torch.dtype, seed: int = 0) -> dict:
    """SD v1.5's components (synthtl's configs, random weights) built directly on the GPU: seconds, not minutes."""
    from synthtl.generation.pipeline import sd15_components

    torch.manual_seed(seed)
    with torch.device("cuda"):
        parts = sd15_components(torch.float32)
    for name in ("unet", "vae", "text_encoder"):
        parts[name].to("cuda", dtype)
    return parts


def plain_pipeline(parts: dict):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
