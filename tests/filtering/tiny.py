"""Tiny offline inputs of the filter tests: a generated set (tiny random Stable Diffusion), a random CLIP folder
built from configs, and a fine-tuned `test_resnet` run folder."""

from pathlib import Path

import torch

from synthtl.config import GenerateConfig, load_config
from synthtl.generation.run import run_generate
from tests.conftest import make_folder, run_cli

TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_tokenizer"
TINY_GEN = ["generator.model=tiny", "generator.height=32", "generator.width=32", "generator.steps=2",
            "generator.batch_size=8", "progress=false", "writers=2"]


def real_data(root: Path) -> Path:
    """A `data.name=folder` dataset: 3 classes, 8 train and 4 test images each."""
    make_folder(root / "train", 8, seed=1)
    make_folder(root / "test", 4, seed=2)
    return root


def generate(real: Path, out: Path, per_class: int) -> Path:
    run_generate(load_config(GenerateConfig, None, [*TINY_GEN, "data.name=folder", f"data.root={real}",
                                                    f"per_class={per_class}", f"out_dir={out}"]))
    return out


def tiny_clip(out: Path, seed: int = 0) -> Path:
    """A random-weight transformers CLIP (2-layer towers, 32 px) with the tiny tokenizer, saved to a folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    cfg = CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32,
                                  "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "max_position_embeddings": tok.model_max_length, **ids},
                     vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(cfg)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tok)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def tiny_run(real: Path, root: Path) -> Path:
    """A finished vanilla fine-tuning run of a random `test_resnet` at 32 px on `real` (one epoch)."""
    rc = run_cli("finetune", "data.name=folder", f"data.root={real}", f"data.cache_dir={root / 'cache'}",
                 "data.num_workers=0", "model.name=test_resnet", "model.pretrained=false", "model.img_size=32",
                 "real_stage.epochs=1", "real_stage.batch_size=8", f"out_dir={root / 'runs'}", "run_name=real",
                 "progress=false", "leep.enabled=false")
    assert rc == 0
    return root / "runs" / "real"


OPEN_CLIP_ARCH = "synthtl-test-tiny"  # an OpenCLIP arch registered by `tiny_open_clip`, for the tests only
OPEN_CLIP_CONFIG = {  # 2-layer towers, 32 px; patch dropout makes a model left in train mode score at random
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 2, "width": 16, "head_width": 8, "patch_dropout": 0.5},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},  # OpenCLIP's BPE
}


def tiny_open_clip(weights: Path, seed: int = 0) -> Path:
    """Registers OPEN_CLIP_ARCH with OpenCLIP (once) and saves a random state_dict of it to `weights` (a .pt file).

    Its tokenizer is OpenCLIP's SimpleTokenizer with the real BPE vocabulary, which ships inside the open_clip wheel.
    """
    import json

    import open_clip

    if OPEN_CLIP_ARCH not in open_clip.list_models():
        config = weights.parent / "open_clip_configs" / f"{OPEN_CLIP_ARCH}.json"  # the file's stem names the arch
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(OPEN_CLIP_CONFIG))
        open_clip.add_model_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(OPEN_CLIP_ARCH)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    return weights


def kept(gen: Path, name: str, per_class: int = 0) -> set[str]:
    """The manifest paths of filter `name`'s kept list for `per_class` (0: the set's planned per_class)."""
    from synthtl.filtering.store import read_kept

    return set(read_kept(gen, name, per_class)["paths"])


def filter_hash(gen: Path, name: str) -> str:
    """The filter's identity hash (its identity.json)."""
    import json

    return json.loads((gen / "filters" / name / "identity.json").read_text())["hash"]
