"""Proof that a change leaves every number alone: the same commands, with the same seeds, on a worktree of a base
commit and on this tree, then every output compared.

    python benchmarks/same_numbers.py --base <commit>        # e.g. the commit before a refactor

Both trees run, from source (PYTHONPATH), offline, on the CPU:
- `synthtl demo` (a study: a DSI style, a single-template and a DSI set, every strategy x 2 seeds, the report);
- a stage-by-stage scenario on the bundled digits: DSI and LoRA styles, a single-template, a DSI, a LoRA and an
  img2img set, a classifier filter, then vanilla and bridged++ on each set and a filtered bridged++ run;
- the same stages on a small folder dataset of seeded noise images (which, unlike digits, img2img accepts): an img2img
  set, per-class LoRA and per-class two-vector DSI styles with a set from each, and bridged++ on the img2img set.

Compared, file by file: the bytes of every generated image and training copy, every learned embedding and LoRA
file, the images each filtered run kept, and each run's test numbers, LEEP, steps and per-epoch metrics (timings
excepted). Runs are matched by what they are (dataset, strategy, seed, prompt style, volume, filter), never by
folder name: identities, and so job ids, are allowed to change. Prints IDENTICAL or each difference; exit status 1
on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Since f7bbffd img2img refuses sources that are perceptual near-copies of test images, which digits has: a tree
# that refuses the scenario's img2img set is compared without it (and without the run on it).
NEAR_COPY = "is a near-copy of the test image"
TIMING = ("seconds", "images_per_s", "wall_s", "gpu_s", "train_s", "finished_at", "session")


def scenario(out: Path) -> list[list[str]]:
    """The stage commands, each as `synthtl` argv; every path is under `out`."""
    data = ["data.name=digits", f"data.cache_dir={out / 'cache'}"]
    style = ["-c", "style/tiny", *data, "data.shots=20", "data.split_seed=0", "progress=false"]
    gen = ["-c", "generate/tiny", *data, "generator.steps=6", "per_class=12", "progress=false"]
    tune = ["-c", "finetune/tiny_cpu", *data, "data.shots=20", "real_stage.epochs=2", "synth_stage.epochs=1",
            "leep.max_images=100", f"out_dir={out / 'runs'}", "progress=false"]
    cmds = [["learn-style", *style, f"out_dir={out / 'dsi'}"],
            ["learn-style", *style, "method=lora", "lora.rank=2", "steps=12", f"out_dir={out / 'lora'}"],
            ["generate", *gen, f"out_dir={out / 'single'}"],
            ["generate", *gen, "prompts.templates=style", f"prompts.style_embedding={out / 'dsi'}",
             f"out_dir={out / 'dsi_set'}"],
            ["generate", *gen, f"prompts.style_lora={out / 'lora'}", f"out_dir={out / 'lora_set'}"],
            ["generate", *gen, "mode=img2img", "data.shots=20", "data.split_seed=0", f"out_dir={out / 'i2i_set'}"],
            ["finetune", *tune, "strategy=vanilla", "seed=0", "run_name=vanilla"]]
    for name in ("single", "dsi_set", "lora_set", "i2i_set"):
        cmds.append(["finetune", *tune, "strategy=bridged++", "seed=0", f"synthetic.path={out / name}",
                     "synthetic.per_class=10", f"run_name=bpp_{name}"])
    cmds.append(["filter", str(out / "single"), "method=classifier", f"classifier.run={out / 'runs' / 'vanilla'}",
                 "keep.top_k=6", "progress=false", "device=cpu"])
    cmds.append(["finetune", *tune, "strategy=bridged++", "seed=0", f"synthetic.path={out / 'single'}",
                 "synthetic.per_class=12", "synthetic.filter=classifier", "run_name=bpp_filtered"])
    return cmds + folder_scenario(out)


def folder_scenario(out: Path) -> list[list[str]]:
    """img2img and the per-class styles on `noise_folder` (digits' train images are near-copies of its test ones)."""
    data = ["data.name=folder", f"data.root={out / 'noise_data'}", f"data.cache_dir={out / 'cache'}"]
    style = ["-c", "style/tiny", *data, "progress=false", "mode=class", "steps_per_class=2"]
    gen = ["-c", "generate/tiny", *data, "generator.steps=4", "per_class=4", "progress=false"]
    return [["generate", *gen, "mode=img2img", "img2img.strength=0.5", f"out_dir={out / 'f_img2img'}"],
            ["learn-style", *style, "method=lora", "lora.rank=2", f"out_dir={out / 'f_lora_pc'}"],
            ["generate", *gen, f"prompts.style_lora={out / 'f_lora_pc'}", f"out_dir={out / 'f_lora_pc_set'}"],
            ["learn-style", *style, "vectors=2", f"out_dir={out / 'f_dsi_pc'}"],
            ["generate", *gen, "prompts.templates=style", f"prompts.style_embedding={out / 'f_dsi_pc'}",
             f"out_dir={out / 'f_dsi_pc_set'}"],
            ["finetune", "-c", "finetune/tiny_cpu", *data, "real_stage.epochs=2", "synth_stage.epochs=1",
             "strategy=bridged++", "seed=0", f"synthetic.path={out / 'f_img2img'}", "synthetic.per_class=4",
             f"out_dir={out / 'runs'}", "progress=false", "run_name=bpp_f_img2img"]]


def noise_folder(root: Path) -> None:
    """3 classes of seeded 48 x 48 noise JPEGs, 8 train and 4 test each: no two alike, the same bytes every time."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for c in ("cat", "dog", "fox"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
                img.save(root / split / c / f"{i:02d}.jpg", quality=95)


def run_tree(tree: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1", "SYNTHTL_CACHE": str(out / "cache")}
    steps = [["demo", "--out", str(out / "demo")], *scenario(out / "stages")]
    noise_folder(out / "stages" / "noise_data")
    refused = ""
    for argv in steps:
        if refused and any(refused in a for a in argv):
            continue  # a run on the refused set
        proc = subprocess.run([sys.executable, "-m", "synthtl", *argv], cwd=tree, env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0 and NEAR_COPY in proc.stderr:
            refused = argv[-1].split("=", 1)[1]
            print(f"{tree}: synthtl {argv[0]} refused {Path(refused).name} by design: {proc.stderr.strip()[:160]}...")
        elif proc.returncode != 0:
            raise SystemExit(f"{tree}: synthtl {' '.join(argv[:3])} failed:\n{proc.stdout[-2000:]}"
                             f"{proc.stderr[-2000:]}")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _clean(d):
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items() if not any(t in k for t in TIMING)}
    if isinstance(d, list):
        return [_clean(v) for v in d]
    return d


def run_key(folder: Path, labels: dict | None) -> str:
    """What a run is, whatever its folder is called."""
    res = json.loads((folder / "result.json").read_text())
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    syn = cfg.get("synthetic") or {}
    where = labels.get("prompt") if labels else Path(syn.get("path") or "").name
    return (f"{res['dataset']}/{res['strategy']}/seed{res['seed']}/{where}/v{syn.get('per_class')}/"
            f"{syn.get('filter') or ''}")


def outputs(out: Path) -> dict[str, object]:
    """Everything compared: key -> a hash or a cleaned record."""
    found: dict[str, object] = {}
    for root in (out / "demo", out / "stages"):
        plan = root / "plan.json"
        labels = {j["id"]: j["labels"] for j in json.loads(plan.read_text())["jobs"]} if plan.is_file() else {}
        for res in sorted(root.glob("runs/*/result.json")):
            key = f"{root.name}:run:{run_key(res.parent, labels.get(res.parent.name))}"
            r = json.loads(res.read_text())
            found[key] = _clean({k: r.get(k) for k in ("test", "test_ema", "val", "total_steps", "leep", "images")})
            found[key + ":metrics"] = _clean([json.loads(x) for x in (res.parent / "metrics.jsonl").read_text()
                                              .splitlines() if x.strip()])
        for img in sorted(list(root.glob("gen/*/images/*/*")) + list(root.glob("*/images/*/*")) +
                          list(root.glob("*/train/*/*"))):
            what = labels.get(img.parents[2].name, {}).get("prompt", img.parents[2].name)
            found[f"{root.name}:image:{what}/{img.parent.name}/{img.name}"] = _sha(img)
        for f in sorted(list(root.rglob("learned_embeds.safetensors")) + list(root.rglob("*lora_weights.safetensors"))):
            found[f"{root.name}:style:{_unhashed(f.relative_to(root))}"] = _sha(f)
        for folder in sorted(root.glob("*/filters/*")):
            found[f"{root.name}:kept:{folder.parent.parent.name}/{folder.name}"] = sorted(_kept(folder))
    return found


def _unhashed(rel: Path) -> str:
    """A path without the identity hashes that end a study's job folder names."""
    return "/".join(re.sub(r"-[0-9a-f]{12}$", "", part) for part in rel.parts)


def _kept(folder: Path) -> list[str]:
    """The images a filter kept of its whole set: its largest kept list, or (older layout) its decisions file."""
    lists = sorted(folder.glob("kept/*.json"), key=lambda p: int(p.stem))
    if lists:
        return json.loads(lists[-1].read_text())["paths"]
    rows = [json.loads(x) for x in (folder / "decisions.jsonl").read_text().splitlines() if x.strip()]
    return [r["path"] for r in rows if r["kept"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the commit to compare against (e.g. the one before a refactor)")
    ap.add_argument("--keep", default="", help="keep both trees' outputs in this folder")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="synthtl_same_"))
    base_tree = work / "base_tree"
    if not base_tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True,
                       capture_output=True)
    try:
        for name, tree in (("base", base_tree), ("this", ROOT)):
            if not (work / name / "done").is_file():
                run_tree(tree, work / name)
                (work / name / "done").write_text("ok")
        a, b = outputs(work / "base"), outputs(work / "this")
    finally:
        if not args.keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
    if "i2i_set" not in "".join(b):
        print("img2img set refused by this tree (near-copies of test images): compared without it")
        a = {k: v for k, v in a.items() if "i2i_set" not in k}
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    kinds = {k.split(":")[1] for k in a}
    print(f"compared {len(a)} outputs ({', '.join(sorted(kinds))}) of {args.base[:10]} and this tree")
    for k in differ[:30]:
        print(f"DIFFERS {k}: {str(a.get(k))[:80]} | {str(b.get(k))[:80]}")
    print("IDENTICAL" if not differ else f"{len(differ)} outputs differ")
    raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
