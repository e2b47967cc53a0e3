"""A forecast shown: two tables (`reporting.render`: the report renders them, the console prints them) and one figure
per fitted setting: measured points (mean ± std over seeds), the fitted curve, its band and the recommended volume."""

from __future__ import annotations

import re
from pathlib import Path

from synthtl.reporting.plots import plt, save
from synthtl.reporting.render import Col, Table, dash, to_text


def _interval(v, lo, hi) -> str:
    return "–" if v is None else f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _plateau(p: dict) -> str:
    if p.get("volume") is None:
        return p.get("refusal") or p.get("note") or "–"
    return f"{p['volume']}/class (95%: {p['volume_lo']:.0f} to {p['volume_hi']:.0f})"


def _best(b: dict, unit: str) -> str:
    if b.get("volume") is None:
        return b.get("note") or "–"
    return (f"{b['volume']:.0f}/class: {b['gain']:+.2f} pt for {b['hours']:.3g} {unit}-h of one run "
            f"({b['per_hour']:+.3g} pt per {unit}-h)")


def predictions_table(records: list[dict]) -> Table:
    """One row per setting and asked volume; a setting refused as a whole is one row with its refusal."""
    rows = [{"setting": r["label"], **p, "unit": r["unit"], "note": p.get("refusal") or r["refusal"]} for r in records
            for p in r.get("predictions") or [{"volume": None, "top1": None, "gain": None, "hours": None}]]
    return Table("forecast", "Forecast: predicted test top-1 at larger volumes", [
        Col("setting", "setting"), Col("per class", "volume", dash("{:g}")),
        Col("test top-1 % [95%]", ("top1", "top1_lo", "top1_hi"),
            lambda v, lo, hi: "–" if v is None else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"),
        Col("gain over vanilla, pt [95%]", ("gain", "gain_lo", "gain_hi"), _interval),
        Col("hours of one run (generation + fine-tuning)", ("hours", "unit"),
            lambda h, unit: "–" if h is None else f"{h:.3g} {unit}-h"),
        Col("note", "note", lambda v: v or "")], rows,
        note="Law a - b*(V + V0)^-c fitted per setting; 95% intervals: bootstrap over seeds (docs/method.md §10).")


def answers_table(records: list[dict]) -> Table:
    rows = []
    for r in records:
        law, p, b = r.get("law") or {}, r.get("plateau") or {}, r.get("best_per_hour") or {}
        rows.append({"setting": r["label"], "measured": " ".join(f"{m['volume']:g}x{m['n']}" for m in r["measured"]),
                     **{k: law.get(k) for k in ("a", "b", "c", "v0")},
                     **{f"plateau_{k}": p.get(k) for k in ("gain", "gain_lo", "gain_hi", "volume")},
                     "best_volume": b.get("volume"), "refusal": r["refusal"], "_plateau": _plateau(p),
                     "_best": _best(b, r["unit"])})
    tol = next((r["plateau"]["tol"] for r in records if r.get("plateau")), 0.5)
    return Table("forecast_answers", "Forecast: how much to generate", [
        Col("setting", "setting"), Col("measured (per class x seeds)", "measured"),
        Col("law", ("a", "b", "c", "v0"), lambda a, b, c, v0: "–" if a is None else
            f"a={a:.2f} b={b:.3g} c={c:.2f} V0={v0:.0f}"),
        Col("plateau gain, pt [95%]", ("plateau_gain", "plateau_gain_lo", "plateau_gain_hi"), _interval),
        Col(f"smallest volume within {tol:g} pt of the plateau", "_plateau"), Col("best gain per hour", "_best"),
        Col("note", "refusal", lambda v: v or "")], rows)


def console_text(records: list[dict]) -> str:
    """The forecast for the console: the predictions as a table, then each setting's answers."""
    t = predictions_table(records)
    lines = [t.title, t.note, "", to_text(t), ""]
    answers = answers_table(records)
    for row in answers.rows:
        shown = zip(answers.columns[1:], row[1:], strict=True)
        lines += [row[0]] + [f"  {h}: {c}" for h, c in shown if c not in ("", "–")]
    if any(r["plumbing_only"] for r in records):
        lines.append("\nThis study's classifiers have random weights: its numbers prove the plumbing only.")
    return "\n".join(lines)


def forecast_figure(record: dict, folder: Path) -> Path | None:
    """Test top-1 against volume for one fitted setting, saved as <folder>/<setting>.png (None for a refused one)."""
    if record["refusal"]:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    m, c = record["measured"], record["curve"]
    ax.fill_between(c["volume"], c["lo"], c["hi"], color="tab:blue", alpha=0.2, label="95% band (bootstrap over seeds)")
    ax.plot(c["volume"], c["top1"], color="tab:blue", label=f"fit: {record['law']['formula']}")
    ax.errorbar([x["volume"] for x in m], [x["mean"] for x in m], yerr=[x["std"] for x in m], fmt="o",
                color="black", capsize=3, label="measured (mean ± std over seeds)", zorder=3)
    if shown := [p for p in record["predictions"] if not p["refusal"]]:
        ax.errorbar([p["volume"] for p in shown], [p["top1"] for p in shown], fmt="D", color="tab:orange", capsize=3,
                    yerr=[[p["top1"] - p["top1_lo"] for p in shown], [p["top1_hi"] - p["top1"] for p in shown]],
                    label="predicted at the asked volumes")
    p, b = record["plateau"], record["best_per_hour"]
    v, what = (p["volume"], f"within {p['tol']:g} pt of the plateau") if p["volume"] else (b["volume"], "gain per hour")
    if v:
        ax.axvline(v, color="tab:green", ls="--", label=f"{what}: {v:g}/class")
    ax.set(title=record["label"], xlabel="synthetic images per class (0 = vanilla)", ylabel="test top-1 (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return save(fig, folder / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', record['label'])}.png")
