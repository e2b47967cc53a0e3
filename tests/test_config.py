import re
from dataclasses import fields, is_dataclass

import pytest
import yaml

from synthtl.config import (
    FilterConfig,
    FinetuneConfig,
    GenerateConfig,
    StudyConfig,
    StyleConfig,
    from_dict,
    load_config,
    to_yaml,
)
from synthtl.errors import ConfigError


def test_defaults_preset_and_overrides_stack(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("# base\nseed: 3\nreal_stage:\n  epochs: 7\n  lr: 0.1\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nreal_stage:\n  lr: 0.2\n")
    cfg = load_config(FinetuneConfig, child, ["real_stage.batch_size=16", "data.shots=4"])
    assert (cfg.seed, cfg.real_stage.epochs, cfg.real_stage.lr) == (3, 7, 0.2)
    assert cfg.real_stage.batch_size == 16 and cfg.data.shots == 4
    assert cfg.synth_stage.lr == FinetuneConfig().synth_stage.lr  # untouched defaults


def test_interpolations_resolve_and_are_checked_and_a_bad_one_is_one_line(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("real_stage:\n  lr: 0.3\nsynth_stage: ${real_stage}\n")  # OmegaConf interpolation of a section
    cfg = load_config(FinetuneConfig, preset, ["real_stage.epochs=4"])
    assert cfg.synth_stage == cfg.real_stage and cfg.synth_stage.lr == 0.3 and cfg.synth_stage.epochs == 4
    with pytest.raises(ConfigError, match=r"real_stage\.lr"):  # the resolved value is checked like a literal one
        load_config(FinetuneConfig, None, ["seed=0", "real_stage.lr=${seed}"])  # lr 0
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, None, ["synth_stage=${nope}"])
    assert "Interpolation key 'nope' not found" in str(e.value) and "\n" not in str(e.value)


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match=r"real_stage\.epoch"):
        load_config(FinetuneConfig, None, ["real_stage.epoch=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"real_stage\.epochs"):
        load_config(FinetuneConfig, None, ["real_stage.epochs=many"])


@pytest.mark.parametrize("override, field", [
    ("data.on_bad_image=ignore", "data.on_bad_image"),
    ("real_stage.optimizer=lion", "optimizer"),
    ("data.shots=-1", "data.shots"),
    ("select=val", "data.val_fraction"),
    ("mixed.synthetic_fraction=1.5", "mixed.synthetic_fraction"),
    ("data.decode=gpu", "data.decode"),
])
def test_bad_values_fail_at_load_time(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(FinetuneConfig, None, [override])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(FinetuneConfig, None, ["real_stage.epochs"])


def test_missing_preset_is_an_error():
    with pytest.raises(ConfigError, match="not found"):
        load_config(FinetuneConfig, "no/such/preset", [])


def test_yaml_round_trip():
    cfg = load_config(FinetuneConfig, None, ["seed=5", "data.name=aircraft"])
    import yaml

    assert from_dict(FinetuneConfig, yaml.safe_load(to_yaml(cfg))) == cfg


def test_every_shipped_preset_loads():
    from synthtl.config import configs_dir

    presets = sorted(configs_dir().rglob("*.yaml"))
    assert presets, "configs/ ships presets"
    for p in presets:
        text = p.read_text()
        assert text.startswith("#"), f"{p} must start with a comment giving its command"
        if "finetune" in p.parts:
            load_config(FinetuneConfig, p, [])
        if "generate" in p.parts:
            from synthtl.config import GenerateConfig

            load_config(GenerateConfig, p, [])
        if "style" in p.parts:
            from synthtl.config import StyleConfig

            load_config(StyleConfig, p, [])


def test_text_values_need_no_quoting_and_bad_lists_get_one_line():
    from synthtl.config import GenerateConfig

    cfg = load_config(GenerateConfig, None, ["prompts.suffix=, a type of aircraft.", 'prompts.negative="low, blurry"'])
    assert cfg.prompts.suffix == ", a type of aircraft." and cfg.prompts.negative == "low, blurry"
    with pytest.raises(ConfigError, match=r"prompts.custom=\[a,b.*quote it"):
        load_config(GenerateConfig, None, ["prompts.custom=[a,b"])
    assert load_config(GenerateConfig, None, ['prompts.custom=["a {}", "b {}"]']).prompts.custom == ["a {}", "b {}"]


def test_peers_preset_command_keeps_its_filter_rule():
    """The command in configs/studies/peers.yaml's header: `filter=[clip.model=...]` replaces the study's filter
    overrides, and the 80 % rule survives because it lives in the filter preset."""
    from synthtl.config import FilterConfig, StudyConfig, configs_dir

    study = load_config(StudyConfig, "studies/peers", ["data_root=/data", "filter=[clip.model=/path/to/clip]"])
    cfg = load_config(FilterConfig, study.filter_presets["clip80"], list(study.filter))
    assert cfg.keep.rule == "fraction" and cfg.keep.fraction == 0.8 and cfg.clip.model == "/path/to/clip"
    header = (configs_dir() / "studies" / "peers.yaml").read_text().splitlines()[0]
    assert header == "# synthtl study peers data_root=/data filter=[clip.model=/path/to/clip] --report"


def test_presets_can_stack_several_bases():
    from synthtl.config import FinetuneConfig

    few = load_config(FinetuneConfig, "finetune/fewshot")
    stacked = load_config(FinetuneConfig, ["finetune/resnet18", "finetune/fewshot_recipe"], ["data.shots=4"])
    assert few == stacked and few.real_stage.epochs == 100 and few.real_stage.batch_size == 32


@pytest.mark.parametrize("overrides, message", [
    (["keep.threshold=nan"], "keep.threshold=nan: must be a finite number"),
    (["keep.threshold=inf", "score=logit"], "keep.threshold=inf: must be a finite number"),
    (["keep.threshold=-inf", "score=logit"], "keep.threshold=-inf: must be a finite number"),
    (["keep.threshold=5"], r"keep.threshold=5.0 with score=prob .* \[0, 1\)"),
    (["keep.threshold=1"], r"keep.threshold=1.0 with score=prob"),
    (["keep.threshold=-0.1"], r"keep.threshold=-0.1 with score=prob"),
])
def test_filter_threshold_is_finite_and_a_probability_with_score_prob(overrides, message):
    from synthtl.config import FilterConfig

    with pytest.raises(ConfigError, match=message):
        load_config(FilterConfig, None, overrides)


def test_filter_threshold_in_range_is_accepted():
    from synthtl.config import FilterConfig

    assert load_config(FilterConfig, None, ["keep.threshold=0.0"]).keep.threshold == 0.0
    assert load_config(FilterConfig, None, ["keep.threshold=0.9"]).keep.rule == "threshold"
    assert load_config(FilterConfig, None, ["keep.threshold=5", "score=logit"]).keep.threshold == 5.0  # any logit
    assert load_config(FilterConfig, None, ["keep.threshold=-12.5", "score=logit"]).keep.threshold == -12.5


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "x y", "/abs", "a:b", "é"])
def test_synthetic_filter_follows_the_filter_name_rule(name):
    from synthtl.config import FilterConfig

    with pytest.raises(ConfigError) as syn:
        load_config(FinetuneConfig, None, [f"synthetic.filter={name!r}"])
    with pytest.raises(ConfigError) as own:
        load_config(FilterConfig, None, [f"name={name!r}"])
    assert str(syn.value).startswith(f"synthetic.filter={name!r}: ")
    assert str(syn.value).removeprefix("synthetic.filter=") == str(own.value).removeprefix("name=")  # one rule


def test_synthetic_filter_accepts_every_valid_filter_name():
    from synthtl.config import FilterConfig

    for name in ["clip", "top-2", "clip_large.v2", "a..b"]:
        assert load_config(FinetuneConfig, None, [f"synthetic.filter={name}"]).synthetic.filter == name
        assert load_config(FilterConfig, None, [f"name={name}"]).name == name
    assert load_config(FinetuneConfig, None, []).synthetic.filter == ""  # "" = every image


# ---- every key declares its help and, for numbers and choices, its allowed values (config.fields.key) ----
SCHEMAS = [FinetuneConfig, GenerateConfig, StyleConfig, FilterConfig, StudyConfig]
UNBOUNDED = {"keep.threshold"}  # a score threshold: a logit can be any finite number (NaN and inf are refused)


def leaf_fields(schema, prefix=""):
    for f in fields(schema):
        if isinstance(f.default_factory, type) and is_dataclass(f.default_factory):
            yield from leaf_fields(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def outside(allowed):
    """One value outside the declared range (or choices)."""
    if "one_of" in allowed:
        return "no-such-choice"
    lows = [v for b, v in allowed.items() if b in ("ge", "gt")]
    highs = [v for b, v in allowed.items() if b in ("le", "lt")]
    return max(highs) + 1 if highs else min(lows) - 1


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_every_key_has_help(schema):
    assert [k for k, f in leaf_fields(schema) if not f.metadata.get("help")] == []


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_every_numeric_key_refuses_a_value_outside_its_range_in_one_line(schema):
    tried = 0
    for k, f in leaf_fields(schema):
        numeric = re.fullmatch(r"(int|float|list\[(int|float)\])( \| None)?", str(f.type))
        if not (numeric or f.metadata.get("allowed")) or k in UNBOUNDED:
            continue
        allowed = f.metadata.get("allowed")
        assert allowed, f"{schema.__name__}.{k} is a number without a declared range (ge/gt/le/lt)"
        bad = outside(allowed)
        value = f"[{bad}]" if str(f.type).startswith("list") else bad
        with pytest.raises(ConfigError) as e:
            load_config(schema, None, [f"{k}={value}"])
        assert str(e.value).startswith(f"{k}=") and "\n" not in str(e.value), str(e.value)
        tried += 1
    assert tried >= 5


@pytest.mark.parametrize("override", ["real_stage.label_smoothing=1.5", "real_stage.momentum=-0.1",
                                      "synth_stage.weight_decay=-1", "real_stage.clip_grad=-1",
                                      "real_stage.warmup_epochs=-1", "mixup.cutmix_alpha=-1", "mixup.prob=5",
                                      "real_stage.lr=nan", "real_stage.min_lr=1", "ema.decay=1"])
def test_values_once_accepted_or_crashing_are_one_line(override):
    with pytest.raises(ConfigError, match=re.escape(override.split("=")[0])):
        load_config(FinetuneConfig, None, [override])


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_show_config_is_yaml_with_every_keys_help_and_loads_back(schema):
    from synthtl.config.reference import commented_yaml, leaves

    cfg = load_config(schema, None, [])
    text = commented_yaml(cfg)
    assert from_dict(schema, yaml.safe_load(text)) == cfg
    lines = [x for x in text.splitlines() if not x.endswith(":")]  # the keys' lines, in order (not the sections)
    for (key, _, f), line in zip(leaves(schema), lines, strict=True):
        assert line.strip().startswith(key.split(".")[-1] + ":") and f.metadata["help"] in line, key


def test_docs_config_md_is_current():
    from synthtl.config import configs_dir
    from synthtl.config.reference import markdown

    doc = configs_dir().parent / "docs" / "config.md"
    assert doc.read_text() == markdown(), "docs/config.md is stale: run `python -m synthtl.config.reference`"


def test_a_duplicated_key_or_a_binary_preset_is_one_line(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("real_stage:\n  epochs: 3\n  epochs: 5\n")
    with pytest.raises(ConfigError, match=r"dup.yaml is not valid YAML \(line 3\): key 'epochs' is given twice"):
        load_config(FinetuneConfig, str(dup), [])
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="is not a text file"):
        load_config(FinetuneConfig, str(binary), [])
