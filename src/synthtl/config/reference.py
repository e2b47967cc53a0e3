"""Every config key with its value, allowed values and help: `commented_yaml` is what `--show-config` prints (valid
YAML, a preset); `markdown` is docs/config.md (`python -m synthtl.config.reference` rewrites it; a test checks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from synthtl.config.fields import leaves, rule_of
from synthtl.config.filtering import FilterConfig
from synthtl.config.finetune import FinetuneConfig
from synthtl.config.generate import GenerateConfig
from synthtl.config.study import ForecastConfig, StudyConfig
from synthtl.config.style import StyleConfig

COMMANDS = {"finetune": FinetuneConfig, "generate": GenerateConfig, "learn-style": StyleConfig,  # a command's config
            "filter": FilterConfig, "study": StudyConfig, "forecast": ForecastConfig}
PRESET_FOLDERS = {"finetune": FinetuneConfig, "generate": GenerateConfig, "style": StyleConfig,
                  "filter": FilterConfig, "studies": StudyConfig}


def inline(value: Any) -> str:
    """A value as one line of YAML."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True).strip().removesuffix(
        "\n...").strip()


def commented_yaml(cfg: Any) -> str:
    """The config as YAML, each key followed by its help and allowed values as a comment."""
    lines, open_sections = [], []
    for key, value, f in leaves(cfg):
        *sections, name = key.split(".")
        common = len(os.path.commonprefix([sections, open_sections]))  # of lists: the sections still open
        for depth in range(common, len(sections)):
            lines.append(f"{'  ' * depth}{sections[depth]}:")
        open_sections = sections
        allowed = f.metadata.get("allowed")
        note = f.metadata.get("help", "") + (f" [{rule_of(allowed)}]" if allowed else "")
        lines.append(f"{'  ' * len(sections)}{name}: {inline(value)}" + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"


def markdown() -> str:
    """docs/config.md: one table per command."""
    out = ["# Config keys", "", "Generated from the keys' declarations in `src/synthtl/config/` by "
           "`python -m synthtl.config.reference`; do not edit by hand. Every command prints the same with its "
           "resolved values: `synthtl <command> --show-config`. *Identity*: how a key enters the identity of what "
           "its stage makes (docs/method.md): by value, ignored, by content or by producer.", ""]
    for command, schema in COMMANDS.items():
        out += [f"## synthtl {command}", "", "| key | default | allowed | identity | what it does |",
                "| --- | --- | --- | --- | --- |"]
        for key, value, f in leaves(schema):
            allowed = rule_of(f.metadata["allowed"]) if f.metadata.get("allowed") else ""
            how = f.metadata.get("identity", "value") + (f" ({f.metadata['of']})" if f.metadata.get("of") else "")
            cells = [f"`{key}`", f"`{inline(value)}`", allowed, how, f.metadata.get("help", "")]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def schema_of_preset(path: Path) -> type | None:
    """The config class of a shipped preset, by its folder under configs/ (None for another file)."""
    return next((PRESET_FOLDERS[part] for part in path.parts if part in PRESET_FOLDERS), None)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "docs" / "config.md"
    target.write_text(markdown())
    print(f"wrote {target}")
