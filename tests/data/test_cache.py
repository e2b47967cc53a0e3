import pytest
from PIL import Image

from synthtl.data import cache as cache_mod
from synthtl.data.cache import check_overlap, find_overlap, scan_images
from synthtl.data.datasets import load_split
from synthtl.errors import BadImageError, DataError


def test_scan_writes_resized_copies_and_hashes(tmp_path, folder_data):
    big = folder_data / "train" / "red_fox" / "img_000.jpg"
    Image.new("RGB", (600, 300), (200, 10, 10)).save(big)
    train = load_split("folder", "train", folder_data)
    res = scan_images(train, tmp_path / "c", short_side=64, progress=False)
    assert len(res.images) == len(train) and len(res.hashes) == len(train) and not res.skipped
    i = res.source.paths.index("red_fox/img_000.jpg")
    with Image.open(res.images.path(i)) as im:
        assert im.format == "JPEG" and im.size == (128, 64)  # short side 64, aspect kept
    small = res.source.paths.index("red_fox/img_001.jpg")
    with Image.open(res.images.path(small)) as im:
        assert im.size == (48, 40)  # never enlarged


def test_scan_resumes_and_rescans_changed_files(tmp_path, folder_data, monkeypatch):
    train = load_split("folder", "train", folder_data)
    scan_images(train, tmp_path / "c", short_side=32, progress=False)
    calls = []
    real = cache_mod.load_rgb
    monkeypatch.setattr(cache_mod, "load_rgb", lambda p, d=None, **k: calls.append(p) or real(p, d, **k))
    scan_images(train, tmp_path / "c", short_side=32, progress=False)
    assert calls == []  # nothing re-decoded
    Image.new("RGB", (50, 50), (0, 0, 0)).save(folder_data / "train" / "blue_jay" / "img_002.jpg")
    scan_images(train, tmp_path / "c", short_side=32, progress=False)
    assert [p.name for p in calls] == ["img_002.jpg"]


def test_bad_image_error_or_skip(tmp_path, folder_data):
    bad = folder_data / "train" / "green_frog" / "img_003.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    train = load_split("folder", "train", folder_data)
    with pytest.raises(BadImageError, match="img_003.jpg"):
        scan_images(train, tmp_path / "c", short_side=32, progress=False)
    res = scan_images(train, tmp_path / "c", short_side=32, on_bad="skip", progress=False)
    assert res.skipped == (("green_frog/img_003.jpg", res.skipped[0][1]),) and len(res.images) == len(train) - 1
    with pytest.raises(BadImageError, match="img_003.jpg"):  # a later strict run still refuses it
        scan_images(train, tmp_path / "c", short_side=32, progress=False)


def test_all_images_unreadable(tmp_path, folder_data):
    for p in (folder_data / "test").rglob("*.jpg"):
        p.write_text("x")
    with pytest.raises(DataError, match="none of the"):
        scan_images(load_split("folder", "test", folder_data), tmp_path / "c", on_bad="skip", progress=False)


def test_overlap_is_found_and_refused_unless_allowed(tmp_path, folder_data):
    src = folder_data / "train" / "red_fox" / "img_004.jpg"
    (folder_data / "test" / "red_fox" / "copy.jpg").write_bytes(src.read_bytes())
    train = scan_images(load_split("folder", "train", folder_data), tmp_path / "c", short_side=None, progress=False)
    test = scan_images(load_split("folder", "test", folder_data), tmp_path / "c", short_side=None, progress=False)
    assert find_overlap(train, test) == [("red_fox/img_004.jpg", "red_fox/copy.jpg")]
    with pytest.raises(DataError, match=r"1 training images are byte-identical.*allow_overlap=true"):
        check_overlap(train, test, allow=False)
    assert check_overlap(train, test, allow=True) == 1
