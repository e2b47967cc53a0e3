"""Learned token embeddings: the file format, its hash, and loading into a pipeline's text encoder.

`learned_embeds.safetensors` maps each pseudo-token to a (vectors, dim) tensor, one key per token: a file with
one token is exactly what diffusers' `load_textual_inversion` reads; per-class files hold one key per class and
are loaded token by token. `style.json` beside it says which class uses which token.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from synthtl.errors import ConfigError
from synthtl.files import read_json, sha256_file

EMBEDS = "learned_embeds.safetensors"
STYLE_JSON = "style.json"


def resolve_path(path: str | os.PathLike) -> Path:
    """A style folder (from `synthtl learn-style`) or the .safetensors file itself."""
    p = Path(path)
    if p.is_dir():
        p = p / EMBEDS
    if not p.is_file():
        raise ConfigError(f"style embedding {path!r} not found: point prompts.style_embedding at the folder written "
                          f"by `synthtl learn-style` or at its {EMBEDS}")
    return p


def read_embeddings(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = resolve_path(path)
    try:
        state = load_file(str(file))
    except Exception as e:  # a damaged or foreign file: name it and the cause, never a traceback
        raise ConfigError(f"style embedding {file} could not be read as a safetensors file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else ''}); point prompts.style_embedding at a "
                          "`synthtl learn-style` folder or its learned_embeds.safetensors") from None
    return {k: (v[None] if v.dim() == 1 else v) for k, v in state.items()}


def embeddings_hash(path: str | os.PathLike) -> str:
    return sha256_file(resolve_path(path))[:16]


def class_tokens(path: str | os.PathLike) -> dict[str, str]:
    """class name -> token for a per-class embedding ({} for a dataset-style one)."""
    meta = resolve_path(path).parent / STYLE_JSON
    if not meta.is_file():
        return {}
    return dict(read_json(meta).get("class_tokens", {}))


def load_into_pipeline(pipe, path: str | os.PathLike) -> list[str]:
    """Adds the file's tokens to the pipeline's tokenizer and text encoder; returns the tokens.

    Raises:
        ConfigError: a token already exists in the tokenizer, or the embedding width differs from the text encoder's.
    """
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: clip_l/clip_g, one diffusers call per encoder
        from synthtl.style.sdxl import load_into_pipeline as load_sdxl

        return load_sdxl(pipe, path)
    state = read_embeddings(path)
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    vocab = pipe.tokenizer.get_vocab()
    for token, emb in state.items():
        if emb.shape[-1] != width:
            raise ConfigError(f"style embedding {path} has vectors of size {emb.shape[-1]} but the text encoder of "
                              f"{type(pipe.text_encoder).__name__} uses {width}: it was learned for another model")
        if token in vocab:
            raise ConfigError(f"token {token!r} of {path} is already in the tokenizer; learn the style with another "
                              "style.token")
    dtype = pipe.text_encoder.get_input_embeddings().weight.dtype
    tokens = list(state)
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # diffusers resizes the embedding table; transformers' notice about it is noise
    try:
        pipe.load_textual_inversion([{t: state[t].to(dtype)} for t in tokens], token=tokens)
    finally:
        hf_logging.set_verbosity(level)
    return tokens
