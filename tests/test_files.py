import errno
import os

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


def test_git_sha_is_a_string():
    assert isinstance(io.git_sha(), str)
