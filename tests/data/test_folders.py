"""What a real class-per-folder dataset holds: hidden tool folders, odd names, empty classes, odd file names."""

import os
import shutil

import pytest
from PIL import Image

from synthtl.data.cache import scan_images
from synthtl.data.datasets import load_split
from synthtl.data.splits import read_split, write_split
from synthtl.errors import BadImageError, DataError
from tests.conftest import make_folder


def test_dotdot_class_folder_is_refused_not_dropped(folder_data):
    make_folder(folder_data / "train", 2, seed=9, classes=("..dotdot",))
    with pytest.raises(DataError, match=r"\.\.dotdot holds 2 image file\(s\).*rename it"):
        load_split("folder", "train", folder_data)


def test_a_hidden_class_folder_with_images_in_sub_folders_is_refused_too(folder_data):
    make_folder(folder_data / "train" / "..dotdot", 3, seed=9, classes=("sub",))  # images one level deeper
    with pytest.raises(DataError, match=r"\.\.dotdot holds 3 image file\(s\)"):
        load_split("folder", "train", folder_data)


def test_hidden_entries_are_skipped_and_each_one_reported(folder_data, capsys):
    train = folder_data / "train"
    (train / ".git" / "objects").mkdir(parents=True)
    (train / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (train / ".ipynb_checkpoints").mkdir()
    (train / ".ipynb_checkpoints" / "look-checkpoint.ipynb").write_text("{}")
    (train / "__MACOSX" / "red_fox").mkdir(parents=True)
    (train / "__MACOSX" / "red_fox" / "._img_000.jpg").write_bytes(b"\x00\x05\x16\x07")
    (train / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (train / "labels.csv").write_text("path,label\n")
    (train / "red_fox" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (train / "red_fox" / "._img_001.jpg").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble: not an image
    (train / "red_fox" / "notes.txt").write_text("shot in 2019")
    (train / "red_fox" / ".thumbnails").mkdir()
    Image.new("RGB", (8, 8)).save(train / "red_fox" / ".thumbnails" / "t.png")

    images = load_split("folder", "train", folder_data)
    assert images.classes == ("blue_jay", "green_frog", "red_fox") and len(images) == 24
    expected = [".DS_Store", ".git/", ".ipynb_checkpoints/", "__MACOSX/", "labels.csv", "red_fox/.DS_Store",
                "red_fox/._img_001.jpg", "red_fox/notes.txt", "red_fox/.thumbnails/"]
    assert sorted(e.split(" (")[0] for e in images.ignored) == sorted(expected)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "ignored 9 entries" in out and "names starting with '.'" in out
    load_split("folder", "train", folder_data)
    assert capsys.readouterr().out == ""  # said once per process, not at every listing


def test_empty_class_folder_is_an_error_naming_it(folder_data):
    (folder_data / "train" / "snow_owl").mkdir()
    (folder_data / "train" / "snow_owl" / "readme.txt").write_text("todo")
    with pytest.raises(DataError, match=r"class folder .*snow_owl holds no image files"):
        load_split("folder", "train", folder_data)
    shutil.rmtree(folder_data / "train" / "snow_owl")
    shutil.rmtree(folder_data / "test" / "red_fox")
    (folder_data / "test" / "red_fox").mkdir()
    with pytest.raises(DataError, match=r"class folder .*test/red_fox holds no image files"):
        load_split("folder", "test", folder_data)


def _odd_names(folder_data):
    """A non-UTF-8 name (as Linux allows) and a 255-byte name, both real JPEGs in red_fox; skips where refused."""
    src = (folder_data / "train" / "red_fox" / "img_000.jpg").read_bytes()
    folder = os.fsencode(folder_data / "train" / "red_fox")
    try:
        with open(folder + b"/caf\xe9_\xff.jpg", "wb") as f:  # Latin-1 bytes from an old archive
            f.write(src)
    except OSError as e:
        pytest.skip(f"this file system refuses non-UTF-8 names ({e})")
    (folder_data / "train" / "red_fox" / ("x" * 251 + ".jpg")).write_bytes(src)  # 255 bytes: the longest legal
    return "red_fox/caf" + os.fsdecode(b"\xe9_\xff") + ".jpg", "red_fox/" + "x" * 251 + ".jpg"


@pytest.mark.parametrize("short_side", [32, None])  # data.cache=true / false
@pytest.mark.parametrize("on_bad", ["error", "skip"])
def test_non_utf8_and_longest_file_names_are_read(tmp_path, folder_data, short_side, on_bad):
    odd, long = _odd_names(folder_data)
    train = load_split("folder", "train", folder_data)
    assert odd in train.paths and long in train.paths and len(train) == 26
    res = scan_images(train, tmp_path / "c", short_side=short_side, on_bad=on_bad, progress=False)
    assert len(res.images) == 26 and not res.skipped
    for i in (res.source.paths.index(odd), res.source.paths.index(long)):
        with Image.open(res.images.path(i)) as im:
            assert im.size[1] == min(40, short_side or 40)
        assert all(len(os.fsencode(part)) <= 255 for part in res.images.path(i).parts)
    split = tmp_path / "split.json"  # split files keep such ids too
    write_split(split, res.source, list(range(len(res.source))))
    assert read_split(split, res.source) == list(range(26))


def test_bad_image_with_a_non_utf8_name_gives_one_printable_line(tmp_path, folder_data):
    odd, _ = _odd_names(folder_data)
    (folder_data / "train" / odd).write_bytes(b"not a jpeg")
    train = load_split("folder", "train", folder_data)
    with pytest.raises(BadImageError, match=r"caf\\xe9_\\xff\.jpg") as e:
        scan_images(train, tmp_path / "c", short_side=32, progress=False)
    str(e.value).encode("utf-8")  # printable: no lone surrogate left to crash the CLI's print
    res = scan_images(train, tmp_path / "c", short_side=32, on_bad="skip", progress=False)
    assert [p for p, _ in res.skipped] == [odd]
