"""Image features for the quality and leakage checks: a frozen backbone (`FeatureSpace`) and one pass over each image
set (`Scanned`) that reads every image once for its perceptual hash and a digest of its bytes. Features are cached
under the digests, so a regenerated or repaired image never reuses stale features."""

from __future__ import annotations

import hashlib
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from synthtl.config import DataConfig, ReportConfig, from_dict
from synthtl.data.datasets import load_data
from synthtl.data.imagelist import ImageList
from synthtl.data.images import to_rgb
from synthtl.errors import SynthTLError
from synthtl.files import atomic_open
from synthtl.metrics.leakage import hash_files, quiet_pil
from synthtl.reporting.collect import GenSet, Run

FEATURE_BATCH = 64
# Bumped whenever the preprocessing changes, so cached features of the old preprocessing are never reused.
FEATURE_PROTOCOL = "clean-resize-1"


def clean_resize(img: Image.Image, size: int) -> np.ndarray:
    """clean-fid's "clean" resize (Parmar, Zhang, Zhu, CVPR 2022; cleanfid/resize.py): each 8-bit RGB channel as a
    float32 PIL image, bicubic to size x size (no crop, aspect not kept), unquantised: (3, size, size) float32."""
    arr = np.asarray(img, dtype=np.float32)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(arr[:, :, c])).resize(
        (size, size), Image.Resampling.BICUBIC)) for c in range(3)])


class FeatureSpace:
    """A frozen timm backbone's pooled features, with its weights' normalisation. Every model sees the whole image,
    resized the clean-fid way to its input size (299 for Inception-v3). Random weights come from `features_seed`."""

    def __init__(self, cfg: ReportConfig, device: torch.device, cache: Path):
        import timm

        from synthtl.models import WeightsError, resolve

        self.cfg, self.cache, self.device = cfg, cache, device  # `cache`: the folder of the cached features
        self.warning, self.random, self.seed, last_err = "", not cfg.features_pretrained, cfg.features_seed, None
        for name in (cfg.features, cfg.features_fallback):
            lib, arch = resolve(name)
            try:
                if lib != "timm":
                    raise SynthTLError(f"feature model {name!r}: use a timm model")
                self.model, self.name = self._create(timm, arch, cfg.features_pretrained), name
                break
            except (SynthTLError, WeightsError, OSError, RuntimeError, ValueError) as e:
                last_err, self.warning = e, f"{name} weights unavailable ({type(e).__name__}); "
        else:
            self.model = self._create(timm, resolve(cfg.features_fallback)[1], False)
            self.name, self.random = f"{cfg.features_fallback} (random weights, seed {self.seed})", True
            self.warning += (f"fell back to RANDOM weights ({last_err}): the distances below are meaningless; set "
                             "report.features to a model whose weights are cached")
        if not cfg.features_pretrained:
            self.warning = ("random-weight features (report.features_pretrained=false): the distances check the "
                            "plumbing only")
            self.name += f" (random weights, seed {self.seed})"
        self.model.eval().to(device)
        dc = timm.data.resolve_model_data_config(self.model)
        self.size = cfg.features_img_size or int(dc["input_size"][-1])
        self.mean, self.std = (torch.tensor(dc[k], device=device).view(1, 3, 1, 1) for k in ("mean", "std"))
        self.dim = int(self.model.num_features)
        self.key = f"{FEATURE_PROTOCOL}|{self.name}|{self.size}|{dc['mean']}|{dc['std']}"

    def _create(self, timm, arch: str, pretrained: bool) -> torch.nn.Module:
        # random weights from the report's own seed, the caller's random state untouched: same inputs, same report
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return timm.create_model(arch, pretrained=pretrained, num_classes=0)

    def _load(self, path: Path) -> np.ndarray | None:
        # `load_rgb` without its per-call warnings filter, which is not thread-safe (the caller runs `quiet_pil`).
        try:
            with Image.open(path) as img:
                img.load()
                return clean_resize(to_rgb(img), self.size)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
            return None

    @torch.no_grad()
    def __call__(self, paths: list[Path], digests: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(features (n, dim) float32, NaN if unreadable; readable (n,) bool), cached by byte digests."""
        h = hashlib.sha256(self.key.encode() + b"".join(d or b"missing" for d in digests)).hexdigest()
        file = self.cache / f"features-{h[:24]}.npz"
        if file.is_file():
            try:  # allow_pickle stays False (numpy's default): a cache file never unpickles objects
                with np.load(file, allow_pickle=False) as z:
                    return z["features"], z["ok"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # a damaged cache file is recomputed (and rewritten)
        feats, ok = np.full((len(paths), self.dim), np.nan, dtype=np.float32), np.zeros(len(paths), dtype=bool)
        # cuDNN's autotuner may pick a different (non-deterministic) kernel per run: pin it, so reruns repeat.
        flags = torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True)
        with quiet_pil(), ThreadPoolExecutor(os.cpu_count() or 1) as pool, flags:
            for start in range(0, len(paths), FEATURE_BATCH):
                arrs = list(pool.map(self._load, paths[start:start + FEATURE_BATCH]))
                if not (good := [k for k, a in enumerate(arrs) if a is not None]):
                    continue
                x = torch.from_numpy(np.stack([arrs[k] for k in good])).to(self.device)
                rows = [start + k for k in good]
                feats[rows] = self.model((x / 255.0 - self.mean) / self.std).float().cpu().numpy()
                ok[rows] = True
        with atomic_open(file, "wb") as f:
            np.savez(f, features=feats, ok=ok)
        return feats, ok


@dataclass
class Scanned:
    """One pass over a set: the perceptual hash, readability and content digest of every image."""

    images: ImageList
    hashes: np.ndarray
    ok: np.ndarray
    digests: list[bytes]
    # Features of the images asked for so far (`_asked`): a subset (a filter's kept images) never decodes again.
    features: np.ndarray | None = None
    feature_ok: np.ndarray | None = None
    _asked: np.ndarray | None = None

    @classmethod
    def of(cls, images: ImageList, space: FeatureSpace | None = None) -> Scanned:
        """The pass over `images`, with every feature when `space` is pretrained (for the leakage cosine)."""
        scanned = cls(images, *hash_files([images.path(i) for i in range(len(images))]))
        if space is not None and not space.random:
            scanned.features_of(space, np.arange(len(images)))
        return scanned

    def features_of(self, space: FeatureSpace, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features, indices) of the readable images among `idx`; only those not asked for before are extracted."""
        if self._asked is None:
            n = len(self.images)
            self.features = np.full((n, space.dim), np.nan, dtype=np.float32)
            self.feature_ok, self._asked = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        if len(missing := np.asarray(idx, dtype=np.int64)[~self._asked[idx]]):
            f, ok = space([self.images.path(int(i)) for i in missing], [self.digests[int(i)] for i in missing])
            self.features[missing], self.feature_ok[missing], self._asked[missing] = f, ok, True
        ok = self.feature_ok[idx]
        return self.features[idx][ok], idx[ok]

    def describe(self, i: int, role: str) -> str:
        return f"{role} · {self.images.names[self.images.labels[i]]} · {self.images.paths[i]}"


def capped(ok: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Indices of the readable images: all of them, or a seeded sample of `cap` when there are more."""
    idx = np.flatnonzero(ok)
    if cap and len(idx) > cap:
        idx = np.sort(np.random.default_rng(seed).choice(idx, cap, replace=False))
    return idx


def real_splits(runs: list[Run], dataset: str) -> tuple[ImageList, ImageList] | None:
    """The real train and test lists of a dataset, located through any finished run's config."""
    data = next((r.config["data"] for r in runs if r.labels.get("dataset") == dataset and r.config.get("data")), None)
    if data is None:
        return None
    try:
        return tuple(load_data(from_dict(DataConfig, data), s, download=False) for s in ("train", "test"))
    except SynthTLError:
        return None


def synthetic_list(g: GenSet, rows: list[dict]) -> ImageList:
    """The finished images of a generated set (`rows`: its completed manifest rows)."""
    names = sorted({(r["class_index"], r["class_name"]) for r in rows})
    classes = tuple(n for _, n in names)
    index = {c: i for i, (c, _) in enumerate(names)}
    return ImageList(g.folder, tuple(r["path"] for r in rows), tuple(index[r["class_index"]] for r in rows), classes,
                     classes, name=f"synthetic/{g.id}")
