"""Synthetic-set quality (FID, KID, precision/recall, CLIP score) and the leakage check (near-duplicates of test
images: every synthetic image and every train image against every test image).

Every image of a set is read once: that pass gives its perceptual hash and a digest of its bytes. Features are
cached under the digests, so a regenerated or repaired image never reuses stale features.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from synthtl.config import DataConfig, ReportConfig, from_dict
from synthtl.data.datasets import load_data
from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb, to_rgb
from synthtl.data.synthetic import completed_rows
from synthtl.errors import SynthTLError
from synthtl.files import write_bytes
from synthtl.metrics.distances import fid, kid, precision_recall
from synthtl.metrics.leakage import expected_matches, hash_files, near_duplicates, quiet_pil
from synthtl.reporting.collect import GenSet, Run
from synthtl.reporting.tables import Table

FEATURE_BATCH = 64
# Bumped whenever the preprocessing changes, so cached features of the old preprocessing are never reused.
FEATURE_PROTOCOL = "clean-resize-1"


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
            with np.load(file) as z:
                return z["features"], z["ok"]
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

    @classmethod
    def of(cls, images: ImageList) -> Scanned:
        hashes, ok, digests = hash_files([images.path(i) for i in range(len(images))])
        return cls(images, hashes, ok, digests)

    def features_of(self, space: FeatureSpace, idx: np.ndarray, cache: Path) -> tuple[np.ndarray, np.ndarray]:
        if self.features is not None:
            return self.features[idx], self.feature_ok[idx]
        return space([self.images.path(int(i)) for i in idx], [self.digests[int(i)] for i in idx], cache)

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


def _clip_score(cfg: ReportConfig, images: ImageList, prompts: list[str], device: torch.device) -> float | None:
    if not cfg.clip_model:
        return None
    try:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(cfg.clip_model).eval().to(device)
        proc = CLIPProcessor.from_pretrained(cfg.clip_model)
    except Exception as e:  # weights missing offline, or not a CLIP model
        warnings.warn(f"CLIP score skipped: {cfg.clip_model!r} could not be loaded ({e})", stacklevel=2)
        return None
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), 32):
            batch = [load_rgb(images.path(i)) for i in range(start, min(start + 32, len(images)))]
            inp = proc(text=prompts[start:start + len(batch)], images=batch, return_tensors="pt", padding=True,
                       truncation=True).to(device)
            out = model(**inp)
            i_emb = torch.nn.functional.normalize(out.image_embeds, dim=-1)
            t_emb = torch.nn.functional.normalize(out.text_embeds, dim=-1)
            scores += (100 * (i_emb * t_emb).sum(-1)).clamp(min=0).tolist()
    return float(np.mean(scores)) if scores else None


def distances(space: FeatureSpace, real: Scanned, syn: Scanned, cfg: ReportConfig, cache: Path) -> dict:
    """FID, KID, precision/recall of a synthetic set against the real train images (each capped at max_images)."""
    r_idx, s_idx = capped(real.ok, cfg.max_images, cfg.features_seed), capped(syn.ok, cfg.max_images,
                                                                               cfg.features_seed)
    f_real, ok_r = real.features_of(space, r_idx, cache)
    f_syn, ok_s = syn.features_of(space, s_idx, cache)
    f_real, f_syn = f_real[ok_r], f_syn[ok_s]
    n_real, n_syn = len(f_real), len(f_syn)
    kid_size = min(cfg.kid_subset_size, n_real, n_syn)
    kid_m, kid_s = kid(f_real, f_syn, cfg.kid_subsets, cfg.kid_subset_size, seed=cfg.features_seed)
    prec, rec = precision_recall(f_real, f_syn, cfg.pr_k) if min(n_real, n_syn) > cfg.pr_k else (np.nan, np.nan)
    fd = fid(f_real, f_syn) if min(n_real, n_syn) > 1 else float("nan")
    return {"n_synthetic": n_syn, "n_real": n_real, "dim": space.dim, "fid": fd, "kid": kid_m, "kid_std": kid_s,
            "kid_subset_size": kid_size, "precision": prec, "recall": rec, "synthetic_used": s_idx[ok_s]}


def leakage_row(a: Scanned, test: Scanned, cfg: ReportConfig, use_features: bool) -> tuple[dict, list[dict]]:
    """Every image of `a` against every test image: counts and the closest pairs."""
    fa, fb = (a.features, test.features) if use_features else (None, None)
    a_ok = a.ok & (a.feature_ok if use_features else True)
    b_ok = test.ok & (test.feature_ok if use_features else True)
    n_pairs, n_flagged, pairs = near_duplicates(a.hashes, test.hashes, fa, fb, cfg.leak_hash_bits, cfg.leak_cosine,
                                                cfg.leak_chunk, cfg.leak_max_listed, a_ok, b_ok)
    row = {"checked": int(a_ok.sum()), "images": len(a.images), "test_checked": int(b_ok.sum()),
           "test_images": len(test.images), "unreadable": int((~a_ok).sum() + (~b_ok).sum()),
           "near_duplicate_pairs": n_pairs, "flagged": n_flagged}
    return row, pairs


def source_row(syn: Scanned, train: Scanned, sources: list[str | None], cfg: ReportConfig,
               use_features: bool) -> dict | None:
    """An img2img set's outputs against every real train image (None for a text-to-image set).

    Each output starts from its own source, a real train image: that pair is expected, not a near-duplicate to
    report, so it is left out of the count and counted apart ("own_source_pairs"). The check against the test split
    (`leakage_row`) is the same for every set: an img2img output matching a test image is a leak.
    """
    if not any(sources):
        return None
    where = {p: j for j, p in enumerate(train.images.paths)}
    expected = np.array([where.get(s, -1) if s else -1 for s in sources], dtype=np.int64)
    fa, fb = (syn.features, train.features) if use_features else (None, None)
    a_ok = syn.ok & (syn.feature_ok if use_features else True)
    b_ok = train.ok & (train.feature_ok if use_features else True)
    n_pairs, n_flagged, _ = near_duplicates(syn.hashes, train.hashes, fa, fb, cfg.leak_hash_bits, cfg.leak_cosine,
                                            cfg.leak_chunk, 0, a_ok, b_ok, expected=expected)
    own = expected_matches(syn.hashes, train.hashes, expected, fa, fb, cfg.leak_hash_bits, cfg.leak_cosine, a_ok,
                           b_ok)
    return {"own_source_pairs": int(own.sum()), "other_train_pairs": n_pairs, "other_train_flagged": n_flagged,
            "sources_not_in_train": int((expected < 0).sum())}


@dataclass
class QualityReport:
    quality: Table
    synthetic_leak: Table
    train_leak: Table
    synthetic_examples: list[dict] = field(default_factory=list)
    train_examples: list[dict] = field(default_factory=list)
    note: str = ""


def _example(a: Scanned, a_role: str, test: Scanned, p: dict, label: str) -> dict:
    info = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()
                     if k in ("hash_bits", "cosine"))
    return {"left": a.images.path(p["image"]), "left_caption": a.describe(p["image"], a_role),
            "right": test.images.path(p["test"]), "right_caption": test.describe(p["test"], "test"),
            "caption": f"{label}: {info}"}


def _dataset_of(g: GenSet, runs: list[Run]) -> str | None:
    return g.labels.get("dataset") or next((r.labels["dataset"] for r in runs if (r.config.get("synthetic") or {})
                                            .get("path") and Path(r.config["synthetic"]["path"]).name == g.id), None)


def quality(runs: list[Run], gensets: list[GenSet], cfg: ReportConfig, cache: Path) -> QualityReport:
    """Quality of every generated set, and the leakage check of every set and every real train split."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    space = FeatureSpace(cfg, device)
    use_features = not space.random  # random-weight features make every pair look alike: hashes only
    q_rows, q_raw, s_rows, s_raw, t_rows, t_raw = [], [], [], [], [], []
    syn_examples, train_examples = [], []
    reals: dict[str, tuple[Scanned, Scanned] | None] = {}
    small = []
    for g in gensets:
        dataset = _dataset_of(g, runs)
        if dataset not in reals:
            splits = real_splits(runs, dataset) if dataset else None
            reals[dataset] = tuple(Scanned.of(s) for s in splits) if splits else None
            if reals[dataset] and use_features:
                for s in reals[dataset]:
                    s.all_features(space, cache)
        rows = {r["path"]: r for r in completed_rows(g.folder)}
        syn = Scanned.of(synthetic_list(g, list(rows.values())))
        label = f"{dataset} / {g.labels.get('prompt')} / guidance {g.identity.get('guidance')}"
        if reals[dataset] is None or not len(syn.images):
            q_rows.append([label, str(len(syn.images)), "–", str(space.dim), "–", "–", "–", "–", "–"])
            continue
        train, test = reals[dataset]
        if use_features:
            syn.all_features(space, cache)
        d = distances(space, train, syn, cfg, cache)
        used = d.pop("synthetic_used")
        clip = _clip_score(cfg, syn.images.subset(used.tolist()), [rows[syn.images.paths[i]]["prompt"] for i in used],
                           device)
        if min(d["n_real"], d["n_synthetic"]) < space.dim:
            small.append(label)
        q_rows.append([label, str(d["n_synthetic"]), str(d["n_real"]), str(d["dim"]), f"{d['fid']:.2f}",
                       f"{d['kid']:.4f} ± {d['kid_std']:.4f}", f"{d['precision']:.3f}", f"{d['recall']:.3f}",
                       f"{clip:.2f}" if clip is not None else "n/a"])
        q_raw.append({"set": g.id, "dataset": dataset, "prompt": g.labels.get("prompt"),
                      "guidance": g.identity.get("guidance"), **d, "max_images": cfg.max_images,
                      "kid_subsets": cfg.kid_subsets, "clip_score": clip})
        row, pairs = leakage_row(syn, test, cfg, use_features)
        src = source_row(syn, train, [rows[p].get("source") for p in syn.images.paths], cfg, use_features)
        s_rows.append([label, str(row["checked"]), str(row["test_checked"]), str(row["unreadable"]),
                       str(row["near_duplicate_pairs"]), str(row["flagged"]),
                       str(src["own_source_pairs"]) if src else "–", str(src["other_train_pairs"]) if src else "–"])
        s_raw.append({"set": g.id, "dataset": dataset, "synthetic_images": row["images"],
                      "synthetic_checked": row["checked"], "test_images": row["test_images"],
                      "test_checked": row["test_checked"], "unreadable": row["unreadable"],
                      "near_duplicates": row["near_duplicate_pairs"], "synthetic_flagged": row["flagged"],
                      "img2img": src is not None, **(src or {})})
        syn_examples += [_example(syn, "synthetic", test, p, label) for p in pairs]
    for dataset, pair in sorted(reals.items(), key=lambda kv: str(kv[0])):
        if pair is None:
            continue
        train, test = pair
        row, pairs = leakage_row(train, test, cfg, use_features)
        t_rows.append([dataset, str(row["checked"]), str(row["test_checked"]), str(row["unreadable"]),
                       str(row["near_duplicate_pairs"]), str(row["flagged"])])
        t_raw.append({"dataset": dataset, "train_images": row["images"], "train_checked": row["checked"],
                      "test_images": row["test_images"], "test_checked": row["test_checked"],
                      "unreadable": row["unreadable"], "near_duplicates": row["near_duplicate_pairs"],
                      "train_flagged": row["flagged"]})
        train_examples += [_example(train, "train", test, p, dataset) for p in pairs]
    note = f"feature space: {space.name}, {space.dim} dimensions" + (f" — {space.warning}" if space.warning else "")
    q_note = (f"{note}; images resized the clean-fid way (PIL bicubic per channel to {space.size} px, no crop); "
              f"n = every readable image of a set, at most report.max_images = {cfg.max_images} (a seeded sample "
              f"above it); KID: {cfg.kid_subsets} subsets of {cfg.kid_subset_size} images (or of the smaller set's n), "
              f"mean ± std; precision/recall k={cfg.pr_k}")
    if small:
        msg = (f"n below the feature dimension ({space.dim}) for {len(small)} set(s) ({'; '.join(small)}): the "
               "covariances are singular, so FID is biased upward and only comparable between sets of equal n")
        warnings.warn(msg, stacklevel=2)
        q_note += f". WARNING: {msg}"
    how = f"every image against every test image; pairs within {cfg.leak_hash_bits} of 64 perceptual-hash bits" + (
        f" or with feature cosine ≥ {cfg.leak_cosine} ({space.name})" if use_features else
        " (feature cosine not used: random-weight features)")
    q = Table("quality", "Synthetic-set quality against the real train split",
              ["set", "n synthetic", "n real (train)", "feature dim", "FID ↓", "KID ↓", "precision ↑", "recall ↑",
               "CLIP score ↑"], q_rows, q_raw, q_note)
    s_how = (how + "; img2img sets (ours): every output is also compared with every real train image, and the pair "
             "of an output and its own source (a train image it started from) is expected, so it is excluded and "
             "counted in 'own-source pairs (expected, excluded)'; the test check is the same for every set: an "
             "img2img output matching a test image is a leak")
    s_leak = Table("leakage", "Leakage: near-duplicates between synthetic images and the real test split",
                   ["set", "synthetic checked", "test checked", "unreadable", "near-duplicate pairs",
                    "synthetic images flagged", "own-source pairs (expected, excluded)",
                    "near-duplicates of other train images"], s_rows, s_raw, s_how)
    t_leak = Table("leakage_train", "Leakage: near-duplicates between the real train and test splits",
                   ["dataset", "train checked", "test checked", "unreadable", "near-duplicate pairs",
                    "train images flagged"], t_rows, t_raw, how)
    return QualityReport(q, s_leak, t_leak, syn_examples, train_examples, note)
