"""Peers' published numbers beside ours (ours, beyond the paper), copied from their papers, never re-run: the shipped
`published.yaml` (plus `report.published_file`) holds one entry per (paper, table, dataset, method) with its source.
Only differences to a same-protocol baseline compare, and even they depend on backbone, resolution and real data."""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from synthtl.errors import ConfigError
from synthtl.reporting.collect import Run
from synthtl.reporting.render import Col, Table, dash
from synthtl.reporting.tables import by_seed, fmt_delta, fmt_mean_std, mean_std, paired, settings
from synthtl.strategies import rank, takes_synthetic

# Our prompt styles and the families of methods the peers' rows name (their `family` field).
FAMILIES = {"text-to-image": "text prompts only", "textual-inversion": "learned style or class tokens",
            "lora": "a LoRA on the generator", "img2img": "real-guided img2img from noised real images",
            "filter": "filtered synthetic images", "other": "another generation method (see the method name)"}
PROMPT_FAMILY = {"single": "text-to-image", "imagenet80": "text-to-image", "custom": "text-to-image",
                 "dsi": "textual-inversion", "per_class": "textual-inversion", "lora": "lora",
                 "lora_per_class": "lora", "img2img": "img2img"}


@dataclass(frozen=True)
class Published:
    """One published number: a peer's top-1 (%) on one dataset, with its baseline and where it was read."""
    peer: str
    title: str
    venue: str
    source: str  # the address (paper page, table) the number was read from
    table: str
    dataset: str
    method: str
    family: str
    value: float
    protocol: str  # classifier, its pretraining and tuning, resolution, synthetic images used, generator
    real: str  # real training images: "full" (the train split), "<k>-shot" or "none" (zero-shot)
    arxiv: str = ""
    baseline: float | None = None  # their real-only number in the same table
    baseline_method: str = ""
    excerpt: str = ""  # the words the number was read from, for checking
    note: str = ""


KINDS = {f.name: float if "float" in f.type else str for f in fields(Published)}  # each key of an entry
REQUIRED = [f.name for f in fields(Published) if f.default is MISSING]


def _real_order(real: str) -> tuple:  # full train split first, then k-shot by k, then zero-shot
    return (0, 0) if real == "full" else (2, 0) if real == "none" else (1, int(real.split("-")[0]))


def builtin_file() -> Path:
    return Path(str(resources.files("synthtl.reporting") / "published.yaml"))


def _entry(raw, where: str) -> Published:
    from synthtl.data.datasets import DATASETS

    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each entry must be a mapping of {sorted(REQUIRED)}; fix the file")
    if unknown := sorted(set(raw) - set(KINDS), key=str):
        raise ConfigError(f"{where}: unknown key(s) {unknown}; the keys are {sorted(KINDS)}")
    if missing := sorted(k for k in REQUIRED if raw.get(k) in (None, "")):
        raise ConfigError(f"{where}: missing {missing}; every published number needs its source, table and protocol")
    values = {}
    for key, kind in KINDS.items():
        if (v := raw.get(key)) is None:
            continue
        if kind is float and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100):  # NaN too
            raise ConfigError(f"{where}: {key}={v!r} must be a top-1 accuracy in percent (0-100)")
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ConfigError(f"{where}: {key} must be text, not {type(v).__name__}; fix the entry")
        values[key] = float(v) if kind is float else str(v).strip()
    for key, ok, fix in (
            ("dataset", values["dataset"] in DATASETS.names(), f"is not one of {DATASETS.names()}"),
            ("real", re.fullmatch(r"full|none|[1-9][0-9]*-shot", values["real"]),
             "must be 'full', 'none' (zero-shot) or '<k>-shot'"),
            ("family", values["family"] in FAMILIES, f"is not one of {sorted(FAMILIES)}"),
            ("source", re.fullmatch(r"https?://[^/\s]+\.[^/\s]+(/\S*)?", values["source"]),
             "must be the address the number was read from")):
        if not ok:
            raise ConfigError(f"{where}: {key}={values[key]!r} {fix}")
    return Published(**values)


def load_published(path: str | Path | None = None) -> list[Published]:
    """A published-numbers file's entries (None: the shipped one), checked: any problem is one ConfigError line."""
    path = Path(path) if path else builtin_file()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"report.published_file={str(path)!r} does not exist; give a YAML file of published "
                          "numbers, or published_file=''") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it as YAML ({type(e).__name__}); fix the file") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a mapping with a list under 'entries'; fix the file")
    out, seen = [], {}
    for i, raw in enumerate(entries):
        e = _entry(raw, f"{path}, entry {i + 1}")
        key = (e.peer, e.table, e.dataset, e.method, e.real, e.protocol)
        if key in seen:
            raise ConfigError(f"{path}, entry {i + 1}: repeats entry {seen[key]} (same peer, table, dataset, method, "
                              "real images and protocol); delete one")
        seen[key] = i + 1
        out.append(e)
    return out


def _our_records(runs: list[Run], dataset: str, n_boot: int) -> list[dict]:
    """Our number for every synthetic-data setting and strategy of the study on `dataset`."""
    out = []
    for (model, shots, volume, guidance, prompt), members in settings(runs):
        members = [r for r in members if r.labels["dataset"] == dataset]
        base, filtered, _ = (prompt or "").partition(", filter ")
        family = (PROMPT_FAMILY.get(base, "other") if base else "–") + (" + filter" if filtered else "")
        weights = "pretrained" if all(r.config.get("model", {}).get("pretrained", True) for r in members) \
            else "random init"
        protocol = f"{model} ({weights}), fully fine-tuned" + (
            f", {volume}/class synthetic, guidance {guidance:g}" if volume is not None else "")
        vanilla = by_seed(members, "vanilla")
        vm, vsd, vn = mean_std(list(vanilla.values()))
        for s in sorted({r.labels["strategy"] for r in members if takes_synthetic(r.labels["strategy"])}, key=rank):
            ours = by_seed(members, s)
            m, sd, n = mean_std(list(ours.values()))
            p = paired(ours, vanilla, n_boot) if vanilla else {}
            out.append({"dataset": dataset, "who": "ours", "method": f"{s}, {prompt}" if prompt else s,
                        "family": family, "real": f"{shots}-shot" if shots else "full", "protocol": protocol,
                        "baseline_method": "vanilla", "baseline": vm, "value": m, "std": sd, "n": n,
                        "delta": p.get("mean_diff"), "source": "this study", "_baseline_std": vsd,
                        "_baseline_n": vn, "_p": p.get("p")})
    return out


def _peer_record(e: Published) -> dict:
    return {"dataset": e.dataset, "who": e.peer, "method": e.method, "family": e.family, "real": e.real,
            "protocol": e.protocol, "baseline_method": e.baseline_method, "baseline": e.baseline, "value": e.value,
            "std": None, "n": None, "delta": e.value - e.baseline if e.baseline is not None else None,
            "source": e.source, "table": e.table, "title": e.title, "venue": e.venue, "arxiv": e.arxiv}


def _baseline_name(who: str, method: str, value: float | None) -> str:
    if who == "ours":
        return "–" if math.isnan(value) else "our vanilla"
    return method or ("their baseline" if value is not None else "–")


def _top1(value: float | None, std: float | None, n: int | None) -> str:
    """Ours: mean ± std over seeds; a peer's: its number."""
    return dash("{:.2f}")(value) if n is None else fmt_mean_std(value, std, n)


COLUMNS = [
    Col("dataset", "dataset"), Col("who", ("who", "venue"), lambda w, v: w if v is None else f"{w} ({v})"),
    Col("method", "method"), Col("family", "family"),
    Col("real images", "real", lambda real: {"full": "full train split", "none": "none (zero-shot)"}.get(real, real)),
    Col("protocol", "protocol"), Col("baseline", ("who", "baseline_method", "baseline"), _baseline_name),
    Col("baseline top-1", ("baseline", "_baseline_std", "_baseline_n"), _top1),
    Col("with synthetic", ("value", "std", "n"), _top1), Col("difference", ("delta", "_p"), fmt_delta),
    Col("source", ("who", "source", "table"), lambda who, source, table: f"{source} ({table})" if who != "ours"
        else "this study (mean ± std over seeds; difference paired by seed)")]


def published_table(runs: list[Run], entries: list[Published], n_boot: int = 10000) -> Table | None:
    """Ours and the peers' numbers per dataset (None if no peer reports one), grouped by the real images the classifier
    trains on (full split, k-shot, none), ours first: only rows of one group share a protocol."""
    raw = []
    for ds in sorted({r.labels["dataset"] for r in runs}):
        if theirs := [e for e in entries if e.dataset == ds]:
            found = [(0, i, r) for i, r in enumerate(_our_records(runs, ds, n_boot))]
            found += [(1, (e.peer, e.method, i), _peer_record(e)) for i, e in enumerate(theirs)]
            raw += [r for *_, r in sorted(found, key=lambda f: (_real_order(f[2]["real"]), f[0], str(f[1])))]
    if not raw:
        return None
    return Table("published", "Peers' published numbers beside ours (top-1 %)", COLUMNS, raw,
                 "peers' rows are copied from their papers (source and table given), under their own protocols, "
                 "never re-run here. Rows are grouped by the real images the classifier trains on (full split, "
                 "k-shot, none): compare only within a group, and only differences to each row's own baseline "
                 "(which may itself use augmentation or no training at all), never absolute accuracies")
