"""Typed configs: defaults < YAML preset < `a.b=value` overrides. Every stage receives a frozen dataclass;
OmegaConf stays inside this package. Each key is declared once with its help, allowed values and identity role
(`config.fields.key`); unknown keys and bad values fail at load time with the full key named; rules between keys live
in `__post_init__`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from synthtl.config.fields import check_values, key
from synthtl.config.filtering import ClassifierFilterConfig, ClipFilterConfig, FilterConfig, KeepConfig
from synthtl.config.finetune import (
    DataConfig,
    EmaConfig,
    FinetuneConfig,
    LeepConfig,
    MatchedConfig,
    MixedConfig,
    MixupConfig,
    ModelConfig,
    StageConfig,
    SyntheticConfig,
)
from synthtl.config.generate import GenerateConfig, GeneratorConfig, Img2ImgConfig, PromptConfig
from synthtl.config.study import (
    PROMPT_STYLES,
    STYLE_PROMPTS,
    ForecastConfig,
    GridConfig,
    LauncherConfig,
    ReportConfig,
    StudyConfig,
)
from synthtl.config.style import LoraStyleConfig, StyleConfig
from synthtl.errors import ConfigError

__all__ = ["PROMPT_STYLES", "STYLE_PROMPTS", "ClassifierFilterConfig", "ClipFilterConfig", "DataConfig", "EmaConfig",
           "FilterConfig", "FinetuneConfig", "ForecastConfig", "GenerateConfig", "GeneratorConfig", "GridConfig",
           "Img2ImgConfig", "KeepConfig", "LauncherConfig", "LeepConfig", "LoraStyleConfig", "MatchedConfig",
           "MixedConfig", "MixupConfig", "ModelConfig", "PromptConfig", "ReportConfig", "StageConfig", "StudyConfig",
           "StyleConfig", "SyntheticConfig", "configs_dir", "find_preset", "from_dict", "key", "load_config",
           "to_yaml", "with_overrides"]

T = TypeVar("T")


def configs_dir() -> Path:
    """The repository's `configs/` folder (editable install) or ./configs."""
    here = Path(__file__).resolve().parents[3] / "configs"
    return here if here.is_dir() else Path.cwd() / "configs"


def find_preset(name: str) -> Path:
    """A preset path: an existing file, or a name under configs/ (with or without .yaml)."""
    p = Path(name)
    if p.is_file():
        return p
    for base in (Path.cwd() / "configs", configs_dir()):
        for cand in (base / name, base / f"{name}.yaml"):
            if cand.is_file():
                return cand
    raise ConfigError(f"config preset {name!r} not found (looked for the file and under {configs_dir()}); "
                      "`synthtl presets` lists the shipped ones")


class _UniqueKeys(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice in one mapping (the "
                                                        "second would silently win): keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """Loads a YAML preset; `_base_: other.yaml` (or a list, merged in order; relative to the file) goes underneath."""
    if path in seen:
        raise ConfigError(f"preset {path} includes itself through _base_")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeys) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"preset {path} is not a text file (not UTF-8): give a YAML preset") from None
    except yaml.YAMLError as e:
        where = f" (line {e.problem_mark.line + 1})" if getattr(e, "problem_mark", None) else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"preset {path} is not valid YAML{where}: {what}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {path} must be a mapping of config keys")
    base = raw.pop("_base_", None)
    node = OmegaConf.create(raw)
    bases = [base] if isinstance(base, str) else list(base or [])
    parents = [_load_yaml_chain((path.parent / b).resolve(), (*seen, path)) for b in bases]
    return OmegaConf.merge(*parents, node) if parents else node


def load_config(schema: type[T], preset: str | os.PathLike | list | None = None,
                overrides: list[str] | None = None) -> T:
    """`schema`'s defaults < YAML preset(s) in order < overrides; ConfigError names the full key of a bad key/value."""
    overrides = list(overrides or [])
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form key=value (e.g. real_stage.epochs=5)")
    try:
        node = OmegaConf.structured(schema)
        for p in [preset] if isinstance(preset, (str, os.PathLike)) else list(preset or []):
            node = OmegaConf.merge(node, _load_yaml_chain(find_preset(str(p)).resolve()))
        return _build(_apply_overrides(node, overrides))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).split("\n")[0]
        if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
            raise ConfigError(f"unknown config key {key!r}: {msg}. `synthtl <command> --show-config` prints "
                              "every valid key") from None
        raise ConfigError(f"bad value for {key!r}: {msg}") from None


def _build(node: Any) -> Any:
    """The config instance of a merged node: every key's allowed values are checked, then its `__post_init__` rules."""
    check_values(OmegaConf.get_type(node), OmegaConf.to_container(node, resolve=True))
    return OmegaConf.to_object(node)


def _apply_overrides(node: Any, overrides: list[str]) -> Any:
    """Merges `a.b=value` overrides into `node`. A text key takes its value literally (one pair of surrounding quotes
    dropped); others parse it as YAML, and a value that does not parse is one error line showing the quoting."""
    for o in overrides:
        key, value = o.split("=", 1)
        key = key.strip()
        current = OmegaConf.select(node, key, default=None, throw_on_missing=False) if key else None
        if isinstance(current, str):
            text = value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else value
            item = OmegaConf.create({})
            OmegaConf.update(item, key, text, merge=True)
        else:
            try:
                item = OmegaConf.from_dotlist([o])
            except OmegaConfBaseException:
                raise
            except Exception as e:  # YAML syntax errors of the value
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"override {o!r}: the value does not parse ({first}); quote it for the shell, e.g. "
                                  f"'{key}=[\"a\", \"b\"]' for a list or '{key}=\"text, with commas\"' for text"
                                  ) from None
        node = OmegaConf.merge(node, item)
    return node


def with_overrides(cfg: T, overrides: list[str]) -> T:
    """A copy of a config instance with `a.b=value` overrides applied (same checks as load_config)."""
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form key=value")
    try:
        return _build(_apply_overrides(OmegaConf.structured(cfg), list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override for {getattr(e, 'full_key', None)!r}: {str(e).splitlines()[0]}") from None


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (a run folder's config.yaml), in field order; from the dataclass directly, as
    OmegaConf's round trip costs ~40 ms per config, paid for each of a study's thousands of job files."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True, width=120)


def from_dict(schema: type[T], data: dict) -> T:
    """Rebuilds a config from a saved dict (e.g. a run's config.yaml), with the same checks as load_config."""
    try:
        return _build(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"saved config does not match {schema.__name__}: {str(e).splitlines()[0]}") from None
