"""A dataset file never runs code: CIFAR's pickles are read by a restricted unpickler after their official MD5."""

import dataclasses
import os
import pickle

import numpy as np
import pytest

from synthtl.cli import main
from synthtl.data import safe_pickle
from synthtl.data.datasets import DATASETS, load_split
from synthtl.errors import DataError

LAYOUTS = {  # dataset -> (folder, {file: what the official file holds})
    "cifar10": ("cifar-10-batches-py", {
        **{f"data_batch_{i}": "batch" for i in range(1, 6)}, "test_batch": "batch", "batches.meta": "meta"}),
    "cifar100": ("cifar-100-python", {"train": "batch", "test": "batch", "meta": "meta"}),
}


class Payload:
    """What a hostile file carries: unpickling it calls os.mkdir(marker)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def official_like(name: str, root, protocol: int = 2):
    """A folder in the official format (dicts of lists, text and uint8 arrays, pickled with protocol 2 as the
    archives are), with few images."""
    folder, files = LAYOUTS[name]
    (root / folder).mkdir(parents=True)
    labels_key = "labels" if name == "cifar10" else "fine_labels"
    n = 10 if name == "cifar10" else 100
    for f, kind in files.items():
        if kind == "meta":
            d = {"label_names" if name == "cifar10" else "fine_label_names": [f"c{i}" for i in range(n)],
                 "num_cases_per_batch": 2}
        else:
            d = {"batch_label": f"batch {f}", "labels" if name == "cifar10" else labels_key: [1, 3],
                 "data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), "filenames": [b"a.png", b"b.png"]}
        with open(root / folder / f, "wb") as fh:
            pickle.dump(d, fh, protocol=protocol)
    return root / folder


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_official_format_loads_with_the_opt_out(tmp_path, name):
    official_like(name, tmp_path)
    train = load_split(name, "train", tmp_path, tmp_path / "work", verify_checksums=False)
    assert train.labels[:2] == (1, 3)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("hostile", ["batch", "meta"])
@pytest.mark.parametrize("verify", [True, False])
def test_a_payload_in_any_pickled_file_never_runs(tmp_path, name, hostile, verify):
    folder = official_like(name, tmp_path / "data")
    target = next(f for f, kind in LAYOUTS[name][1].items() if kind == hostile)
    marker = tmp_path / "pwned"
    with open(folder / target, "wb") as fh:
        pickle.dump({"data": Payload(marker), "labels": [0], "fine_labels": [0], "label_names": ["a"],
                     "fine_label_names": ["a"]}, fh, protocol=2)
    with pytest.raises(DataError) as e:
        load_split(name, "train", tmp_path / "data", tmp_path / "work", verify_checksums=verify)
    assert not marker.exists()
    assert str(folder / target) in str(e.value) or verify  # verified files are refused by the first that differs
    assert "official" in str(e.value)


def test_checksum_mismatch_is_one_line_naming_the_opt_out(tmp_path, capsys):
    official_like("cifar10", tmp_path / "data")
    code = main(["split", "data.name=cifar10", f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'c'}",
                 "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "MD5" in err and "data.verify_checksums=false" in err and "data_batch_1" in err


def test_every_published_checksum_is_checked_before_reading(tmp_path, monkeypatch):
    """A file whose MD5 matches its table entry loads; one byte more is refused."""
    folder = official_like("cifar100", tmp_path)
    from synthtl.files import sha256_file

    real = {f"cifar-100-python/{f}": sha256_file(folder / f, algo="md5") for f in ("train", "test", "meta")}
    patched = dataclasses.replace(DATASETS.get("cifar100"), checksums=tuple(real.items()))
    monkeypatch.setitem(DATASETS._items, "cifar100", patched)
    assert load_split("cifar100", "test", tmp_path, tmp_path / "w").labels == (1, 3)
    with open(folder / "test", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(DataError, match="MD5"):
        load_split("cifar100", "test", tmp_path, tmp_path / "w")


@pytest.mark.parametrize("value", [{"a": np.array([object()], dtype=object)}, {"a": {1, 2}}])
def test_only_the_official_types_are_built(tmp_path, value):
    f = tmp_path / "x"
    with open(f, "wb") as fh:
        pickle.dump(value, fh, protocol=2)
    with pytest.raises(DataError, match="not an official dataset file"):
        safe_pickle.load(f)


def test_a_damaged_file_is_one_line(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(DataError, match="not a readable dataset file"):
        safe_pickle.load(f)
