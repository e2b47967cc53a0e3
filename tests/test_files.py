import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from synthtl import files as io
from synthtl.files import DiskFullError, append_jsonl, atomic_open, read_jsonl, write_json, write_text


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path):
    p = tmp_path / "f.json"
    write_json(p, {"v": 1})
    with pytest.raises(KeyboardInterrupt), atomic_open(p) as f:
        f.write('{"v": 2')
        raise KeyboardInterrupt
    assert p.read_text().strip().startswith('{\n  "v": 1')
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_full_disk_raises_clear_error_and_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    write_text(p, "old")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(DiskFullError, match="no space left"):
        write_text(p, "new")
    monkeypatch.setattr(io.os, "fsync", real_fsync)
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_jsonl_tolerates_a_torn_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    append_jsonl(p, [{"a": 1}, {"a": 2}])
    with open(p, "a") as f:
        f.write('{"a": 3')  # a writer killed mid-line
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]


def test_drop_damaged_lines_keeps_every_row_and_names_the_lines(tmp_path):
    p = tmp_path / "log.jsonl"
    append_jsonl(p, [{"a": 1}])
    with open(p, "ab") as f:
        f.write(b"\x00\xff garbage\n")  # a failing disk's bytes in the middle
    append_jsonl(p, [{"a": 2}, {"a": 3}])
    with open(p, "ab") as f:
        f.write(b'{"a": 4')  # and a torn tail
    with pytest.raises(io.CorruptFileError, match="line 2"):
        read_jsonl(p)
    assert io.drop_damaged_lines(p) == [2]
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}, {"a": 3}] and p.read_bytes().endswith(b"\n")
    before = p.stat().st_mtime_ns
    assert io.drop_damaged_lines(p) == [] and p.stat().st_mtime_ns == before  # an intact file is not rewritten
    assert [x.name for x in tmp_path.iterdir()] == ["log.jsonl"]


def test_large_files_are_hashed_once_across_processes_small_ones_once_per_process(tmp_path, monkeypatch):
    """Only files of at least MEMO_MIN_BYTES (checkpoints) get a row in the on-disk memo, so it stays small; an
    in-place change of either kind is never served from a memo."""
    monkeypatch.setenv("SYNTHTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(io, "_DIGESTS", {})
    big, small = tmp_path / "big.bin", tmp_path / "small.txt"
    with open(big, "wb") as f:
        f.truncate(io.MEMO_MIN_BYTES)  # sparse: cheap to make, hashed like any file
    small.write_text("a")
    calls = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda p, **k: calls.append(Path(p).name) or real(p, **k))
    digests = io.content_sha256(big), io.content_sha256(small)
    assert digests == (io.sha256_file(big), hashlib.sha256(b"a").hexdigest())
    memo = json.loads((tmp_path / "cache" / "file-digests.json").read_text())
    assert len(memo) == 1 and next(iter(memo)).split("|")[1] == str(big.resolve())
    monkeypatch.setattr(io, "_DIGESTS", {})  # a new process: the big file from the memo, the small one re-read
    calls.clear()
    assert (io.content_sha256(big), io.content_sha256(small)) == digests and calls == ["small.txt"]
    small.write_text("b")
    os.utime(small, ns=(1, 1))
    assert io.content_sha256(small) == hashlib.sha256(b"b").hexdigest()


def test_git_sha_is_a_string():
    assert isinstance(io.git_sha(), str)


def test_git_sha_never_writes_into_the_code_checkout(tmp_path):
    """Plain `git status` refreshes .git/index (and takes .git/index.lock) after a file's mtime changes."""
    import os
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_text("x = 1\n")
    for cmd in (["init", "-q"], ["add", "a.py"], ["commit", "-q", "-m", "c"]):
        subprocess.run(["git", *cmd], cwd=code, env=env, check=True)
    os.utime(code / "a.py", ns=(1, 1))  # same content, new mtime: the index is stale
    listing = lambda: {p: p.stat().st_mtime_ns for p in (code / ".git").rglob("*")}  # noqa: E731
    before = listing()
    sha = io.git_sha(code)
    assert len(sha) == 40 and listing() == before


# ---------------------------------------------------------------------------------------- files that could run code
class _Payload:
    """Unpickling it calls os.mkdir(marker): what a hostile checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def _hostile(path: Path, marker: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "config_hash": "x", "payload": _Payload(marker)}, path)
    return path


def _refused(capsys, *argv) -> str:
    from tests.conftest import run_cli

    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "weights_only" not in err and "Re-running" not in err  # PyTorch's paragraph stays behind --verbose
    return err


@pytest.mark.integration
@pytest.mark.parametrize("where", ["checkpoints/last.pt", "checkpoints/stage-real.pt"])
def test_a_hostile_run_checkpoint_never_runs(tiny_overrides, tmp_path, capsys, where):
    from synthtl.config import FinetuneConfig, load_config
    from synthtl.training.run import run_dir_of

    folder = run_dir_of(load_config(FinetuneConfig, None, tiny_overrides))
    marker = tmp_path / "pwned"
    _hostile(folder / where, marker)
    err = _refused(capsys, "finetune", *tiny_overrides)
    assert not marker.exists() and where.split("/")[1] in err and "not a synthtl checkpoint" in err
    from tests.conftest import run_cli

    assert run_cli("finetune", *tiny_overrides, "--verbose") == 2
    assert "weights_only" in capsys.readouterr().err  # the detail is there when asked for


@pytest.mark.integration
def test_hostile_user_weights_never_run(tiny_overrides, tmp_path, capsys):
    marker = tmp_path / "pwned"
    weights = _hostile(tmp_path / "w.pth", marker)
    err = _refused(capsys, "finetune", *tiny_overrides, "model.pretrained=true", f"model.weights={weights}")
    assert not marker.exists() and "model.weights=" in err


@pytest.mark.integration
@pytest.mark.parametrize("method, where", [("dataset", "checkpoint.pt"), ("lora", "checkpoint.pt"),
                                           ("lora_class", "adapters/checkpoint.pt")])
def test_a_hostile_style_checkpoint_never_runs(folder_data, tmp_path, capsys, method, where):
    out, marker = tmp_path / "style", tmp_path / "pwned"
    _hostile(out / where, marker)
    extra = {"dataset": [], "lora": ["method=lora"], "lora_class": ["method=lora", "mode=class"]}[method]
    err = _refused(capsys, "learn-style", "-c", "style/tiny", "data.name=folder", f"data.root={folder_data}",
                   f"out_dir={out}", "progress=false", *extra)
    assert not marker.exists() and "checkpoint.pt" in err


@pytest.mark.integration
def test_a_hostile_classifier_run_never_runs_in_the_filter(tmp_path, capsys):
    from tests.filtering.tiny import generate, real_data, tiny_run

    real = real_data(tmp_path / "real")
    run = tiny_run(real, tmp_path / "run")
    gen = generate(real, tmp_path / "gen", 1)
    marker = tmp_path / "pwned"
    _hostile(run / "checkpoints" / "stage-real.pt", marker)
    err = _refused(capsys, "filter", str(gen), "method=classifier", f"classifier.run={run}", "keep.top_k=1",
                   "progress=false", "device=cpu")
    assert not marker.exists() and "stage-real.pt" in err


def test_a_damaged_checkpoint_is_one_line(tmp_path):
    from synthtl.files import UnsafeFileError, load_torch

    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UnsafeFileError, match="damaged or not a PyTorch file"):
        load_torch(bad, "synthtl checkpoint", "delete it")
