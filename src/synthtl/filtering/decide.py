"""Which scored images a filter keeps: the k best of each class, a fraction of each class, or all above a threshold."""

from __future__ import annotations

import math

from synthtl.config import KeepConfig


def decide(scores: list[dict], keep: KeepConfig) -> dict[str, dict]:
    """id -> {"rank", "kept"} for every score row ("id", "class_index", "index", "score"), under `keep.rule`.

    Rows are ranked inside their class by score, highest first; equal scores are broken by the image index in the
    class (the lower index ranks first), so decisions never depend on the order rows were scored in. top_k and
    fraction keep ceil-rounded quotas, so no class is emptied by rounding.
    """
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
