"""ImageList: the labelled list of image files every stage passes around."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from synthtl.errors import DataError


@dataclass(frozen=True)
class ImageList:
    """Images under `root` with integer labels into `classes`.

    Attributes:
        root: Folder the relative `paths` start from.
        paths: POSIX paths relative to root; also the images' ids in split files.
        labels: Class index of every image.
        classes: Class ids as the dataset names them on disk (folder names, wnids, variant names).
        names: Human-readable class names (what prompts use), aligned with `classes`.
        name: A short description such as "aircraft/train".
        ignored: Entries the listing skipped, each "relative path (why)": hidden names, files that are not images.
    """

    root: Path
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    names: tuple[str, ...]
    name: str = ""
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")
        if len(self.classes) != len(self.names):
            raise ValueError(f"{self.name}: {len(self.classes)} classes but {len(self.names)} names")
        bad = [y for y in self.labels if not 0 <= y < len(self.classes)]
        if bad:
            raise DataError(f"{self.name}: labels {sorted(set(bad))[:5]} out of range for {len(self.classes)} classes")

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
