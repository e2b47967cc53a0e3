"""Named points where a test injects a fault (a kill, a crash, a full disk) without patching private functions:
`point("name", **facts)` does nothing unless a test installed a hook with `inject`. The points:

- "job": a study job is about to run in this process (task: `experiments.launch.Task`).
- "run.claimed": a fine-tuning run has claimed its folder and is about to train (run_dir).
- "style.checkpoint": a style's checkpoint is on disk (step, unit: -1 or the class of a per-class LoRA).
- "generate.write": generation is about to write one image (row: its manifest row; on a writer thread).
- "write": `files.atomic_open` has written a file's bytes to its temp file, not yet renamed (path; any thread)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

_HOOKS: dict[str, Callable[..., None]] = {}


def point(name: str, **facts: object) -> None:
    hook = _HOOKS.get(name)
    if hook is not None:
        hook(**facts)


@contextlib.contextmanager
def inject(name: str, hook: Callable[..., None]) -> Iterator[None]:
    """Runs `hook(**facts)` at every `point(name, ...)` while the context is open."""
    previous = _HOOKS.get(name)
    _HOOKS[name] = hook
    try:
        yield
    finally:
        _HOOKS.pop(name, None)
        if previous is not None:
            _HOOKS[name] = previous
