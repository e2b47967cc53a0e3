import json

import pytest
from PIL import Image

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


def _decoded(cache_root, images, short_side):
    """Scans `images`; returns the result and the files it decoded (each decode appends one row to the scan log)."""
    log = _log(cache_root)
    before = len(log.read_text().splitlines())
    result = scan_images(images, cache_root, short_side=short_side, progress=False)
    return result, [json.loads(line)["path"] for line in log.read_text().splitlines()[before:]]


def test_scan_resumes_and_rescans_changed_files(tmp_path, folder_data):
    train = load_split("folder", "train", folder_data)
    scan_images(train, tmp_path / "c", short_side=32, progress=False)
    assert _decoded(tmp_path / "c", train, 32)[1] == []  # nothing re-decoded
    Image.new("RGB", (50, 50), (0, 0, 0)).save(folder_data / "train" / "blue_jay" / "img_002.jpg")
    assert _decoded(tmp_path / "c", train, 32)[1] == ["blue_jay/img_002.jpg"]


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


# ---------------------------------------------------------------------------------------------------------------
# The scan log is append-only: torn tails, damaged rows, a full disk, two writers
# ---------------------------------------------------------------------------------------------------------------
def _log(cache_root):
    (log,) = (cache_root / "scans").glob("*/scan.jsonl")
    return log


class _TornWriter:
    """An append handle that writes the first half of what it is given, then fails like a full disk or a kill."""

    def __init__(self, f, exc):
        self.f, self.exc = f, exc

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise self.exc

    def flush(self):
        pass


@pytest.mark.parametrize("failure", ["disk full", "killed"])
def test_interrupted_append_then_rerun_equals_an_uninterrupted_scan(tmp_path, folder_data, monkeypatch, failure):
    import builtins
    import errno

    from synthtl import files as files_mod
    from synthtl.files import DiskFullError

    train = load_split("folder", "train", folder_data)
    clean = scan_images(train, tmp_path / "clean", short_side=32, progress=False)
    exc = OSError(errno.ENOSPC, "No space left on device") if failure == "disk full" else KeyboardInterrupt()
    real_open = builtins.open

    def full_disk_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return _TornWriter(f, exc) if mode == "ab" else f

    monkeypatch.setattr(files_mod, "open", full_disk_open, raising=False)
    with pytest.raises(DiskFullError if failure == "disk full" else KeyboardInterrupt):
        scan_images(train, tmp_path / "c", short_side=32, progress=False)
    monkeypatch.undo()  # space freed / process restarted
    log = _log(tmp_path / "c")
    raw = log.read_bytes()
    # A full disk cuts the log back to its last complete row; a kill leaves a torn fragment behind.
    assert (raw == b"") if failure == "disk full" else (raw and not raw.endswith(b"\n"))
    again = scan_images(train, tmp_path / "c", short_side=32, progress=False)
    assert again.hashes == clean.hashes and again.skipped == clean.skipped and again.source == clean.source
    assert again.images.paths == clean.images.paths
    for a, b in zip(again.images.paths, clean.images.paths, strict=True):
        assert (again.images.root / a).read_bytes() == (clean.images.root / b).read_bytes()
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(train)  # no torn fragment kept, one row per image


def test_damaged_scan_row_names_the_file_and_line(tmp_path, folder_data):
    from synthtl.files import CorruptFileError

    train = load_split("folder", "train", folder_data)
    scan_images(train, tmp_path / "c", short_side=None, progress=False)
    log = _log(tmp_path / "c")
    lines = log.read_text().splitlines(keepends=True)
    for bad in ('{"path": 7, "ok": true}\n', "[1, 2]\n", '{"sig": null}\n', "{not json\n"):
        log.write_text(lines[0] + bad + "".join(lines[2:]))
        with pytest.raises(CorruptFileError, match=r"scan\.jsonl, line 2: .*delete") as e:
            scan_images(train, tmp_path / "c", short_side=None, progress=False)
        assert "\n" not in str(e.value)
    torn = "".join(lines) + '{"path": "red_fox/img_0'  # a torn last line is only an unfinished append
    log.write_text(torn)
    assert len(scan_images(train, tmp_path / "c", short_side=None, progress=False).images) == len(train)
    assert log.read_text() == torn  # readers leave it alone
    Image.new("RGB", (50, 50), (0, 0, 0)).save(folder_data / "train" / "blue_jay" / "img_002.jpg")
    scan_images(train, tmp_path / "c", short_side=None, progress=False)
    text = log.read_text()  # the writer cut the fragment before appending its row
    assert text.startswith("".join(lines)) and text.count("\n") == len(lines) + 1 and text.endswith("\n")


_SCANNER = """
import json, sys, time
from pathlib import Path
from synthtl.data import cache
from synthtl.data.datasets import load_split

root, cache_dir, started, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
decoded = []
real = cache.load_rgb

def held(path, data=None, **kw):  # the first decode holds the lock until the test says go
    if not decoded:
        started.touch()
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    decoded.append(str(path))
    return real(path, data, **kw)

cache.load_rgb = held
res = cache.scan_images(load_split("folder", "train", root), cache_dir, short_side=32, workers=1, progress=False)
print("RESULT " + json.dumps({"decoded": len(decoded), "hashes": list(res.hashes)}), flush=True)
"""


def test_two_processes_share_one_cache_and_only_one_writes(tmp_path, folder_data):
    import json
    import subprocess
    import sys
    import time

    script = tmp_path / "scanner.py"
    script.write_text(_SCANNER)
    started, go = tmp_path / "a_started", tmp_path / "go"

    def launch(flag):
        return subprocess.Popen([sys.executable, str(script), str(folder_data), str(tmp_path / "c"), str(flag),
                                 str(go)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    a = launch(started)
    deadline = time.monotonic() + 60
    while not started.exists() and a.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists(), a.communicate()[0]  # A is scanning, so it holds the cache lock
    b = launch(tmp_path / "b_started")
    waiting = ""
    while "waiting" not in waiting and (line := b.stdout.readline()):  # B prints this line, then blocks on the lock
        waiting += line
    go.touch()
    out_a, out_b = a.communicate(timeout=120)[0], waiting + b.communicate(timeout=120)[0]
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    assert "is being built by pid" in waiting and "waiting" in waiting, out_b  # B said whom it waits for
    res_a = json.loads(out_a.split("RESULT ", 1)[1])
    res_b = json.loads(out_b.split("RESULT ", 1)[1])
    assert res_a["decoded"] == 24 and res_b["decoded"] == 0  # B reused A's scan instead of writing its own
    assert res_a["hashes"] == res_b["hashes"]
    rows = [json.loads(line) for line in _log(tmp_path / "c").read_text().splitlines()]
    assert len(rows) == 24 and len({r["path"] for r in rows}) == 24


def test_scan_cleans_temp_files_a_killed_scan_left(tmp_path, folder_data):
    train = load_split("folder", "train", folder_data)
    first = scan_images(train, tmp_path / "c", short_side=32, progress=False)
    leftover = first.images.root / "ab" / ".0123.jpg.x1y2.tmp"  # what atomic_open leaves when killed mid-write
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half")
    Image.new("RGB", (50, 50), (0, 0, 0)).save(folder_data / "train" / "blue_jay" / "img_002.jpg")  # work to do
    scan_images(train, tmp_path / "c", short_side=32, progress=False)
    assert not leftover.exists()


def test_subsets_of_one_folder_share_one_cache_and_small_jpegs_are_linked(tmp_path, folder_data):
    train = load_split("folder", "train", folder_data)
    first = scan_images(train.subset(range(8)), tmp_path / "c", short_side=64, progress=False)
    both, decoded = _decoded(tmp_path / "c", train, 64)  # e.g. a larger synthetic.per_class
    assert len(list((tmp_path / "c" / "scans").iterdir())) == 1  # one cache for the folder, not one per list
    assert sorted(decoded) == sorted(train.paths[8:])  # only the new files were decoded
    assert both.images.paths[:8] == first.images.paths
    for i in range(len(both.images)):  # the small JPEGs are the source files themselves, not re-encoded copies
        assert both.images.path(i).stat().st_ino == both.source.path(i).stat().st_ino


def test_a_copy_a_crash_left_short_is_redone(tmp_path, folder_data):
    train = load_split("folder", "train", folder_data)
    first = scan_images(train, tmp_path / "c", short_side=32, progress=False)  # copies are not fsynced one by one
    want = first.images.path(5).read_bytes()
    first.images.path(5).write_bytes(b"")  # what a power cut may leave of a copy whose scan row is on disk
    again, decoded = _decoded(tmp_path / "c", train, 32)
    assert decoded == [train.paths[5]] and again.images.path(5).read_bytes() == want
