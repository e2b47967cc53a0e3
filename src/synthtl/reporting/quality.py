"""Synthetic-set quality (FID, KID, precision/recall, CLIP score) and leakage (near-duplicates of test images)."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from synthtl.config import DataConfig, ReportConfig, from_dict
from synthtl.data.datasets import load_data
from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb
from synthtl.data.loader import ImageDataset, eval_loader
from synthtl.data.synthetic import completed_rows
from synthtl.data.transforms import eval_transform
from synthtl.errors import BadImageError, SynthTLError
from synthtl.metrics.distances import fid, kid, precision_recall
from synthtl.metrics.leakage import near_duplicates, phash
from synthtl.reporting.collect import GenSet, Run
from synthtl.reporting.tables import Table


class FeatureSpace:
    """A frozen backbone producing pooled features (timm, num_classes=0), with the preprocessing of its weights."""

    def __init__(self, cfg: ReportConfig, device: torch.device):
        import timm

        from synthtl.models import WeightsError, resolve

        self.warning = ""
        self.random = not cfg.features_pretrained
        last_err = None
        for name in (cfg.features, cfg.features_fallback):
            lib, arch = resolve(name)
            try:
                if lib != "timm":
                    raise SynthTLError(f"feature model {name!r}: use a timm model")
                self.model = timm.create_model(arch, pretrained=cfg.features_pretrained, num_classes=0)
                self.name = name
                break
            except (SynthTLError, WeightsError, OSError, RuntimeError, ValueError) as e:
                last_err = e
                self.warning = f"{name} weights unavailable ({type(e).__name__}); "
        else:
            lib, arch = resolve(cfg.features_fallback)
            self.model = timm.create_model(arch, pretrained=False, num_classes=0)
            self.name = f"{cfg.features_fallback} (random weights)"
            self.random = True
            self.warning += (f"fell back to RANDOM weights ({last_err}): the distances below are meaningless; set "
                             "report.features to a model whose weights are cached")
        if not cfg.features_pretrained:
            self.warning = ("random-weight features (report.features_pretrained=false): the distances check the "
                            "plumbing only")
            self.name += " (random weights)"
        self.model.eval().to(device)
        self.device = device
        dc = timm.data.resolve_model_data_config(self.model)
        if cfg.features_img_size:
            dc["input_size"] = (3, cfg.features_img_size, cfg.features_img_size)
        self.transform = eval_transform(dc)

    @torch.no_grad()
    def __call__(self, images: ImageList, cache: Path) -> np.ndarray:
        h = hashlib.sha1(self.name.encode())
        for p in images.paths:
            h.update(str(images.root / p).encode())
        path = cache / f"features-{h.hexdigest()[:16]}.npy"
        if path.is_file():
            return np.load(path)
        loader = eval_loader(ImageDataset(images, self.transform, on_bad="skip"), 64, 0)
        feats = [self.model(x.to(self.device)).float().cpu().numpy() for x, _, _ in loader if len(x)]
        out = np.concatenate(feats) if feats else np.zeros((0, 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
        return out


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


def _subsample(images: ImageList, n: int, seed: int = 0) -> ImageList:
    if len(images) <= n:
        return images
    idx = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return images.subset(sorted(idx.tolist()))


def synthetic_list(g: GenSet, rows: list[dict]) -> ImageList:
    """The finished images of a generated set (`rows`: its completed manifest rows)."""
    names = sorted({(r["class_index"], r["class_name"]) for r in rows})
    classes = tuple(n for _, n in names)
    index = {c: i for i, (c, _) in enumerate(names)}
    return ImageList(g.folder, tuple(r["path"] for r in rows), tuple(index[r["class_index"]] for r in rows), classes,
                     classes, name=f"synthetic/{g.id}")


def _phashes(images: ImageList) -> list[int]:
    out = []
    for i in range(len(images)):
        try:
            out.append(phash(load_rgb(images.path(i))))
        except BadImageError:
            out.append(0)
    return out


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


def quality(runs: list[Run], gensets: list[GenSet], cfg: ReportConfig, cache: Path) -> tuple[Table, Table, list, str]:
    """(quality table, leakage table, leakage examples [(synthetic path, test path, info)], feature-space note)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    space = FeatureSpace(cfg, device)
    q_rows, q_raw, l_rows, l_raw, examples = [], [], [], [], []
    real_cache: dict[str, tuple] = {}
    for g in gensets:
        dataset = g.labels.get("dataset") or next((r.labels["dataset"] for r in runs if (r.config.get("synthetic") or
                                                   {}).get("path") and Path(r.config["synthetic"]["path"]).name ==
                                                   g.id), None)
        if dataset not in real_cache:
            real_cache[dataset] = real_splits(runs, dataset) if dataset else None
        splits = real_cache[dataset]
        rows = {r["path"]: r for r in completed_rows(g.folder)}
        syn = _subsample(synthetic_list(g, list(rows.values())), cfg.max_images)
        label = f"{dataset} / {g.labels.get('prompt')} / guidance {g.identity.get('guidance')}"
        if splits is None or not len(syn):
            q_rows.append([label, str(len(syn)), "–", "–", "–", "–", "–"])
            continue
        train, test = (_subsample(s, cfg.max_images) for s in splits)
        f_real, f_syn = space(train, cache), space(syn, cache)
        kid_m, kid_s = kid(f_real, f_syn, cfg.kid_subsets, cfg.kid_subset_size)
        prec, rec = precision_recall(f_real, f_syn, cfg.pr_k)
        fd = fid(f_real, f_syn) if min(len(f_real), len(f_syn)) > 1 else float("nan")
        clip = _clip_score(cfg, syn, [rows[p]["prompt"] for p in syn.paths], device)
        q_rows.append([label, str(len(syn)), f"{fd:.2f}", f"{kid_m:.4f} ± {kid_s:.4f}", f"{prec:.3f}", f"{rec:.3f}",
                       f"{clip:.2f}" if clip is not None else "n/a"])
        q_raw.append({"set": g.id, "dataset": dataset, "prompt": g.labels.get("prompt"),
                      "guidance": g.identity.get("guidance"), "images": len(syn), "fid": fd, "kid": kid_m,
                      "kid_std": kid_s, "precision": prec, "recall": rec, "clip_score": clip})
        f_test = space(test, cache)
        # Random-weight features make every pair look alike: then only the perceptual hash is used.
        fs, ft = (None, None) if space.random else (f_syn, f_test)
        pairs = near_duplicates(_phashes(syn), _phashes(test), fs, ft, cfg.leak_hash_bits, cfg.leak_cosine)
        l_rows.append([label, str(len(syn)), str(len(test)), str(len(pairs))])
        l_raw.append({"set": g.id, "dataset": dataset, "synthetic_checked": len(syn), "test_checked": len(test),
                      "near_duplicates": len(pairs)})
        for p in pairs[: cfg.leak_max_listed]:
            examples.append((syn.path(p["synthetic"]), test.path(p["test"]), {**p, "set": label}))
    note = f"feature space: {space.name}" + (f" — {space.warning}" if space.warning else "")
    q = Table("quality", "Synthetic-set quality against the real train split",
              ["set", "images", "FID ↓", "KID ↓", "precision ↑", "recall ↑", "CLIP score ↑"], q_rows, q_raw,
              f"{note}; at most {cfg.max_images} images per set (seeded subsample); precision/recall k={cfg.pr_k}")
    leak = Table("leakage", "Leakage: near-duplicates between synthetic images and the real test split",
                 ["set", "synthetic checked", "test checked", "near-duplicate pairs"], l_rows, l_raw,
                 f"pairs within {cfg.leak_hash_bits} of 64 perceptual-hash bits" + (
                     " (feature cosine not used: random-weight features)" if space.random else
                     f" or with feature cosine ≥ {cfg.leak_cosine} ({space.name})"))
    return q, leak, examples, note
