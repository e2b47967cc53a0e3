"""Image features for the quality and leakage checks: a frozen backbone (`FeatureSpace`) and one pass over each image
set (`Scanned`): every image is read once for its perceptual hash and a digest of its bytes. Features are cached under
the digests, so a regenerated or repaired image never reuses stale features.
"""

from __future__ import annotations

import hashlib
import io
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
from synthtl.files import write_bytes
from synthtl.metrics.leakage import hash_files, quiet_pil
from synthtl.reporting.collect import GenSet, Run

FEATURE_BATCH = 64
# Bumped whenever the preprocessing changes, so cached features of the old preprocessing are never reused.
FEATURE_PROTOCOL = "clean-resize-1"
# Random subsets of a set, each with a filter's kept counts per class, behind a kept subset's "FID, random same n".


def clean_resize(img: Image.Image, size: int) -> np.ndarray:
    """clean-fid's "clean" resize (Parmar, Zhang, Zhu, CVPR 2022; GaParmar/clean-fid, cleanfid/resize.py:
    build_resizer("clean") = make_resizer("PIL", quantize_after=False, "bicubic", (299, 299))): each channel of the
    8-bit RGB image as a float32 PIL image, PIL bicubic straight to size x size (no centre crop, aspect ratio not
    kept), not re-quantised to 8 bits.

    Returns:
        (3, size, size) float32 in about [0, 255] (bicubic may overshoot slightly, as in clean-fid).
    """
    arr = np.asarray(img, dtype=np.float32)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(arr[:, :, c])).resize(
        (size, size), Image.Resampling.BICUBIC)) for c in range(3)])


class FeatureSpace:
    """A frozen backbone producing pooled features (timm, num_classes=0), with the normalisation of its weights.

    Images are resized the clean-fid way (`clean_resize`) to the model's input size (299 for Inception-v3), for
    every feature model, so the whole image is always seen. Random weights are drawn from `report.features_seed`.
    """

    def __init__(self, cfg: ReportConfig, device: torch.device):
        import timm

        from synthtl.models import WeightsError, resolve

        self.warning = ""
        self.random = not cfg.features_pretrained
        self.seed = cfg.features_seed
        last_err = None
        for name in (cfg.features, cfg.features_fallback):
            lib, arch = resolve(name)
            try:
                if lib != "timm":
                    raise SynthTLError(f"feature model {name!r}: use a timm model")
                self.model = self._create(timm, arch, cfg.features_pretrained)
                self.name = name
                break
            except (SynthTLError, WeightsError, OSError, RuntimeError, ValueError) as e:
                last_err = e
                self.warning = f"{name} weights unavailable ({type(e).__name__}); "
        else:
            lib, arch = resolve(cfg.features_fallback)
            self.model = self._create(timm, arch, False)
            self.name = f"{cfg.features_fallback} (random weights, seed {self.seed})"
            self.random = True
            self.warning += (f"fell back to RANDOM weights ({last_err}): the distances below are meaningless; set "
                             "report.features to a model whose weights are cached")
        if not cfg.features_pretrained:
            self.warning = ("random-weight features (report.features_pretrained=false): the distances check the "
                            "plumbing only")
            self.name += f" (random weights, seed {self.seed})"
        self.model.eval().to(device)
        self.device = device
        dc = timm.data.resolve_model_data_config(self.model)
        self.size = cfg.features_img_size or int(dc["input_size"][-1])
        self.mean = torch.tensor(dc["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(dc["std"], device=device).view(1, 3, 1, 1)
        self.dim = int(self.model.num_features)
        self.key = f"{FEATURE_PROTOCOL}|{self.name}|{self.size}|{dc['mean']}|{dc['std']}"

    def _create(self, timm, arch: str, pretrained: bool) -> torch.nn.Module:
        # Random weights drawn from the report's own seed, without touching the caller's random state: the same
        # inputs give the same report.
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
    def __call__(self, paths: list[Path], digests: list[bytes], cache: Path) -> tuple[np.ndarray, np.ndarray]:
        """Features of images, cached under the digests of their bytes (not their paths).

        Returns:
            (features (n, dim) float32, NaN rows where unreadable; readable (n,) bool).
        """
        h = hashlib.sha256(self.key.encode())
        for d in digests:
            h.update(d or b"missing")
        file = cache / f"features-{h.hexdigest()[:24]}.npz"
        if file.is_file():
            try:  # allow_pickle stays False (numpy's default): a cache file never unpickles objects
                with np.load(file, allow_pickle=False) as z:
                    return z["features"], z["ok"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # a damaged cache file is recomputed (and rewritten)
        feats = np.full((len(paths), self.dim), np.nan, dtype=np.float32)
        ok = np.zeros(len(paths), dtype=bool)
        # cuDNN's autotuner may pick a different (non-deterministic) kernel per run: pin it, so reruns repeat.
        flags = torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True)
        with quiet_pil(), ThreadPoolExecutor(os.cpu_count() or 1) as pool, flags:
            for start in range(0, len(paths), FEATURE_BATCH):
                arrs = list(pool.map(self._load, paths[start:start + FEATURE_BATCH]))
                good = [k for k, a in enumerate(arrs) if a is not None]
                if not good:
                    continue
                x = torch.from_numpy(np.stack([arrs[k] for k in good])).to(self.device)
                x = (x / 255.0 - self.mean) / self.std
                rows = [start + k for k in good]
                feats[rows] = self.model(x).float().cpu().numpy()
                ok[rows] = True
        buf = io.BytesIO()
        np.savez(buf, features=feats, ok=ok)
        write_bytes(file, buf.getvalue())
        return feats, ok


@dataclass
class Scanned:
    """One pass over a set: the perceptual hash, readability and content digest of every image."""

    images: ImageList
    hashes: np.ndarray
    ok: np.ndarray
    digests: list[bytes]
    features: np.ndarray | None = None  # every image's features (only when feature cosine is used)
    feature_ok: np.ndarray | None = None
    # Features of the images asked for so far (rows of `_have`), so that a subset of a set (a filter's kept images)
    # or a second set of the same dataset never decodes an image again.
    _feats: np.ndarray | None = None
    _feats_ok: np.ndarray | None = None
    _have: np.ndarray | None = None

    @classmethod
    def of(cls, images: ImageList) -> Scanned:
        hashes, ok, digests = hash_files([images.path(i) for i in range(len(images))])
        return cls(images, hashes, ok, digests)

    def features_of(self, space: FeatureSpace, idx: np.ndarray, cache: Path) -> tuple[np.ndarray, np.ndarray]:
        """Features of the images `idx`; only those not asked for before are extracted (one cached call for them)."""
        if self.features is not None:
            return self.features[idx], self.feature_ok[idx]
        if self._have is None:
            self._feats = np.full((len(self.images), space.dim), np.nan, dtype=np.float32)
            self._feats_ok = np.zeros(len(self.images), dtype=bool)
            self._have = np.zeros(len(self.images), dtype=bool)
        missing = np.asarray(idx, dtype=np.int64)[~self._have[idx]]
        if len(missing):
            f, ok = space([self.images.path(int(i)) for i in missing], [self.digests[int(i)] for i in missing], cache)
            self._feats[missing], self._feats_ok[missing], self._have[missing] = f, ok, True
        return self._feats[idx], self._feats_ok[idx]

    def all_features(self, space: FeatureSpace, cache: Path) -> None:
        self.features, self.feature_ok = space([self.images.path(i) for i in range(len(self.images))], self.digests,
                                               cache)

    def describe(self, i: int, role: str) -> str:
        """Caption of a thumbnail: role, class name and file."""
        return f"{role} · {self.images.names[self.images.labels[i]]} · {self.images.paths[i]}"


def capped(ok: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Indices of the readable images: all of them, or a seeded sample of `cap` when there are more."""
    idx = np.flatnonzero(ok)
    if cap and len(idx) > cap:
        idx = np.sort(np.random.default_rng(seed).choice(idx, cap, replace=False))
    return idx


def real_splits(runs: list[Run], dataset: str) -> tuple[ImageList, ImageList] | None:
    """The real train and test lists of a dataset, located through any finished run's config."""
    for r in runs:
        d = r.config.get("data", {})
        if d.get("name") != dataset:
            continue
        try:
            data = from_dict(DataConfig, d)
            return tuple(load_data(data, s, download=False) for s in ("train", "test"))
        except SynthTLError:
            return None
    return None


def synthetic_list(g: GenSet, rows: list[dict]) -> ImageList:
    """The finished images of a generated set (`rows`: its completed manifest rows)."""
    names = sorted({(r["class_index"], r["class_name"]) for r in rows})
    classes = tuple(n for _, n in names)
    index = {c: i for i, (c, _) in enumerate(names)}
    return ImageList(g.folder, tuple(r["path"] for r in rows), tuple(index[r["class_index"]] for r in rows), classes,
                     classes, name=f"synthetic/{g.id}")
