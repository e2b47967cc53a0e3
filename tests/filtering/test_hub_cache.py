"""`clip.model=<hub id>` offline: a CLIP already in the hub cache loads by its id, scores like the same weights from a
folder, and the filter records the cached snapshot's commit."""

import json
import shutil
from pathlib import Path

from synthtl.files import read_jsonl
from tests.conftest import run_cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_as_hub(folder: Path, cache: Path, repo: str) -> None:
    """The layout huggingface_hub gives a downloaded model: models--org--name/{refs/main, snapshots/<commit>/}."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, entry / "snapshots" / COMMIT)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(COMMIT)


def test_a_cached_hub_id_scores_like_its_folder(tiny_set, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache_as_hub(tiny_set["clip"], cache, "tiny-org/tiny-clip")
    by_id, by_folder = (Path(shutil.copytree(tiny_set["gen"], tmp_path / n)) for n in ("by_id", "by_folder"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at each call (what HF_HUB_CACHE=... sets)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert run_cli("filter", str(by_id), "clip.model=tiny-org/tiny-clip", "name=c", "keep.top_k=2") == 0
    monkeypatch.undo()
    assert run_cli("filter", str(by_folder), f"clip.model={tiny_set['clip']}", "name=c", "keep.top_k=2") == 0
    scores = [{r["id"]: r["score"] for r in read_jsonl(s / "filters" / "c" / "scores.jsonl")} for s in (by_id,
                                                                                                        by_folder)]
    assert scores[0] == scores[1]
    ident = json.loads((by_id / "filters" / "c" / "identity.json").read_text())["identity"]
    assert ident["clip"]["model"] == {"model": "tiny-org/tiny-clip", "revision": COMMIT}  # which snapshot scored it
