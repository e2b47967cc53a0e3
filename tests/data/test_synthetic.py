import numpy as np
import pytest

from synthtl.data.datasets import load_split
from synthtl.data.genset import completed_rows, present, read_rows, safe_folder
from synthtl.data.synthetic import load_synthetic_set
from synthtl.errors import DataError
from tests.data.sets import fake_set

CLASSES = ["red_fox", "blue_jay", "green_frog"]


def load(path, real, **kw):
    return load_synthetic_set(path, real, **kw)[0]


def test_reader_returns_only_completed_rows_and_first_k(tmp_path, folder_data):
    real = load_split("folder", "train", folder_data)
    done = {(c, i) for c in range(3) for i in range(4)} - {(1, 0)}
    gen = fake_set(tmp_path / "gen", CLASSES, 5, done, redrawn={(0, 0): 2})
    rows = list(completed_rows(gen))
    assert len(rows) == 11 and all(r["status"] == "done" for r in rows)
    assert rows[0]["seed"] == 2 and rows[0]["redraws"] == 2  # the seed actually used (after a redraw)
    rows = read_rows(gen)

    def path(c, i):
        return rows.rel_path(rows.position(c, i))

    (gen / path(0, 3)).unlink()  # logged but deleted: no longer counts
    assert len(list(completed_rows(gen))) == 10
    with pytest.raises(DataError, match="unfinished: 5 of 6 planned images.*synthetic.allow_partial"):
        load(gen, real, per_class=2)  # blue_jay's image 0 is not finished
    syn = load(gen, real, per_class=2, allow_partial=True)
    assert len(syn) == 6 and syn.classes == real.classes
    fox = [p for p, y in zip(syn.paths, syn.labels, strict=True) if real.classes[y] == "red_fox"]
    assert fox == [path(0, 0), path(0, 1)]
    jay = [p for p, y in zip(syn.paths, syn.labels, strict=True) if real.classes[y] == "blue_jay"]
    assert jay == [path(1, 1), path(1, 2)]  # image 0 is not finished
    with pytest.raises(DataError, match="fewer finished images"):
        load(gen, real, per_class=5, allow_partial=True)
    kept = {path(0, 1), path(1, 2), path(2, 0)}
    assert sorted(load(gen, real, per_class=2, allow_partial=True, kept=kept).paths) == sorted(kept)
    with pytest.raises(DataError, match="keeps no image of 1 classes"):
        load(gen, real, per_class=2, allow_partial=True, kept=kept - {path(2, 0)})


def test_class_mismatch_lists_both_sides(tmp_path, folder_data):
    real = load_split("folder", "train", folder_data)
    gen = fake_set(tmp_path / "gen", ["red_fox", "blue_jay", "purple_cow"], 1, {(0, 0), (1, 0), (2, 0)})
    with pytest.raises(DataError, match=r"not real classes: \['purple cow'\].*no synthetic images: \['green frog'\]"):
        load(gen, real)


def test_image_folder_as_synthetic_set(folder_data, synthetic_folder):
    real = load_split("folder", "train", folder_data)
    syn = load(synthetic_folder, real, per_class=4)
    assert len(syn) == 12 and syn.classes == real.classes
    assert all(real.classes[y] == p.split("/")[0] for p, y in zip(syn.paths, syn.labels, strict=True))
    with pytest.raises(DataError, match="is not a folder"):
        load(synthetic_folder / "nope", real)


@pytest.mark.parametrize("name", ["F/A-18", "../../etc", "Café crème", "x" * 300, ".hidden", "a b"])
def test_safe_folder_names(name):
    s = safe_folder(name)
    assert "/" not in s and ".." not in s and not s.startswith(".") and len(s) <= 64 and s.isascii()
    assert s == safe_folder(name)
    assert safe_folder("A320") == "A320"
    assert safe_folder("a/b") != safe_folder("a_b")


def test_finished_files_are_found_by_their_exact_names(tmp_path):
    gen = fake_set(tmp_path / "gen", CLASSES, 3, {(0, 0)})
    rows = read_rows(gen)
    folder = gen / "images" / rows.classes[0]["folder"]
    for name in (".000001.jpg.x1y2.tmp", "000001.jpg.tmp", "x000002.jpg", "0000002.jpg", "000002.png", "000003.jpg",
                 "a\n000002.jpg", "٠٠٠٠٠٢.jpg"):  # temp files, strays, past the plan, a newline, non-ASCII digits
        (folder / name).write_bytes(b"x")
    assert np.flatnonzero(present(rows)).tolist() == [0]
    assert rows.rel_paths(2, [0, 2], "train_path") == [None, None]  # no training copies in this set
    assert rows.rel_paths(1, [0, 2]) == [rows.rel_path(rows.position(1, 0)), rows.rel_path(rows.position(1, 2))]
