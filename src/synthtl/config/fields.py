"""How a config key is declared: default, help, identity and allowed values.

Identity (`synthtl.identity`; docs/method.md): by value unless `ignored=True` (where files live, how fast, how shown),
`content="<kind>"` (a given file, by what it holds) or `producer="<kind>"` (another stage's output, by its identity).
Allowed values (`ge`/`gt`/`le`/`lt` bounds, `one_of`) are checked at load time, naming the full key and its help."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from dataclasses import MISSING, Field, field, fields, is_dataclass
from functools import reduce
from typing import Any

from synthtl.errors import ConfigError

BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def key(default: Any = MISSING, help: str = "", *, factory: Any = None, ignored: bool = False, content: str = "",
        producer: str = "", swap: dict | None = None, **allowed: Any) -> Any:
    """A config field (see the module doc). `swap` renames the content kinds of a nested section's keys."""
    unknown = set(allowed) - {*BOUNDS, "one_of"}
    if unknown:
        raise TypeError(f"key(): unknown check(s) {sorted(unknown)}")
    how = "ignored" if ignored else "content" if content else "producer" if producer else "value"
    meta = {"help": help, "identity": how, "of": content or producer, "swap": swap or {}, "allowed": allowed}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def check(cond: bool, msg: str) -> None:
    """A rule between keys (a key's own range is declared in `key`)."""
    if not cond:
        raise ConfigError(msg)


def rule_of(allowed: dict) -> str:
    """The allowed values in words, e.g. "must be >= 0 and < 1" or "choose one of sgd, adamw"."""
    if "one_of" in allowed:
        return "choose one of " + ", ".join(map(str, allowed["one_of"]))
    return "must be " + " and ".join(f"{BOUNDS[b][0]} {v}" for b, v in allowed.items())


def leaves(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any, Field]]:
    """(dotted key, value, field) of every key of a config instance or class (a class gives the defaults)."""
    for f in fields(cfg):
        if isinstance(f.default_factory, type) and is_dataclass(f.default_factory):  # a nested section
            yield from leaves(getattr(cfg, f.name) if not isinstance(cfg, type) else f.default_factory,
                              f"{prefix}{f.name}.")
        elif isinstance(cfg, type):
            yield prefix + f.name, f.default_factory() if f.default is MISSING else f.default, f
        else:
            yield prefix + f.name, getattr(cfg, f.name), f


def check_values(schema: type, data: dict) -> None:
    """Checks a config tree's values (every item of a list key) against their declared allowed values before any rule
    between keys, naming the full key and its help. Numbers must be finite: NaN passes no bound and is not JSON."""
    for name, _, f in leaves(schema):
        value, help_ = reduce(dict.get, name.split("."), data), f.metadata.get("help", "")
        allowed = f.metadata.get("allowed", {})
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{name}={item}: must be a finite number" + (f" ({help_})" if help_ else ""))
            ok = item in allowed["one_of"] if "one_of" in allowed else \
                item is None or all(BOUNDS[b][1](item, v) for b, v in allowed.items())
            if not ok:
                raise ConfigError(f"{name}={item!r}: {rule_of(allowed)}" + (f" ({help_})" if help_ else ""))


def check_filter_name(name: str, key: str) -> None:
    """One folder under <set>/filters/ (no '..' or 'a/b'); the rule `name` and `synthetic.filter` share."""
    check(all(c.isascii() and (c.isalnum() or c in "-_.") for c in name) and bool(name.strip(".")),
          f"{key}={name!r}: use letters, digits, '-', '_' or '.' (it names the folder filters/<name>)")
