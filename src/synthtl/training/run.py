"""`synthtl finetune`: setup -> strategy -> result.json, in a self-describing, resumable run folder."""

from __future__ import annotations

import contextlib
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch
from torch import nn

import synthtl
from synthtl import faults, identity
from synthtl.config import FinetuneConfig, to_yaml
from synthtl.data.prepare import prepare_data
from synthtl.errors import ConfigError
from synthtl.files import LockedError, exclusive, git_sha, read_json, remove_temps, write_json, write_text
from synthtl.models import resolve
from synthtl.runtime import Runtime, dtype_name, is_main, resolve_runtime, seed_everything
from synthtl.strategies import effective_config, what_runs
from synthtl.training import checkpoint, distributed, tracker
from synthtl.training.stage import Run, evaluate_on
from synthtl.training.strategies import STRATEGIES


def run_dir_of(cfg: FinetuneConfig, fingerprint: str = "") -> Path:
    """out_dir/run_name, by default out_dir/<dataset>/<model>/<strategy>/<shots>/seed<seed>; a folder or csv dataset
    is named by its content fingerprint (`folder-<8 hex>`), so two never share one and a moved one keeps its runs."""
    if cfg.run_name:
        return Path(cfg.out_dir) / cfg.run_name
    data = cfg.data.name
    if data in ("folder", "csv"):
        from synthtl.data.datasets import dataset_fingerprint

        data = f"{data}-{(fingerprint or dataset_fingerprint(cfg.data))[:8]}"
    model = cfg.model.name.replace(":", "-").replace("/", "-")
    shots = f"{cfg.data.shots}shot" if cfg.data.shots else "full"
    return Path(cfg.out_dir) / f"{data}/{model}/{cfg.strategy}/{shots}/seed{cfg.seed}"


def _claim(run_dir: Path, cfg: FinetuneConfig, ident: dict) -> None:
    """Records what the folder holds (identity.json) and the effective config (config.yaml), when training starts."""
    if is_main():
        identity.claim(run_dir, "finetune", ident)
        write_text(run_dir / "config.yaml", what_runs(cfg) + to_yaml(cfg))
    faults.point("run.claimed", run_dir=run_dir)


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Runs, resumes or skips one fine-tuning run; returns its result.json. Under torchrun the processes train one
    model data-parallel; only rank 0 takes the folder's lock, evaluates and writes."""
    spec = STRATEGIES.get(cfg.strategy)
    cfg = effective_config(cfg)  # what actually runs, e.g. bridged++ -> synth_stage.mixup: true
    resolve(cfg.model.name)  # unknown model names fail before any data work
    tracker.check(cfg.tracker, cfg.tensorboard)  # before any data work, not after an epoch
    ident = identity.identity(cfg)  # what the inputs hold: the dataset, files, the sets and filters it trains on
    run_dir = run_dir_of(cfg, str(ident["data"]["root"]))
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"the run folder {run_dir} is an existing file; choose another out_dir/run_name")
    result_file = run_dir / "result.json"
    if result_file.is_file():
        identity.check(run_dir, "finetune", ident)
        if is_main():  # a kill between result.json and removing the resume state left it: it goes now
            (run_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)
            print(f"[synthtl] {run_dir} is already finished; nothing to do (delete result.json to re-run)")
        return read_json(result_file)
    rt = resolve_runtime(cfg.device, cfg.precision)
    world = distributed.init(rt)
    try:
        with contextlib.ExitStack() as stack:
            error = None
            try:
                if is_main():
                    stack.enter_context(exclusive(run_dir, "run folder"))
            except LockedError as e:
                error = e
            if (error := distributed.broadcast(error)) is not None:  # every rank stops when the folder is locked
                raise error
            return _run(cfg, spec, run_dir, rt, world, ident)
    finally:
        distributed.close()


def _run(cfg: FinetuneConfig, spec, run_dir: Path, rt: Runtime, world: int, ident: dict) -> dict:
    result_file = run_dir / "result.json"
    if result_file.is_file():  # finished by the writer this process waited for
        return read_json(result_file)
    identity.check(run_dir, "finetune", ident)  # refuse early; the folder is claimed only when training starts
    if is_main():
        remove_temps(run_dir, recursive=True)  # what a killed writer left (we hold the folder's lock)
    distributed.barrier()
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    data = prepare_data(cfg, run_dir, spec.needs_synthetic)
    record = checkpoint.ResumeRecord(run_dir, cfg.tensorboard, tracker.Tracker(cfg.tracker, describe(cfg), cfg)
                                     if cfg.tracker and is_main() else None)
    run = Run(cfg, rt, run_dir, data, record, claim=lambda: _claim(run_dir, cfg, ident), world=world)
    result = None
    try:
        model = spec.fn(run)
        if is_main():
            result = {**_result(run, finish(run, model), time.perf_counter() - t0),
                      "identity": identity.digest(ident)}
    finally:
        record.close(result)
    if is_main():
        write_json(result_file, result)
        record.finish()
        print(f"[synthtl] {describe(cfg)}: test top-1 {result['test']['top1']:.2f}%  ->  {result_file}")
    return distributed.broadcast(result)


def describe(cfg: FinetuneConfig) -> str:
    """One line: strategy, dataset, model, shots, seed and any synthetic set (no two result lines look alike)."""
    shots = f"{cfg.data.shots}-shot" if cfg.data.shots else "full"
    s = cfg.synthetic
    syn = (f", synthetic {Path(s.path).name} x{s.per_class or 'all'}" + (f" filter {s.filter}" if s.filter else "")
           if s.path and STRATEGIES.get(cfg.strategy).needs_synthetic else "")
    return f"{cfg.strategy} on {cfg.data.name} ({cfg.model.name}, {shots}, seed {cfg.seed}{syn})"


def finish(run: Run, model: nn.Module) -> dict:
    """Final metrics: the last epoch's, or the best validation epoch's with select=val; EMA numbers beside them."""
    out, selected, best_file = run.final, "last", run.dir / "checkpoints" / "best_val.pt"
    if run.cfg.select == "val" and best_file.is_file():
        best = checkpoint.load(best_file)
        model.load_state_dict(best["model"])
        selected = f"val:epoch{best['epoch']}"
    bs = 2 * run.cfg.real_stage.batch_size
    reuse = selected == "last" and out.get("final_test") is not None  # the last epoch's numbers
    test = out["final_test"] if reuse else evaluate_on(run, model, run.data.test, bs)
    val = evaluate_on(run, model, run.data.val, bs) if run.data.val is not None else None
    return {"test": test, "test_ema": out.get("final_test_ema"), "val": val, "selected": selected}


def _result(run: Run, final: dict, session_s: float) -> dict:
    cfg, data, rt, stages = run.cfg, run.data, run.rt, run.record.info["stages"]
    return {
        "strategy": cfg.strategy, "dataset": cfg.data.name, "model": cfg.model.name, "seed": cfg.seed,
        "shots": cfg.data.shots, "synthetic": cfg.synthetic.path or None, "synthetic_set": data.synthetic_record,
        "synthetic_per_class": cfg.synthetic.per_class, **final, "stages": stages,
        "total_steps": sum(s["steps"] for s in stages.values()), "leep": run.record.info["leep"],
        "images": {"train": len(data.train), "test": len(data.test), "val": len(data.val) if data.val else 0,
                   "synthetic": len(data.synthetic) if data.synthetic is not None else 0},
        "num_classes": data.num_classes, "class_names": list(data.train.names), "data_config": run.data_config,
        "skipped_images": {
            **data.skipped, "during_training": sum(s["skipped_during_training"] for s in stages.values())},
        "skipped_files": data.skipped_files, "train_test_overlap": data.overlap,
        "few_shot_short_classes": data.short_classes, "ignored_entries": data.ignored,
        "wall_s": sum(s["wall_s"] for s in stages.values()), "gpu_s": sum(s["gpu_s"] for s in stages.values()),
        "session_wall_s": session_s, "resumed": run.record.resumed, "world_size": run.world,
        "device": str(rt.device) if not rt.is_cuda else torch.cuda.get_device_name(rt.device),
        "precision": dtype_name(rt.dtype), "git_sha": git_sha(), "synthtl": synthtl.__version__,
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
