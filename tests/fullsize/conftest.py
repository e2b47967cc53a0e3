"""Session fixtures for the full-size tests: the real CLIP tokenizer and a random-weight SD v1.5 folder."""

from pathlib import Path

import pytest
import torch

from tests.fullsize import sd15


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory) -> Path:
    """A transformers CLIPTokenizer folder converted from clip-anytorch's BPE file (49,408 entries)."""
    if sd15.clip_package_dir() is None:
        pytest.skip("clip-anytorch is not installed (synthtl's dev extra): it ships the real CLIP BPE file")
    return sd15.write_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


@pytest.fixture(scope="session")
def clip_tokenizer(clip_tokenizer_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir))


@pytest.fixture(scope="session")
def sd15_folder(tmp_path_factory, clip_tokenizer_dir) -> Path:
    """SD v1.5's architecture with random weights as a diffusers folder (fp16 safetensors, 2 GB), built once."""
    return sd15.save_sd15(tmp_path_factory.mktemp("sd15") / "sd15", clip_tokenizer_dir, torch.float16)
