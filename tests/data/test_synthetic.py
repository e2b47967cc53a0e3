import json

import pytest

from synthtl.data.datasets import load_split
from synthtl.data.synthetic import MANIFEST, completed_rows, load_synthetic, safe_folder
from synthtl.errors import DataError


def _generated_set(root, classes, per_class, done):
    """A generated-set folder: manifest rows for every image, progress logs for the `done` ones."""
    rows = []
    for ci, c in enumerate(classes):
        for i in range(per_class):
            rows.append({"id": f"{ci}-{i}", "class_index": ci, "class_name": c.replace("_", " "), "class_id": c,
                         "index": i, "seed": 100 * ci + i, "path": f"images/{c}/{i:05d}.jpg", "status": "planned"})
    root.mkdir(parents=True)
    (root / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "progress").mkdir()
    (root / "progress" / "shard-0.jsonl").write_text(
        "".join(json.dumps({"id": r["id"], "seed": r["seed"] + 1000}) + "\n" for r in rows if r["id"] in done))
    for r in rows:
        if r["id"] in done:
            (root / r["path"]).parent.mkdir(parents=True, exist_ok=True)
            (root / r["path"]).write_bytes(b"jpeg")
    return rows


def test_reader_returns_only_completed_rows_and_first_k(tmp_path, folder_data):
    real = load_split("folder", "train", folder_data)
    done = {f"{c}-{i}" for c in range(3) for i in range(4)} - {"1-0"}
    _generated_set(tmp_path / "gen", ["red_fox", "blue_jay", "green_frog"], 5, done)
    rows = completed_rows(tmp_path / "gen")
    assert len(rows) == 11 and all(r["status"] == "done" for r in rows)
    assert {r["id"]: r["seed"] for r in rows}["0-0"] == 1000  # the seed actually used (after a redraw)
    (tmp_path / "gen" / "images/red_fox/00003.jpg").unlink()  # logged but deleted: no longer counts
    assert len(completed_rows(tmp_path / "gen")) == 10
    with pytest.raises(DataError, match="unfinished: 5 of 6 planned images.*synthetic.allow_partial"):
        load_synthetic(tmp_path / "gen", real, per_class=2)  # blue_jay's image 0 is not finished
    syn = load_synthetic(tmp_path / "gen", real, per_class=2, allow_partial=True)
    assert len(syn) == 6 and syn.classes == real.classes
    fox = [p for p, y in zip(syn.paths, syn.labels, strict=True) if real.classes[y] == "red_fox"]
    assert fox == ["images/red_fox/00000.jpg", "images/red_fox/00001.jpg"]
    jay = [p for p, y in zip(syn.paths, syn.labels, strict=True) if real.classes[y] == "blue_jay"]
    assert jay == ["images/blue_jay/00001.jpg", "images/blue_jay/00002.jpg"]  # 00000 is not finished
    with pytest.raises(DataError, match="fewer finished images"):
        load_synthetic(tmp_path / "gen", real, per_class=5, allow_partial=True)


def test_class_mismatch_lists_both_sides(tmp_path, folder_data):
    real = load_split("folder", "train", folder_data)
    _generated_set(tmp_path / "gen", ["red_fox", "blue_jay", "purple_cow"], 1, {"0-0", "1-0", "2-0"})
    with pytest.raises(DataError, match=r"not real classes: \['purple cow'\].*no synthetic images: \['green frog'\]"):
        load_synthetic(tmp_path / "gen", real)


def test_image_folder_as_synthetic_set(folder_data, synthetic_folder):
    real = load_split("folder", "train", folder_data)
    syn = load_synthetic(synthetic_folder, real, per_class=4)
    assert len(syn) == 12 and syn.classes == real.classes
    assert all(real.classes[y] == p.split("/")[0] for p, y in zip(syn.paths, syn.labels, strict=True))
    with pytest.raises(DataError, match="is not a folder"):
        load_synthetic(synthetic_folder / "nope", real)


@pytest.mark.parametrize("name", ["F/A-18", "../../etc", "Café crème", "x" * 300, ".hidden", "a b"])
def test_safe_folder_names(name):
    s = safe_folder(name)
    assert "/" not in s and ".." not in s and not s.startswith(".") and len(s) <= 64 and s.isascii()
    assert s == safe_folder(name)
    assert safe_folder("A320") == "A320"
    assert safe_folder("a/b") != safe_folder("a_b")
