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
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from synthtl.config import DataConfig, ReportConfig, from_dict
from synthtl.data.datasets import load_data
from synthtl.data.genset import completed_rows
from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb, to_rgb
from synthtl.errors import SynthTLError
from synthtl.files import write_bytes
from synthtl.metrics.distances import fid, kid, precision_recall
from synthtl.metrics.leakage import expected_matches, hash_files, near_duplicates, quiet_pil
from synthtl.reporting.collect import GenSet, Run
from synthtl.reporting.filters import FilterRun, collect_filters
from synthtl.reporting.tables import Table

FEATURE_BATCH = 64
# Bumped whenever the preprocessing changes, so cached features of the old preprocessing are never reused.
FEATURE_PROTOCOL = "clean-resize-1"
# Random subsets of a set, each with a filter's kept counts per class, behind a kept subset's "FID, random same n".
SAME_N_DRAWS = 5


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


def _clip_scores(cfg: ReportConfig, images: ImageList, prompts: list[str], idx: np.ndarray,
                 device: torch.device) -> dict[int, float] | None:
    """CLIP score of each image `idx` with its prompt (each image read once; a set's rows average their own)."""
    if not cfg.clip_model or not len(idx):
        return None
    try:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(cfg.clip_model).eval().to(device)
        proc = CLIPProcessor.from_pretrained(cfg.clip_model)
    except Exception as e:  # weights missing offline, or not a CLIP model
        warnings.warn(f"CLIP score skipped: {cfg.clip_model!r} could not be loaded ({e})", stacklevel=2)
        return None
    scores = {}
    with torch.no_grad():
        for start in range(0, len(idx), 32):
            batch = [int(i) for i in idx[start:start + 32]]
            inp = proc(text=[prompts[i] for i in batch], images=[load_rgb(images.path(i)) for i in batch],
                       return_tensors="pt", padding=True, truncation=True).to(device)
            out = model(**inp)
            i_emb = torch.nn.functional.normalize(out.image_embeds, dim=-1)
            t_emb = torch.nn.functional.normalize(out.text_embeds, dim=-1)
            scores.update(zip(batch, (100 * (i_emb * t_emb).sum(-1)).clamp(min=0).tolist(), strict=True))
    return scores


def _mean_clip(scores: dict[int, float] | None, used: np.ndarray) -> float | None:
    return float(np.mean([scores[int(i)] for i in used])) if scores is not None and len(used) else None


def distances(space: FeatureSpace, real: Scanned, syn: Scanned, cfg: ReportConfig, cache: Path,
              among: np.ndarray | None = None) -> dict:
    """FID, KID, precision/recall of a synthetic set against the real train images (each capped at max_images).

    Args:
        among: Indices of the synthetic images to measure (a filter's kept images); None = all of them.
    """
    syn_ok = syn.ok
    if among is not None:
        syn_ok = np.zeros_like(syn.ok)
        syn_ok[among] = syn.ok[among]
    r_idx, s_idx = capped(real.ok, cfg.max_images, cfg.features_seed), capped(syn_ok, cfg.max_images,
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


def _by_set(found: list[FilterRun]) -> dict[Path, list[FilterRun]]:
    """The finished filters of each set, by the set's folder."""
    by_set: dict[Path, list[FilterRun]] = {}
    for f in found:
        by_set.setdefault(Path(f.set_folder), []).append(f)
    return by_set


def filter_label(set_label: str, f: FilterRun) -> str:
    """"<set label>, filter <name> (kept n of m)": m = images the filter scored (one decision per manifest row)."""
    return f"{set_label}, filter {f.name} (kept {sum(bool(r['kept']) for r in f.rows)} of {len(f.rows)})"


def kept_indices(syn: Scanned, f: FilterRun) -> tuple[np.ndarray | None, str]:
    """Rows of `syn` (the set's finished images) that the filter kept, or None and why they are not measured."""
    where = {p: i for i, p in enumerate(syn.images.paths)}
    kept = [r["path"] for r in f.rows if r["kept"]]
    lost = [p for p in kept if p not in where]
    if lost:  # images deleted since (validate --repair): never measure a guess
        return None, f"{len(lost)} kept images are not finished images of the set (e.g. {lost[0]}); re-run the filter"
    if not kept:
        return None, "the filter keeps no image"
    return np.array(sorted(where[p] for p in kept), dtype=np.int64), ""


def same_n_fid(space: FeatureSpace, real: Scanned, syn: Scanned, cfg: ReportConfig, cache: Path, kept_used: np.ndarray,
               set_used: np.ndarray, draws: int = SAME_N_DRAWS) -> tuple[float, float]:
    """(mean, std) of FID over `draws` seeded random subsets of the set with as many images of each class as the kept
    subset measured (`kept_used`): the FID that the kept subset's n and class counts alone would give.

    Drawn from the images already measured (the set's and the kept subset's), so no image is read again.
    """
    if len(kept_used) < 2:
        return float("nan"), float("nan")
    r_idx = capped(real.ok, cfg.max_images, cfg.features_seed)
    f_real, ok_r = real.features_of(space, r_idx, cache)
    f_real = f_real[ok_r]
    pool = np.union1d(set_used, kept_used)
    labels = np.asarray(syn.images.labels)
    rng = np.random.default_rng(cfg.features_seed)
    values = []
    for _ in range(draws):
        pick = [rng.choice(pool[labels[pool] == c], int((labels[kept_used] == c).sum()), replace=False)
                for c in np.unique(labels[kept_used])]
        f_syn, _ = syn.features_of(space, np.sort(np.concatenate(pick)), cache)  # readable: drawn from measured ones
        values.append(fid(f_real, f_syn) if min(len(f_real), len(f_syn)) > 1 else float("nan"))
    return float(np.mean(values)), float(np.std(values))


def _metric_cells(d: dict, clip: float | None) -> list[str]:
    return [str(d["n_synthetic"]), str(d["n_real"]), str(d["dim"]), f"{d['fid']:.2f}",
            f"{d['kid']:.4f} ± {d['kid_std']:.4f}", f"{d['precision']:.3f}", f"{d['recall']:.3f}",
            f"{clip:.2f}" if clip is not None else "n/a"]


def measure_filters(space: FeatureSpace, train: Scanned, syn: Scanned, cfg: ReportConfig, cache: Path,
                    set_label: str, filters: list[FilterRun], base: dict) -> tuple[list[tuple], list[list[str]],
                                                                                    list[dict]]:
    """Distances of the kept subset of each filter of a measured set, from the set's features (rows selected).

    Returns:
        ((label, raw record, distances) of each measured subset; rows and raw records of the filters not measured).
    """
    measured, rows, raw = [], [], []
    for f in filters:
        label = filter_label(set_label, f)
        info = {**base, "filter": f.name, "filter_identity": f.summary["filter"], "per_class": f.summary["per_class"],
                "kept": sum(bool(r["kept"]) for r in f.rows), "scored": len(f.rows)}
        idx, why = kept_indices(syn, f)
        if idx is None:
            rows.append([f"{label} — not measured ({why})"] + ["–"] * 9)
            raw.append({**info, "not_measured": why})
        else:
            measured.append((label, info, distances(space, train, syn, cfg, cache, among=idx)))
    return measured, rows, raw


def set_quality(space: FeatureSpace, train: Scanned, syn: Scanned, prompts: list[str], cfg: ReportConfig, cache: Path,
                device: torch.device, label: str, base: dict, filters: list[FilterRun]) -> tuple[list[list[str]],
                                                                                                list[dict], list[str]]:
    """Quality rows of one set against its real train split: the whole set, then each filter's kept subset.

    Returns:
        (table rows, raw records, labels of the rows whose n is below the feature dimension).
    """
    q_rows, q_raw, small = [], [], []
    d = distances(space, train, syn, cfg, cache)
    used = d.pop("synthetic_used")
    measured, f_rows, f_raw = measure_filters(space, train, syn, cfg, cache, label, filters, base)
    # one CLIP pass over every image some row measures: a kept image is scored once, for its set and its filters
    clip = _clip_scores(cfg, syn.images, prompts,
                        np.unique(np.concatenate([used] + [m[2]["synthetic_used"] for m in measured])), device)
    score = _mean_clip(clip, used)
    if min(d["n_real"], d["n_synthetic"]) < space.dim:
        small.append(label)
    q_rows.append([label, *_metric_cells(d, score), "–"])
    q_raw.append({**base, "filter": "", **d, "max_images": cfg.max_images, "kid_subsets": cfg.kid_subsets,
                  "clip_score": score})
    for f_label, info, fd in measured:
        kept_used = fd.pop("synthetic_used")
        same, same_std = same_n_fid(space, train, syn, cfg, cache, kept_used, used)
        f_score = _mean_clip(clip, kept_used)
        if min(fd["n_real"], fd["n_synthetic"]) < space.dim:
            small.append(f_label)
        q_rows.append([f_label, *_metric_cells(fd, f_score), f"{same:.2f} ± {same_std:.2f}"])
        q_raw.append({**info, **fd, "max_images": cfg.max_images, "kid_subsets": cfg.kid_subsets,
                      "clip_score": f_score, "fid_random_same_n": same, "fid_random_same_n_std": same_std,
                      "random_draws": SAME_N_DRAWS})
    return q_rows + f_rows, q_raw + f_raw, small


def quality(runs: list[Run], gensets: list[GenSet], cfg: ReportConfig, cache: Path,
            found_filters: tuple[list[FilterRun], list[str]] | None = None) -> QualityReport:
    """Quality of every generated set (and of each filter's kept subset), and the leakage check of every set and
    every real train split. `found_filters`: `collect_filters(gensets)` when the caller has it already."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    space = FeatureSpace(cfg, device)
    use_features = not space.random  # random-weight features make every pair look alike: hashes only
    q_rows, q_raw, s_rows, s_raw, t_rows, t_raw = [], [], [], [], [], []
    found, filter_problems = found_filters if found_filters is not None else collect_filters(gensets)
    filters = _by_set(found)
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
        label = f"{dataset} / {g.labels.get('prompt')} / guidance {g.settings.get('guidance')}"
        mine = filters.get(Path(g.folder), [])
        base = {"set": g.id, "dataset": dataset, "prompt": g.labels.get("prompt"),
                "guidance": g.settings.get("guidance")}
        if reals[dataset] is None or not len(syn.images):
            q_rows.append([label, str(len(syn.images)), "–", str(space.dim)] + ["–"] * 6)
            q_rows += [[f"{filter_label(label, f)} — not measured (no real train split)"] + ["–"] * 9 for f in mine]
            continue
        train, test = reals[dataset]
        if use_features:
            syn.all_features(space, cache)
        rows_, raw_, small_ = set_quality(space, train, syn, [rows[p]["prompt"] for p in syn.images.paths], cfg,
                                          cache, device, label, base, mine)
        q_rows, q_raw, small = q_rows + rows_, q_raw + raw_, small + small_
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
    if filters or filter_problems:
        q_note += (". Filters (ours): a row '<set>, filter <name> (kept n of m)' measures the images of the filter's "
                   "kept list of its largest volume (<set>/filters/<name>/kept/<V>.json: its rule on the first V "
                   "images of each class), as the set's own row measures the whole set; a run with "
                   "synthetic.filter=<name> and synthetic.per_class=k trains on the kept list of k. Its features are "
                   "the set's (rows selected; no image is read again). FID is biased upward "
                   f"at smaller n, so 'FID, random same n' gives the mean ± std FID of {SAME_N_DRAWS} seeded random "
                   "subsets of the set with the kept subset's n per class: the filter helps where its FID is below "
                   "that, not merely below the set's (a CLIP filter raises the CLIP score by construction)")
    if filter_problems:
        q_note += f". Filters not measured (their files cannot be read): {'; '.join(filter_problems)}"
    if small:
        msg = (f"n below the feature dimension ({space.dim}) for {len(small)} set(s) ({'; '.join(small)}): the "
               "covariances are singular, so FID is biased upward and only comparable between sets of equal n")
        warnings.warn(msg, stacklevel=2)
        q_note += f". WARNING: {msg}"
    how = f"every image against every test image; pairs within {cfg.leak_hash_bits} of 64 perceptual-hash bits" + (
        f" or with feature cosine ≥ {cfg.leak_cosine} ({space.name})" if use_features else
        " (feature cosine not used: random-weight features)")
    columns = ["set", "n synthetic", "n real (train)", "feature dim", "FID ↓", "KID ↓", "precision ↑", "recall ↑",
               "CLIP score ↑", "FID, random same n ↓"]
    if not filters:  # the last column is for filter rows only
        columns, q_rows = columns[:-1], [r[:-1] for r in q_rows]
    q = Table("quality", "Synthetic-set quality against the real train split", columns, q_rows, q_raw, q_note)
    s_how = (how + "; img2img sets (ours): every output is also compared with every real train image, and the pair "
             "of an output and its own source (a train image it started from) is expected, so it is excluded and "
             "counted in 'own-source pairs (expected, excluded)'; the test check is the same for every set: an "
             "img2img output matching a test image is a leak")
    if filters:
        s_how += ("; a filter's kept images are a subset of its set, so their near-duplicates are among the set's "
                  "(not listed again per filter)")
    s_leak = Table("leakage", "Leakage: near-duplicates between synthetic images and the real test split",
                   ["set", "synthetic checked", "test checked", "unreadable", "near-duplicate pairs",
                    "synthetic images flagged", "own-source pairs (expected, excluded)",
                    "near-duplicates of other train images"], s_rows, s_raw, s_how)
    t_leak = Table("leakage_train", "Leakage: near-duplicates between the real train and test splits",
                   ["dataset", "train checked", "test checked", "unreadable", "near-duplicate pairs",
                    "train images flagged"], t_rows, t_raw, how)
    return QualityReport(q, s_leak, t_leak, syn_examples, train_examples, note)
