"""What an output is, declared once in the configs' field metadata (`synthtl.identity`): unit tests, no runs."""

import json
import shutil
from dataclasses import fields, is_dataclass

import pytest

from synthtl import config, identity
from synthtl.config import FilterConfig, FinetuneConfig, GenerateConfig, StyleConfig, load_config
from synthtl.errors import ConfigError, DataError
from synthtl.files import write_json


def leaves(schema, prefix=""):
    for f in fields(schema):
        if is_dataclass(f.type) or (isinstance(f.default_factory, type) and is_dataclass(f.default_factory)):
            yield from leaves(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f.metadata.get("identity"), f.metadata.get("of")


@pytest.mark.parametrize("schema", [FinetuneConfig, GenerateConfig, StyleConfig, FilterConfig])
def test_every_field_declares_a_known_way_into_the_identity(schema):
    found = {key: (how, of) for key, how, of in leaves(schema)}
    assert {how for how, _ in found.values()} <= {"value", "ignored", "content", "producer"}
    for key, (how, of) in found.items():
        assert bool(of) == (how in ("content", "producer")), key
    # where files live and how fast: never part of what an output is
    for key in ("out_dir", "data.root", "data.cache_dir", "data.num_workers"):
        if key in found:
            assert found[key][0] in ("ignored", "content"), key


def test_paths_and_speed_are_ignored_and_values_are_not(folder_data, tmp_path):
    base = ["data.name=folder", f"data.root={folder_data}", "model.name=test_resnet", "model.pretrained=false"]
    a = load_config(FinetuneConfig, None, [*base, f"out_dir={tmp_path / 'a'}"])
    moved = shutil.copytree(folder_data, tmp_path / "moved")
    b = load_config(FinetuneConfig, None, ["data.name=folder", f"data.root={moved}", "model.name=test_resnet",
                                           "model.pretrained=false", "data.num_workers=9", "device=cpu",
                                           "progress=false", f"data.cache_dir={tmp_path}", "checkpoint_every=4"])
    assert identity.identity(a) == identity.identity(b)
    c = load_config(FinetuneConfig, None, [*base, "real_stage.lr=0.5"])
    assert identity.differing(identity.identity(a), identity.identity(c)) == ["real_stage.lr"]
    (moved / "train" / "red_fox" / "img_000.jpg").unlink()  # the dataset by content
    assert identity.differing(identity.identity(a), identity.identity(b)) == ["data.root"]


def test_a_content_field_is_its_files_content(folder_data, tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"one")
    cfg = load_config(FinetuneConfig, None, ["data.name=folder", f"data.root={folder_data}",
                                             f"model.weights={weights}"])
    first = identity.identity(cfg)["model"]["weights"]
    assert first.startswith("sha256:")
    shutil.move(weights, tmp_path / "moved.bin")
    moved = load_config(FinetuneConfig, None, ["data.name=folder", f"data.root={folder_data}",
                                               f"model.weights={tmp_path / 'moved.bin'}"])
    assert identity.identity(moved)["model"]["weights"] == first
    with pytest.raises(DataError, match="model.weights=.* does not exist"):
        identity.identity(cfg)


def test_a_producer_field_is_its_outputs_identity_or_the_planned_one(folder_data, tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    write_json(gen / identity.IDENTITY, {"kind": "generate", "hash": "abc123abc123", "identity": {}})
    cfg = load_config(FinetuneConfig, None, ["data.name=folder", f"data.root={folder_data}",
                                             f"synthetic.path={gen}", "strategy=bridged"])
    assert identity.identity(cfg)["synthetic"]["path"] == "abc123abc123"
    planned = identity.identity(cfg, produced={"synthetic.path": "abc123abc123"})
    assert planned == identity.identity(cfg)  # a job file run by hand is the job the study planned
    images = tmp_path / "images"
    shutil.copytree(folder_data / "train", images)  # not made by synthtl: by its files' content
    plain = load_config(FinetuneConfig, None, ["data.name=folder", f"data.root={folder_data}",
                                               f"synthetic.path={images}"])
    assert identity.identity(plain)["synthetic"]["path"].startswith("files:")
    filtered = load_config(FinetuneConfig, None, ["data.name=folder", f"data.root={folder_data}",
                                                  f"synthetic.path={gen}", "synthetic.filter=clip"])
    with pytest.raises(DataError, match="synthetic.filter='clip'.*run `synthtl filter"):
        identity.identity(filtered)


def test_check_refuses_another_output_naming_the_keys_and_claim_writes_once(tmp_path):
    a = {"lr": 0.1, "data": {"root": "x", "shots": 0}}
    assert not identity.check(tmp_path, "style", a)
    identity.claim(tmp_path, "style", a)
    assert identity.check(tmp_path, "style", a)
    b = {"lr": 0.2, "data": {"root": "x", "shots": 4}}
    with pytest.raises(ConfigError) as e:
        identity.check(tmp_path, "style", b)
    msg = str(e.value)
    assert "holds a style made with another config: data.shots (0 there, 4 now), lr (0.1 there, 0.2 now)" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="holds a style, not a fine-tuning run"):
        identity.check(tmp_path, "finetune", a)
    (tmp_path / identity.IDENTITY).write_text("{")
    with pytest.raises(ConfigError, match="is damaged"):
        identity.check(tmp_path, "style", a)


def test_the_hash_is_stable_and_a_dotted_helper_flattens():
    ident = {"b": 1, "a": {"c": [1, 2], "d": None}}
    assert identity.digest(ident) == identity.digest(json.loads(json.dumps(ident)))
    assert len(identity.digest(ident)) == 12
    assert identity.flat(ident) == {"b": 1, "a.c": [1, 2], "a.d": None}


def test_declaration_helpers_build_dataclass_fields():
    f = config.key("x", "help", ignored=True)
    assert f.default == "x" and f.metadata["identity"] == "ignored" and f.metadata["help"] == "help"
    assert config.key("", "h", content="file").metadata["of"] == "file"
    assert config.key(factory=list, ignored=True).default_factory is list
    with pytest.raises(TypeError, match="unknown check"):
        config.key(0, "h", above=1)


