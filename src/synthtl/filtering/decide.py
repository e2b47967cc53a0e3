"""Which scored images a filter keeps: the k best of each class, a fraction of each class, or all above a threshold."""

from __future__ import annotations

import math

from synthtl.config import KeepConfig


def decide(scores: list[dict], keep: KeepConfig) -> dict[str, dict]:
    """id -> {"rank", "kept"} per score row under `keep.rule`. Rows rank in their class by score, ties by lower
    index (never by scoring order); top_k and fraction quotas are ceil-rounded, so rounding never empties a class."""
    by_class: dict[int, list[dict]] = {}
    for r in scores:
        by_class.setdefault(r["class_index"], []).append(r)
    out = {}
    for rows in by_class.values():
        rows, n = sorted(rows, key=lambda r: (-r["score"], r["index"])), len(rows)
        quota = {"top_k": min(keep.top_k, n),  # the epsilon: 0.3 * 10 is 3.0000000000000004, which is 3, not 4
                 "fraction": min(n, math.ceil(keep.fraction * n - 1e-9))}.get(keep.rule)  # threshold: None
        for rank, r in enumerate(rows, start=1):
            out[r["id"]] = {"rank": rank, "kept": rank <= quota if quota is not None else r["score"] > keep.threshold}
    return out
