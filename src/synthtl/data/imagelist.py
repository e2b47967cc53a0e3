"""ImageList: the labelled list of image files every stage passes around."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from synthtl.errors import DataError


@dataclass(frozen=True)
class ImageList:
    """Images under `root` with integer labels into `classes`."""

    root: Path  # the folder the relative `paths` start from
    paths: tuple[str, ...]  # POSIX paths relative to root; also the images' ids in split files
    labels: tuple[int, ...]  # the class index of every image
    classes: tuple[str, ...]  # class ids as the dataset names them on disk (folder names, wnids, variant names)
    names: tuple[str, ...]  # human-readable class names (what prompts use), aligned with `classes`
    name: str = ""  # a short description such as "aircraft/train"
    ignored: tuple[str, ...] = ()  # entries the listing skipped, each "relative path (why)": hidden, not images

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")
        if len(self.classes) != len(self.names):
            raise ValueError(f"{self.name}: {len(self.classes)} classes but {len(self.names)} names")
        if self.labels and not (min(self.labels) >= 0 and max(self.labels) < len(self.classes)):  # C-speed first
            bad = [y for y in self.labels if not 0 <= y < len(self.classes)]
            raise DataError(f"{self.name}: labels {sorted(set(bad))[:5]} out of range for {len(self.classes)} classes")

    @classmethod
    def of(cls, root: Path, items: Sequence[tuple[str, int]], classes: Iterable[str], names: Iterable[str],
           name: str = "", ignored: Iterable[str] = ()) -> ImageList:
        """The list of (path, label) `items`."""
        return cls(root=root, paths=tuple(p for p, _ in items), labels=tuple(y for _, y in items),
                   classes=tuple(classes), names=tuple(names), name=name, ignored=tuple(ignored))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, i: int) -> Path:
        return self.root / self.paths[i]

    def subset(self, indices: Sequence[int], name: str | None = None) -> ImageList:
        return replace(self, paths=tuple(self.paths[i] for i in indices),
                       labels=tuple(self.labels[i] for i in indices), name=name or self.name)

    def by_class(self) -> list[list[int]]:
        """Indices of each class's images, in list order."""
        out: list[list[int]] = [[] for _ in self.classes]
        for i, y in enumerate(self.labels):
            out[y].append(i)
        return out

    def class_counts(self) -> list[int]:
        return [len(ix) for ix in self.by_class()]
