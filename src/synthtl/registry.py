"""Small name -> object registries that fail loudly (timm-style `list_*` helpers)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial
from typing import Generic, TypeVar

from synthtl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps short names to objects; `kind` ("dataset", "strategy", ...) names what it holds in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under `name`; a duplicate name is an error."""
        return partial(self.add, name)

    def add(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        """Returns the object registered as `name`, or raises listing what exists."""
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
