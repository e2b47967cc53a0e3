"""`synthtl filter` with clip.model="open_clip:<arch>/<weights file>": a tiny random OpenCLIP registered from a config,
scored end to end offline; scores match OpenCLIP's own zero-shot recipe, the identity follows the weights' content
(not their place), and every bad model spec is one line naming the fix."""

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synthtl.config import FilterConfig
from synthtl.files import read_json, read_jsonl
from tests.conftest import run_cli
from tests.filtering.tiny import OPEN_CLIP_ARCH, filter_hash, kept, tiny_open_clip

pytest.importorskip("open_clip")  # in the dev extras; the "not installed" message is tested without it below

COMMON = ["keep.top_k=2", "progress=false", "device=cpu", "batch_size=4", "workers=1"]


def model_arg(weights: Path) -> str:
    return f"clip.model=open_clip:{OPEN_CLIP_ARCH}/{weights}"


def scores_by_id(gen: Path, name: str) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(gen / "filters" / name / "scores.jsonl")}


def test_open_clip_scores_are_open_clips_zero_shot_and_reproducible(gen, tmp_path):
    import open_clip

    from synthtl.data.images import load_rgb

    weights = tiny_open_clip(tmp_path / "w" / "tiny.pt")
    assert run_cli("filter", str(gen), model_arg(weights), *COMMON, "name=a") == 0
    assert run_cli("filter", str(gen), model_arg(weights), *COMMON, "name=b", "batch_size=3") == 0
    a, b = scores_by_id(gen, "a"), scores_by_id(gen, "b")
    manifest = read_jsonl(gen / "manifest.jsonl")
    assert sorted(a) == sorted(r["id"] for r in manifest)
    # Eval mode: the tiny arch has patch dropout, so a model left in train mode would score the same image twice
    # differently; batches of 4 and of 3 give the same scores.
    assert np.allclose([a[i]["logit"] for i in sorted(a)], [b[i]["logit"] for i in sorted(b)], rtol=1e-5, atol=1e-6)
    assert filter_hash(gen, "a") == filter_hash(gen, "b")

    # OpenCLIP's own recipe, by hand: its val transform, its tokenizer, unit features, logit_scale.exp() * cosine.
    model, _, preprocess = open_clip.create_model_and_transforms(OPEN_CLIP_ARCH, pretrained=str(weights))
    model.eval()
    classes = sorted({(r["class_index"], r["class_name"]) for r in manifest})
    prompts = [FilterConfig().clip.template.format(name) for _, name in classes]
    with torch.no_grad():
        text = model.encode_text(open_clip.get_tokenizer(OPEN_CLIP_ARCH)(prompts), normalize=True)
        images = torch.stack([preprocess(load_rgb(gen / r["path"])) for r in manifest])
        logits = model.logit_scale.exp() * model.encode_image(images, normalize=True) @ text.T
    probs = logits.softmax(1)
    for i, r in enumerate(manifest):
        s = a[r["id"]]
        assert abs(s["logit"] - float(logits[i, r["class_index"]])) < 1e-4
        assert abs(s["prob"] - float(probs[i, r["class_index"]])) < 1e-5 and s["score"] == s["prob"]
        assert s["pred"] == int(logits[i].argmax()) and 0.0 < s["prob"] < 1.0
    chosen = kept(gen, "a")
    for c, _ in classes:  # the 2 best of each class kept
        rows = sorted((d for d in a.values() if d["class_index"] == c), key=lambda d: -d["score"])
        assert [d["path"] in chosen for d in rows] == [True, True] + [False] * (len(rows) - 2)
    ident = read_json(gen / "filters" / "a" / "identity.json")["identity"]["clip"]["model"]
    assert ident["open_clip"] == OPEN_CLIP_ARCH and ident["weights"].startswith("sha256:")


def test_identity_follows_the_weights_content_not_where_they_live(gen, tmp_path, capsys):
    weights = tiny_open_clip(tmp_path / "w" / "tiny.pt")
    assert run_cli("filter", str(gen), model_arg(weights), *COMMON) == 0
    first = filter_hash(gen, "clip")
    moved = Path(shutil.move(weights, tmp_path / "elsewhere.pt"))
    capsys.readouterr()
    assert run_cli("filter", str(gen), model_arg(moved), *COMMON) == 0  # the same filter, its weights moved
    assert "already finished" in capsys.readouterr().out and filter_hash(gen, "clip") == first
    assert run_cli("filter", str(gen), model_arg(moved), *COMMON, "name=moved") == 0
    assert filter_hash(gen, "moved") == first

    tiny_open_clip(moved, seed=1)  # other weights, at the same path
    assert run_cli("filter", str(gen), model_arg(moved), *COMMON, "name=other") == 0
    assert filter_hash(gen, "other") != first
    other = tiny_open_clip(tmp_path / "other.pt", seed=2)  # other weights, at another path, under a finished name
    capsys.readouterr()
    assert run_cli("filter", str(gen), model_arg(other), *COMMON) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a filter made with another config: clip.model.weights" in err


def one_line_error(capsys, *argv: str) -> str:
    assert run_cli("filter", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_open_clip_models_are_one_line_naming_the_fix(gen, tmp_path, capsys, caplog, monkeypatch):
    weights = tiny_open_clip(tmp_path / "tiny.pt")
    err = one_line_error(capsys, str(gen), model_arg(tmp_path / "missing.pt"), *COMMON)
    assert "no weights file" in err and "missing.pt" in err and "path of a weights file" in err
    err = one_line_error(capsys, str(gen), model_arg(tmp_path), *COMMON)
    assert "(a folder)" in err
    err = one_line_error(capsys, str(gen), f"clip.model=open_clip:synthtl-test-tinny/{weights}", *COMMON)
    assert "no arch 'synthtl-test-tinny'" in err and OPEN_CLIP_ARCH in err and "list_models()" in err
    err = one_line_error(capsys, str(gen), f"clip.model=open_clip:{OPEN_CLIP_ARCH}", *COMMON)
    assert "names no weights" in err and "random CLIP would score noise" in err
    caplog.clear()
    with caplog.at_level(logging.INFO):  # OpenCLIP logs its own failure too: a second line on a real terminal
        err = one_line_error(capsys, str(gen), "clip.model=open_clip:ViT-B-32/openai", *COMMON)  # a tag: from the hub
    assert "could not be loaded by OpenCLIP" in err and "local cache" in err and "local weights file" in err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    err = one_line_error(capsys, str(gen), "clip.model=open_clip:hf-hub:org/repo", *COMMON)
    assert "not supported" in err
    torch.save({"not": torch.zeros(1)}, tmp_path / "junk.pt")  # not weights of the arch
    err = one_line_error(capsys, str(gen), model_arg(tmp_path / "junk.pt"), *COMMON)
    assert "could not be loaded by OpenCLIP" in err and f"weights of the {OPEN_CLIP_ARCH!r} arch" in err
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed: `import open_clip` fails
    err = one_line_error(capsys, str(gen), model_arg(weights), *COMMON)
    assert "not installed" in err and "pip install open_clip_torch" in err
    assert not (gen / "filters" / "clip" / "scores.jsonl").exists()
