import json

import pytest

from synthtl.data.datasets import load_split
from synthtl.data.splits import fewshot_indices, read_split, stratified_val, write_split
from synthtl.errors import DataError


def test_fewshot_is_k_per_class_and_seeded(folder_data):
    train = load_split("folder", "train", folder_data)
    a, short = fewshot_indices(train, 2, seed=0)
    assert len(a) == 6 and short == [] and [sum(train.labels[i] == c for i in a) for c in range(3)] == [2, 2, 2]
    assert fewshot_indices(train, 2, seed=0)[0] == a
    assert any(fewshot_indices(train, 2, seed=s)[0] != a for s in range(1, 5))
    _, short = fewshot_indices(train, 20, seed=0)
    assert short == list(train.classes)


def test_validation_split_is_stratified_and_disjoint(folder_data):
    train = load_split("folder", "train", folder_data)
    tr, va = stratified_val(train, 0.25, seed=1)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(train)
    assert [sum(train.labels[i] == c for i in va) for c in range(3)] == [2, 2, 2]
    with pytest.raises(DataError, match="too few"):
        stratified_val(train.subset([0, 8, 16]), 0.5, seed=0)


def test_split_file_round_trip_and_tamper_detection(tmp_path, folder_data):
    train = load_split("folder", "train", folder_data)
    idx, _ = fewshot_indices(train, 3, seed=4)
    path = tmp_path / "s.json"
    write_split(path, train, idx, kind="train", shots=3, seed=4)
    d = json.loads(path.read_text())
    assert d["count"] == 9 and d["ids"][0] == train.paths[idx[0]] and len(d["checksum"]) == 64
    assert read_split(path, train) == idx
    d["ids"][0], d["ids"][1] = d["ids"][1], d["ids"][0]
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match="checksum"):
        read_split(path, train)
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "none.json", train)


def test_split_file_from_another_dataset_is_refused(tmp_path, folder_data):
    train = load_split("folder", "train", folder_data)
    path = tmp_path / "s.json"
    write_split(path, train.subset([0, 1]), [0, 1])
    other = train.subset(list(range(2, len(train))))
    with pytest.raises(DataError, match="not in"):
        read_split(path, other)
