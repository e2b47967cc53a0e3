"""Which scored images a filter keeps: the k best of each class, a fraction of each class, or all above a threshold."""

from __future__ import annotations

import math

from synthtl.config import KeepConfig


def per_class_quota(rule: str, keep: KeepConfig, n: int) -> int:
    """How many of a class's n images the top_k or fraction rule keeps (ceil, so no class is emptied by rounding)."""
    if rule == "top_k":
        return min(keep.top_k, n)
    return min(n, math.ceil(keep.fraction * n - 1e-9))  # the epsilon: 0.3 * 10 is 3.0000000000000004, not 4


def decide(scores: list[dict], keep: KeepConfig) -> dict[str, dict]:
    """id -> {"rank", "kept"} for every scored row.

    Rows are ranked inside their class by score, highest first; equal scores are broken by the image index in the
    class (the lower index ranks first), so decisions never depend on the order rows were scored in.

    Args:
        scores: Score rows with "id", "class_index", "index" and "score".
        keep: Exactly one rule set (`keep.rule`).
    """
    rule = keep.rule
    by_class: dict[int, list[dict]] = {}
    for r in scores:
        by_class.setdefault(r["class_index"], []).append(r)
    out = {}
    for rows in by_class.values():
        rows = sorted(rows, key=lambda r: (-r["score"], r["index"]))
        quota = per_class_quota(rule, keep, len(rows)) if rule in ("top_k", "fraction") else None
        for rank, r in enumerate(rows, start=1):
            kept = rank <= quota if quota is not None else r["score"] > keep.threshold
            out[r["id"]] = {"rank": rank, "kept": kept}
    return out
