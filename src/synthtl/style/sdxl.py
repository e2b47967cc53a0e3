"""SDXL's side of style inversion (ours, beyond the paper): conditioning from two text encoders, size/crop time ids,
and the embedding file diffusers' SDXL loader reads.

SDXL conditions its UNet on the penultimate hidden states of both text encoders side by side (CLIP ViT-L, then
OpenCLIP ViT-bigG), on the second encoder's pooled projection, and on six "time ids": the image's original size,
the top-left corner of the crop taken from it after resizing, and the target size (Podell et al. 2023, section 2.2),
each as (height, width). Inversion feeds the training images' true values; generation uses diffusers' defaults
(original = target = the generated size, no crop).

The token gets one learned vector per text encoder (widths 768 and 1280 in SDXL base); `train.add_tokens` keeps them
side by side in one parameter per token, and the file holds them as diffusers' SDXL layout
{"clip_l": (vectors, 768), "clip_g": (vectors, 1280)}, loaded by one `load_textual_inversion` call per encoder.
"""

from __future__ import annotations

import torch

from synthtl.config import StyleConfig
from synthtl.errors import ConfigError
from synthtl.generation.styles import SDXL_KEYS as KEYS


def check_config(cfg: StyleConfig) -> None:
    """Raises ConfigError for what SDXL inversion does not support (per-class tokens: the file layout holds one)."""
    if cfg.mode != "dataset":
        raise ConfigError("mode=class is not supported for SDXL generators (diffusers' SDXL embedding file holds one "
                          "token); use mode=dataset, or an SD 1.x/2.x generator for per-class tokens")


def time_ids(original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> list[int]:
    """SDXL's six size conditions: original (h, w), crop top-left (top, left) in the resized image, target (h, w)."""
    return [*original, *crop, *target]


def conditioning(pipe, ids: list[torch.Tensor], time_ids: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """(encoder hidden states, added conditions) of prompt ids, one id tensor per text encoder.

    Args:
        pipe: A StableDiffusionXLPipeline (its text encoders carry the learned-token hooks while learning).
        ids: Token ids for text_encoder and text_encoder_2, each (batch, length).
        time_ids: (batch, 6) size conditions (`time_ids`); None gives diffusers' defaults at the UNet's sample size
            (only for callers that pass the pooled embeddings to a pipeline, which adds its own).
    """
    first = pipe.text_encoder(ids[0], output_hidden_states=True)
    second = pipe.text_encoder_2(ids[1], output_hidden_states=True)
    states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)  # SDXL reads the penultimate layer
    added = {"text_embeds": second.text_embeds}
    if time_ids is not None:
        added["time_ids"] = time_ids.to(states.device, torch.float32)  # exact sizes; the UNet embeds them in fp32
    return states, added


def split_state(token_vectors: torch.Tensor, widths: list[int]) -> dict[str, torch.Tensor]:
    """A token's side-by-side vectors (vectors, width_l + width_g) as {"clip_l": ..., "clip_g": ...}."""
    if len(widths) != len(KEYS) or token_vectors.shape[-1] != sum(widths):
        raise ValueError(f"expected vectors of widths {widths} for {KEYS}, got shape {tuple(token_vectors.shape)}")
    left = token_vectors[:, : widths[0]].contiguous()
    return {KEYS[0]: left, KEYS[1]: token_vectors[:, widths[0]:].contiguous()}
