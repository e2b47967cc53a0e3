"""A run's synthetic data: a generated set whose training copies are what the cache would hold is read without a
scan, and gives the loader the same files, labels and bytes as the scan did; every other set is scanned."""

from pathlib import Path

import pytest

from synthtl.config import FinetuneConfig, load_config
from synthtl.data.cache import scan_images
from synthtl.data.datasets import load_split
from synthtl.data.prepare import prepare_data
from synthtl.data.synthetic import load_synthetic_set, needs_scan
from tests.data.sets import fake_set

CLASSES = ["red_fox", "blue_jay", "green_frog"]


def _set(tmp_path: Path, folder_data: Path, train_copy: int, done=None) -> Path:
    """A finished generated set of the real classes, 4 images each (the real training images as its pictures)."""
    files = sorted((folder_data / "train").glob("*/*.jpg"))
    done = done if done is not None else {(c, i) for c in range(3) for i in range(4)}
    return fake_set(tmp_path / f"gen{train_copy}", CLASSES, 4, done, source=lambda c, i: files[4 * c + i],
                    train_copy=train_copy)


def _prepare(tmp_path: Path, folder_data: Path, synthetic: Path, *extra: str):
    cfg = load_config(FinetuneConfig, None, [
        "data.name=folder", f"data.root={folder_data}", f"data.cache_dir={tmp_path / 'cache'}", "progress=false",
        "strategy=bridged++", f"synthetic.path={synthetic}", *extra])
    return prepare_data(cfg, tmp_path / "run", needs_synthetic=True)


def _synthetic_scans(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache" / "scans").iterdir() if p.name.startswith("synthetic"))


@pytest.mark.parametrize(("train_copy", "short_side", "scan"), [
    (256, 256, False), (64, 256, False), (512, 256, True), (0, 256, True), (0, None, False), (512, None, False)])
def test_a_generated_set_needs_a_scan_only_when_its_copies_are_not_what_the_cache_holds(
        tmp_path, folder_data, train_copy, short_side, scan):
    gen = fake_set(tmp_path / "gen", CLASSES, 1, set(), train_copy=train_copy)
    assert needs_scan(gen, short_side) is scan
    assert needs_scan(folder_data / "train", short_side)  # a class-per-folder set: always


def test_fast_path_gives_the_scans_files_labels_and_bytes(tmp_path, folder_data):
    gen = _set(tmp_path, folder_data, train_copy=256)
    data = _prepare(tmp_path, folder_data, gen, "synthetic.per_class=3")
    assert _synthetic_scans(tmp_path) == []  # nothing decoded, hashed or linked
    fast = data.synthetic
    assert fast.root == gen and all(p.startswith("train/") for p in fast.paths) and len(fast) == 9
    real = load_split("folder", "train", folder_data)
    images, _ = load_synthetic_set(gen, real, 3)
    scanned = scan_images(images, tmp_path / "old", short_side=256, progress=False).images  # what the scan gave
    assert fast.labels == scanned.labels and fast.classes == scanned.classes
    for i in range(len(fast)):
        assert fast.path(i).read_bytes() == scanned.path(i).read_bytes()  # the cache hard-linked these very files
    assert data.synthetic_record["done"] == 9 and not data.synthetic_record["partial"]


def test_fast_path_reads_an_allowed_partial_set_and_without_a_cache(tmp_path, folder_data):
    gen = _set(tmp_path, folder_data, train_copy=256, done={(c, i) for c in range(3) for i in range(3)})
    data = _prepare(tmp_path, folder_data, gen, "synthetic.allow_partial=true")
    assert len(data.synthetic) == 9 and data.synthetic_record["partial"] and _synthetic_scans(tmp_path) == []
    gen0 = _set(tmp_path, folder_data, train_copy=0)
    data = _prepare(tmp_path, folder_data, gen0, "data.cache=false")  # the originals, as they are
    assert all(p.startswith("images/") for p in data.synthetic.paths) and data.synthetic.root == gen0
    assert not (tmp_path / "cache" / "scans").exists() or _synthetic_scans(tmp_path) == []


@pytest.mark.parametrize("case", ["no training copy", "a larger copy", "class-per-folder"])
def test_other_sets_keep_the_scan(tmp_path, folder_data, synthetic_folder, case):
    syn = {"no training copy": lambda: _set(tmp_path, folder_data, train_copy=0),
           "a larger copy": lambda: _set(tmp_path, folder_data, train_copy=64),
           "class-per-folder": lambda: synthetic_folder}[case]()
    data = _prepare(tmp_path, folder_data, syn, "data.cache_short_side=32")  # 64 > 32: the copy is resized again
    (scan,) = _synthetic_scans(tmp_path)
    assert data.synthetic.root == tmp_path / "cache" / "scans" / scan / "s32"
    assert all(min(_size(data.synthetic.path(i))) == 32 for i in range(len(data.synthetic)))


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _one_line(capsys, *argv) -> str:
    from tests.conftest import run_cli

    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_class_with_no_readable_image_is_refused_even_with_skip(tiny_overrides, folder_data, capsys):
    for f in (folder_data / "train" / "blue_jay").iterdir():
        f.write_bytes(b"not an image")
    err = _one_line(capsys, "finetune", *tiny_overrides, "data.on_bad_image=skip")
    assert "no readable training image in 1 class(es)" in err and "blue_jay" in err


def test_one_class_is_refused(tiny_overrides, folder_data, capsys):
    import shutil

    for split in ("train", "test"):
        for c in ("blue_jay", "green_frog"):
            shutil.rmtree(folder_data / split / c)
    assert "a classifier needs at least 2" in _one_line(capsys, "finetune", *tiny_overrides)


def test_a_file_link_loop_is_a_counted_skip_or_one_line(tiny_overrides, folder_data, capsys):
    from tests.conftest import run_cli

    (folder_data / "train" / "red_fox" / "loop.jpg").symlink_to("loop.jpg")  # points at itself
    err = _one_line(capsys, "finetune", *tiny_overrides)
    assert "loop.jpg" in err and "on_bad_image=skip" in err
    assert run_cli("finetune", *tiny_overrides, "data.on_bad_image=skip", "real_stage.epochs=1") == 0
    from synthtl.files import read_json

    (res,) = Path(tiny_overrides[-3].split("=", 1)[1]).rglob("result.json")
    assert read_json(res)["skipped_images"]["train"] == 1


def test_split_warns_about_classes_smaller_than_the_shots(tmp_path, folder_data, capsys):
    from tests.conftest import run_cli

    assert run_cli("split", "data.name=folder", f"data.root={folder_data}", "data.shots=1000",
                   f"data.cache_dir={tmp_path / 'c'}", "--out", str(tmp_path / "s.json")) == 0
    assert "warning: data.shots=1000 but 3 of 3 classes have fewer training images (smallest: 8)" in \
        capsys.readouterr().out
