"""Every named dataset parsed from a miniature copy of its official layout, cross-checked against torchvision."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from scipy.io import savemat

from synthtl.data.datasets import DATASETS, classnames, dataset_status, load_split
from synthtl.errors import ConfigError, DataError

EXPECTED_CLASSES = {"aircraft": 100, "cars": 196, "food101": 101, "dtd": 47, "pets": 37, "sun397": 397,
                    "caltech101": 101, "flowers102": 102, "dogs": 120, "cub200": 200, "cifar10": 10, "cifar100": 100,
                    "eurosat": 10, "digits": 10}


def touch(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")


def pairs(images) -> set:
    return {(str(images.root / p), y) for p, y in zip(images.paths, images.labels, strict=True)}


def test_every_dataset_ships_readable_names():
    assert set(DATASETS.names()) == set(EXPECTED_CLASSES)
    for name, n in EXPECTED_CLASSES.items():
        names = classnames(name)
        assert len(names) == n, name
        assert all(x.strip() == x and x for x in names)
    assert classnames("flowers102")[0] == "pink primrose"
    assert classnames("eurosat")[0] == "annual crop land"


def test_aircraft_matches_torchvision(tmp_path):
    base = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = classnames("aircraft")
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    (base / "images_variant_trainval.txt").write_text("0001 707-320\n0002 F-16A/B\n0003 Yak-42\n")
    (base / "images_variant_test.txt").write_text("0004 A380\n")
    train = load_split("aircraft", "train", tmp_path)
    assert train.paths == ("images/0001.jpg", "images/0002.jpg", "images/0003.jpg")
    assert train.names[train.labels[1]] == "F-16A/B"
    tv = tvd.FGVCAircraft(str(tmp_path), split="trainval")
    assert pairs(train) == {(str(p), y) for p, y in zip(tv._image_files, tv._labels, strict=True)}
    assert load_split("aircraft", "test", tmp_path).labels == (variants.index("A380"),)


def _cars_annos(rows):
    dt = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    return np.array([(1, 1, 5, 5, c, f) for f, c in rows], dtype=dt)


def test_cars_matches_torchvision(tmp_path):
    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    (base / "cars_train").mkdir()
    (base / "cars_test").mkdir()
    names = classnames("cars")
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(names, dtype=object)})
    savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": _cars_annos([("00001.jpg", 1),
                                                                                    ("00002.jpg", 196)])})
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": _cars_annos([("00001.jpg", 5)])})
    train = load_split("cars", "train", tmp_path)
    assert train.labels == (0, 195) and train.names[195] == "smart fortwo Convertible 2012"
    tv = tvd.StanfordCars(str(tmp_path), split="train")
    assert pairs(train) == {(p, y) for p, y in tv._samples}
    assert load_split("cars", "test", tmp_path).paths == ("cars_test/00001.jpg",)


def test_food101_matches_torchvision(tmp_path):
    base = tmp_path / "food-101"
    raw = [n.replace(" ", "_") for n in classnames("food101")]
    (base / "images").mkdir(parents=True)
    (base / "meta").mkdir()
    meta = {c: [f"{c}/{i}"] for i, c in enumerate(raw)}
    (base / "meta" / "train.json").write_text(json.dumps(meta))
    (base / "meta" / "test.json").write_text(json.dumps({c: [f"{c}/9{i}"] for i, c in enumerate(raw)}))
    train = load_split("food101", "train", tmp_path)
    tv = tvd.Food101(str(tmp_path), split="train")
    assert pairs(train) == {(str(p), y) for p, y in zip(tv._image_files, tv._labels, strict=True)}
    assert train.names[0] == "apple pie"


def test_dtd_trainval_is_train1_plus_val1(tmp_path):
    base = tmp_path / "dtd" / "dtd"
    classes = classnames("dtd")
    for c in classes:
        (base / "images" / c).mkdir(parents=True)
    (base / "labels").mkdir()
    for split, k in (("train", 1), ("val", 2), ("test", 3)):
        (base / "labels" / f"{split}1.txt").write_text("".join(f"{c}/{c}_{k}.jpg\n" for c in classes))
    train = load_split("dtd", "train", tmp_path)
    assert len(train) == 2 * 47
    tv = set()
    for s in ("train", "val"):
        d = tvd.DTD(str(tmp_path), split=s, partition=1)
        tv |= {(str(p), y) for p, y in zip(d._image_files, d._labels, strict=True)}
    assert pairs(train) == tv
    assert len(load_split("dtd", "test", tmp_path)) == 47


def test_pets_matches_torchvision(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    (base / "annotations" / "trainval.txt").write_text("Abyssinian_100 1 1 1\nyorkshire_terrier_9 37 2 25\n")
    (base / "annotations" / "test.txt").write_text("Bengal_1 6 1 2\n")
    train = load_split("pets", "train", tmp_path)
    tv = tvd.OxfordIIITPet(str(tmp_path), split="trainval")
    assert pairs(train) == {(str(p), y) for p, y in zip(tv._images, tv._labels, strict=True)}
    assert train.classes[36] == "yorkshire_terrier" and train.names[36] == "yorkshire terrier"
    assert load_split("pets", "test", tmp_path).names[5] == "Bengal"


def _sun(tmp_path, per_class=3):
    base = tmp_path / "SUN397"
    ids = [f"/x/class_{i:03d}" for i in range(397)]
    base.mkdir()
    (base / "ClassName.txt").write_text("\n".join(ids) + "\n")
    for c in ids[:3]:
        for j in range(per_class):
            touch(base / c.lstrip("/") / f"sun_{c[-3:]}{j}.jpg")
    return base, ids


def test_sun397_rule_split_covers_torchvisions_images(tmp_path):
    _sun(tmp_path, per_class=4)
    train, test = load_split("sun397", "train", tmp_path), load_split("sun397", "test", tmp_path)
    assert len(train) == 6 and len(test) == 6 and not set(train.paths) & set(test.paths)
    tv = tvd.SUN397(str(tmp_path))
    assert pairs(train) | pairs(test) == {(str(p), y) for p, y in zip(tv._image_files, tv._labels, strict=True)}


def test_sun397_official_partition_files(tmp_path):
    base, ids = _sun(tmp_path)
    (base / "Partitions").mkdir()
    (base / "Partitions" / "Training_01.txt").write_text("/x/class_000/sun_0000.jpg\n/x/class_001/sun_0010.jpg\n")
    (base / "Partitions" / "Testing_01.txt").write_text("/x/class_002/sun_0020.jpg\n")
    train = load_split("sun397", "train", tmp_path)
    assert train.paths == ("x/class_000/sun_0000.jpg", "x/class_001/sun_0010.jpg") and train.labels == (0, 1)
    assert load_split("sun397", "test", tmp_path).labels == (2,)


def test_caltech101_rule_split(tmp_path):
    base = tmp_path / "caltech101" / "101_ObjectCategories"
    cats = [f"cat_{i:03d}" for i in range(101)]
    for c in [*cats, "BACKGROUND_Google"]:
        for j in range(1, 36 if c == "cat_000" else 4):
            touch(base / c / f"image_{j:04d}.jpg")
    train, test = load_split("caltech101", "train", tmp_path), load_split("caltech101", "test", tmp_path)
    assert train.class_counts()[0] == 30 and test.class_counts()[0] == 5  # 30 per class for training
    assert train.class_counts()[1] == 2 and test.class_counts()[1] == 1  # small classes keep one test image
    assert "BACKGROUND_Google" not in train.classes
    tv = tvd.Caltech101(str(tmp_path))
    tv_pairs = {(str(base / tv.categories[y] / f"image_{i:04d}.jpg"), y) for i, y in zip(tv.index, tv.y, strict=True)}
    assert pairs(train) | pairs(test) == tv_pairs
    assert load_split("caltech101", "train", tmp_path).paths == train.paths  # deterministic


def test_flowers102_trainval_and_test(tmp_path, monkeypatch):
    base = tmp_path / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    labels = np.array([1, 2, 102, 5, 5, 7, 3])
    savemat(base / "imagelabels.mat", {"labels": labels})
    savemat(base / "setid.mat", {"trnid": np.array([1, 2]), "valid": np.array([3, 7]), "tstid": np.array([4, 5, 6])})
    train = load_split("flowers102", "train", tmp_path)
    assert train.paths == ("jpg/image_00001.jpg", "jpg/image_00002.jpg", "jpg/image_00003.jpg", "jpg/image_00007.jpg")
    assert train.labels == (0, 1, 101, 2) and train.names[101] == "blackberry lily"
    monkeypatch.setattr(tvd.Flowers102, "_check_integrity", lambda self: True)  # md5 of the real .mat files
    tv = set()
    for s in ("train", "val"):
        d = tvd.Flowers102(str(tmp_path), split=s)
        tv |= {(str(p), y) for p, y in zip(d._image_files, d._labels, strict=True)}
    assert pairs(train) == tv
    assert load_split("flowers102", "test", tmp_path).labels == (4, 4, 6)


def test_stanford_dogs_lists(tmp_path):
    base = tmp_path / "stanford_dogs"
    wnids = [f"n{i:08d}-breed_{i}" for i in range(120)]
    for w in wnids:
        (base / "Images" / w).mkdir(parents=True)
    files = np.array([f"{wnids[0]}/a.jpg", f"{wnids[119]}/b.jpg"], dtype=object)
    (base / "lists").mkdir()
    savemat(base / "lists" / "train_list.mat", {"file_list": files, "labels": np.array([1.0, 120.0])})
    savemat(base / "lists" / "test_list.mat", {"file_list": files[:1], "labels": np.array([1.0])})
    train = load_split("dogs", "train", tmp_path)
    assert train.paths == (f"Images/{wnids[0]}/a.jpg", f"Images/{wnids[119]}/b.jpg") and train.labels == (0, 119)
    assert train.names[0] == "Chihuahua" and train.names[119] == "African hunting dog"


def test_cub200_official_split(tmp_path):
    base = tmp_path / "CUB_200_2011"
    base.mkdir()
    classes = [f"{i:03d}.Bird_{i}" for i in range(1, 201)]
    (base / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    (base / "images.txt").write_text("1 001.Bird_1/a.jpg\n2 200.Bird_200/b.jpg\n3 001.Bird_1/c.jpg\n")
    (base / "image_class_labels.txt").write_text("1 1\n2 200\n3 1\n")
    (base / "train_test_split.txt").write_text("1 1\n2 1\n3 0\n")
    train = load_split("cub200", "train", tmp_path)
    assert train.paths == ("images/001.Bird_1/a.jpg", "images/200.Bird_200/b.jpg") and train.labels == (0, 199)
    assert train.names[0] == "Black footed Albatross"
    assert load_split("cub200", "test", tmp_path).paths == ("images/001.Bird_1/c.jpg",)


def test_eurosat_rule_split_covers_torchvision(tmp_path):
    base = tmp_path / "eurosat" / "2750"
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
               "Residential", "River", "SeaLake"]
    for c in folders:
        for j in range(1, 11):
            touch(base / c / f"{c}_{j}.jpg")
    train, test = load_split("eurosat", "train", tmp_path), load_split("eurosat", "test", tmp_path)
    assert train.class_counts() == [8] * 10 and test.class_counts() == [2] * 10
    tv = tvd.EuroSAT(str(tmp_path))
    assert pairs(train) | pairs(test) == {(p, y) for p, y in tv.samples}
    assert train.names[9] == "lake or sea"


def test_cifar10_written_as_png_equals_torchvision(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / f, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [1, 9]}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names}, fh)
    train = load_split("cifar10", "train", tmp_path, work_dir=tmp_path / "work", verify_checksums=False)  # not official
    assert len(train) == 10 and train.labels[:2] == (1, 9)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *a, **k: True)  # md5 of the real archive files
    tv = tvd.CIFAR10(str(tmp_path), train=True)
    from PIL import Image

    for i in (0, 7):
        assert np.array_equal(np.asarray(Image.open(train.path(i))), tv.data[i])
    assert tuple(tv.targets) == train.labels


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split in ("train", "test"):
        with open(folder / split, "wb") as fh:
            pickle.dump({"data": np.zeros((3, 3072), dtype=np.uint8), "fine_labels": [0, 50, 99]}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    test = load_split("cifar100", "test", tmp_path, work_dir=tmp_path / "work", verify_checksums=False)
    assert test.labels == (0, 50, 99) and test.names[99] == "worm"


def test_digits_is_bundled(tmp_path):
    train = load_split("digits", "train", tmp_path, work_dir=tmp_path / "w")
    test = load_split("digits", "test", tmp_path, work_dir=tmp_path / "w")
    assert len(train) + len(test) == 1797 and not set(train.paths) & set(test.paths)
    assert train.names[3] == "three"


def test_folder_and_csv_formats(tmp_path, folder_data):
    train = load_split("folder", "train", folder_data)
    test = load_split("folder", "test", folder_data)
    assert train.classes == ("blue_jay", "green_frog", "red_fox") and train.names[0] == "blue jay"
    assert len(train) == 24 and test.classes == train.classes
    csv_train = tmp_path / "train.csv"
    csv_train.write_text("path,label\n" + "".join(f"train/{p},{train.classes[y]}\n"
                                                  for p, y in zip(train.paths, train.labels, strict=True)))
    csv_test = tmp_path / "test.csv"
    csv_test.write_text("path,label\ntest/red_fox/img_000.jpg,red_fox\n")
    c = load_split("csv", "train", folder_data, train_csv=str(csv_train), test_csv=str(csv_test))
    assert c.classes == train.classes and len(c) == 24 and c.path(0).is_file()
    t = load_split("csv", "test", folder_data, train_csv=str(csv_train), test_csv=str(csv_test))
    assert t.labels == (2,)


def test_bad_inputs_get_clear_errors(tmp_path, folder_data):
    with pytest.raises(DataError, match=r"dataset 'aircraft' not found.*data\.root.*data\.download=true"):
        load_split("aircraft", "train", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"unknown dataset 'aircarft'.*Did you mean aircraft"):
        load_split("aircarft", "train", tmp_path)
    with pytest.raises(ConfigError, match="cannot be downloaded"):
        load_split("cars", "train", tmp_path, download=True)
    with pytest.raises(DataError, match="has no class sub-folders"):
        (tmp_path / "empty" / "train").mkdir(parents=True)
        load_split("folder", "train", tmp_path / "empty")
    (folder_data / "test" / "unknown_class").mkdir()
    with pytest.raises(DataError, match="not in the training classes"):
        load_split("folder", "test", folder_data)
    bad_csv = tmp_path / "b.csv"
    bad_csv.write_text("file,class\nx.jpg,a\n")
    with pytest.raises(DataError, match="'path' and 'label'"):
        load_split("csv", "train", tmp_path, train_csv=str(bad_csv), test_csv=str(bad_csv))


def test_download_failure_is_explained(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(tvd, "FGVCAircraft", offline)
    with pytest.raises(DataError, match="downloading 'aircraft' with torchvision failed.*by hand"):
        load_split("aircraft", "train", tmp_path, download=True)


def test_dataset_status_lists_presence(tmp_path):
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)
    rows = {r["name"]: r for r in dataset_status(tmp_path)}
    assert rows["eurosat"]["present"] and not rows["aircraft"]["present"] and rows["digits"]["present"]
    assert rows["aircraft"]["classes"] == 100


def test_dataset_fingerprint_follows_content_not_location(tmp_path, folder_data, monkeypatch):
    import shutil

    from synthtl.config import DataConfig
    from synthtl.data import datasets

    def fingerprint(root):
        return datasets.dataset_fingerprint(DataConfig(name="folder", root=str(root), cache_dir=str(tmp_path / "c")))

    here = fingerprint(folder_data)
    copy = shutil.copytree(folder_data, tmp_path / "elsewhere" / "copy")
    assert fingerprint(copy) == here and len(here) == 64
    img = copy / "train" / "red_fox" / "img_003.jpg"
    img.write_bytes(img.read_bytes() + b"\0")  # one file one byte longer
    assert fingerprint(copy) != here
    shutil.rmtree(copy)
    shutil.copytree(folder_data, copy)
    (copy / "test" / "red_fox" / "img_000.jpg").rename(copy / "test" / "blue_jay" / "moved.jpg")  # relabelled
    assert fingerprint(copy) != here

    calls = []
    real = datasets.load_data
    monkeypatch.setattr(datasets, "load_data", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = DataConfig(name="folder", root=str(folder_data), cache_dir=str(tmp_path / "c"))
    from synthtl.identity import Resolver

    resolver = Resolver()  # a study's expansion: each dataset listed once for all its jobs
    assert [resolver.content("dataset", "data.root", cfg.root, cfg) for _ in range(3)] == [here] * 3
    assert len(calls) == 2  # listed once (train + test), then remembered by the resolver


def test_a_folder_link_that_leaves_its_class_is_skipped_and_listed(folder_data):
    (folder_data / "train" / "red_fox" / "up").symlink_to("..")  # would train blue_jay and green_frog as red_fox
    (folder_data / "train" / "red_fox" / "more").symlink_to(folder_data / "train" / "red_fox")  # a loop, inside
    images = load_split("folder", "train", folder_data)
    assert len(images) == 24 and not any("/up/" in p or "/more/" in p for p in images.paths)
    assert "red_fox/up/ (link to a folder outside the class folder)" in images.ignored
    assert "red_fox/more/ (link to a folder already listed)" in images.ignored


def test_a_csv_path_listed_twice(tmp_path, folder_data, capsys):
    rows = "path,label\nred_fox/img_000.jpg,red_fox\nblue_jay/img_000.jpg,blue_jay\nred_fox/img_000.jpg,{}\n"
    (tmp_path / "same.csv").write_text(rows.format("red_fox"))
    images = load_split("csv", "train", folder_data / "train", train_csv=str(tmp_path / "same.csv"),
                        test_csv=str(tmp_path / "same.csv"))
    assert sorted(images.paths) == ["blue_jay/img_000.jpg", "red_fox/img_000.jpg"]
    assert "lists 1 path(s) again with the same label" in capsys.readouterr().out  # counted once, with a warning
    (tmp_path / "two.csv").write_text(rows.format("blue_jay"))
    with pytest.raises(DataError, match=r"'red_fox/img_000.jpg' is listed with two labels, 'red_fox' \(line 2\) and "
                                        r"'blue_jay' \(line 4\)"):
        load_split("csv", "train", folder_data / "train", train_csv=str(tmp_path / "two.csv"),
                   test_csv=str(tmp_path / "two.csv"))
