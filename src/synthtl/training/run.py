"""`synthtl finetune`: setup -> strategy -> result.json, in a self-describing, resumable run folder."""

from __future__ import annotations

import contextlib
import hashlib
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch
from torch import nn

import synthtl
from synthtl.config import FINETUNE_VOLATILE, FinetuneConfig, config_diff, config_hash, from_dict, to_yaml
from synthtl.data.prepare import prepare_data
from synthtl.data.synthetic import plan_hash
from synthtl.errors import ConfigError
from synthtl.files import (
    LockedError,
    content_sha256,
    exclusive,
    git_sha,
    read_json,
    remove_temps,
    write_json,
    write_text,
)
from synthtl.models import resolve
from synthtl.runtime import Runtime, dtype_name, is_main, resolve_runtime, seed_everything
from synthtl.training import checkpoint, distributed
from synthtl.training.checkpoint import ResumeRecord
from synthtl.training.metrics_writer import MetricsWriter
from synthtl.training.stage import Run, evaluate_on
from synthtl.training.strategies import STRATEGIES, effective_config

# Fields that do not change a run's result (paths, speed, display): a re-run differing only here is the same run.
VOLATILE = FINETUNE_VOLATILE


def default_run_name(cfg: FinetuneConfig) -> str:
    model = cfg.model.name.replace(":", "-").replace("/", "-")
    shots = f"{cfg.data.shots}shot" if cfg.data.shots else "full"
    return f"{cfg.data.name}/{model}/{cfg.strategy}/{shots}/seed{cfg.seed}"


def run_dir_of(cfg: FinetuneConfig) -> Path:
    return Path(cfg.out_dir) / (cfg.run_name or default_run_name(cfg))


# Paths to inputs: a moved study or dataset must not look like another run, so they are compared by what they hold
# (inputs.json, written with config.yaml), never by where they are.
INPUT_PATHS = ("synthetic.path", "data.split_file", "model.weights")


def inputs_identity(cfg: FinetuneConfig) -> dict:
    """What the run's input paths hold: the generated set's plan identity (or a class-per-folder set's listing), and
    the content hash of a split file and of local weights."""
    out: dict = {}
    if cfg.synthetic.path:
        folder = Path(cfg.synthetic.path)
        if (folder / "plan.json").is_file():
            out["synthetic"] = "plan:" + plan_hash(read_json(folder / "plan.json")["identity"])
        elif folder.is_dir():
            h = hashlib.sha256()
            for p in sorted(q for q in folder.rglob("*") if q.is_file()):
                h.update(f"{p.relative_to(folder).as_posix()}\0{p.stat().st_size}\n".encode("utf-8", "surrogateescape"))
            out["synthetic"] = "files:" + h.hexdigest()[:16]
        if cfg.synthetic.filter and (folder / "filters" / cfg.synthetic.filter / "filter.json").is_file():
            from synthtl.filtering import selection

            # the filter's config and model and the images it keeps of this run's volume: growing the set beyond
            # the volume does not change it (`filtering.selection`)
            out["filter"] = selection(folder, cfg.synthetic.filter, cfg.synthetic.per_class)[1]
    for key, path in (("split_file", cfg.data.split_file), ("weights", cfg.model.weights)):
        if path and Path(path).is_file():
            out[key] = "sha256:" + content_sha256(path)[:16]
    return out


def _check_same_run(run_dir: Path, cfg: FinetuneConfig) -> bool:
    """False if the folder holds no config yet; raises if it holds another run (naming the keys that differ)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return False
    import yaml

    try:
        old = effective_config(from_dict(FinetuneConfig, yaml.safe_load(saved.read_text())))
    except (ConfigError, yaml.YAMLError) as e:
        raise ConfigError(f"{saved} cannot be read ({e}); delete the folder to start over or choose another "
                          "run_name/out_dir") from None
    differ = config_diff(old, cfg, (*VOLATILE, *INPUT_PATHS))
    if (run_dir / "inputs.json").is_file():
        held, now = read_json(run_dir / "inputs.json"), inputs_identity(cfg)
        differ += [f"inputs.{k}" for k in sorted(set(held) | set(now)) if held.get(k) != now.get(k)]
    else:  # a folder from before inputs.json: the paths themselves
        differ += [k for k in INPUT_PATHS if _get(old, k) != _get(cfg, k)]
    if differ:
        shown = ", ".join(f"{k} ({_get(old, k)!r} there, {_get(cfg, k)!r} now)" if not k.startswith("inputs.")
                          else f"{k} (the input holds other content)" for k in differ[:6])
        more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
        raise ConfigError(f"{run_dir} holds a run with a different config: {shown}{more}. Choose another "
                          "run_name/out_dir, or delete the folder to start over")
    return True


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part, None)
    return cfg


def _claim(run_dir: Path, cfg: FinetuneConfig) -> None:
    """Writes config.yaml (the effective config) and inputs.json, unless the folder already holds this run."""
    if not _check_same_run(run_dir, cfg) and is_main():
        write_json(run_dir / "inputs.json", inputs_identity(cfg))
        write_text(run_dir / "config.yaml", to_yaml(cfg))


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Runs (or resumes, or skips if finished) one fine-tuning run; returns its result.json content.

    Under `torchrun --nproc-per-node N` the N processes train one model data-parallel (`training.distributed`);
    only rank 0 takes the folder's lock, evaluates and writes.
    """
    spec = STRATEGIES.get(cfg.strategy)
    cfg = effective_config(cfg)  # what actually runs, e.g. bridged++ -> synth_stage.mixup: true
    resolve(cfg.model.name)  # unknown model names fail before any data work
    run_dir = run_dir_of(cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"the run folder {run_dir} is an existing file; choose another out_dir/run_name")
    result_file = run_dir / "result.json"
    if result_file.is_file():
        _check_same_run(run_dir, cfg)
        if is_main():
            print(f"[synthtl] {run_dir} is already finished; nothing to do (delete result.json to re-run)")
        return read_json(result_file)
    rt = resolve_runtime(cfg.device, cfg.precision)
    world = distributed.init(rt)
    try:
        with contextlib.ExitStack() as stack:
            error = None
            if is_main():
                try:
                    stack.enter_context(exclusive(run_dir, "run folder"))
                except LockedError as e:
                    error = e
            error = distributed.broadcast(error)
            if error is not None:
                raise error
            return _run(cfg, spec, run_dir, rt, world)
    finally:
        distributed.close()


def _run(cfg: FinetuneConfig, spec, run_dir: Path, rt: Runtime, world: int) -> dict:
    result_file = run_dir / "result.json"
    if result_file.is_file():  # finished by the writer this process waited for
        return read_json(result_file)
    _check_same_run(run_dir, cfg)  # refuse early; config.yaml is written only when training starts
    if is_main():
        remove_temps(run_dir, recursive=True)  # what a killed writer left (we hold the folder's lock)
    distributed.barrier()
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    data = prepare_data(cfg, run_dir, spec.needs_synthetic)
    record = ResumeRecord(run_dir / "checkpoints")
    run = Run(cfg, rt, run_dir, data, record, MetricsWriter(run_dir, record.metrics, cfg.tensorboard),
              claim=lambda: _claim(run_dir, cfg), world=world)
    try:
        model = spec.fn(run)
        final = finish(run, model) if is_main() else None
    finally:
        run.log.close()
    result = _result(cfg, run, final, time.perf_counter() - t0) if is_main() else None
    if is_main():
        write_json(result_file, result)
        record.close()
        print(f"[synthtl] {cfg.strategy}: test top-1 {result['test']['top1']:.2f}%  ->  {result_file}")
    return distributed.broadcast(result)


def finish(run: Run, model: nn.Module) -> dict:
    """Final metrics: the last epoch's, or the best validation epoch's with select=val; EMA numbers beside them."""
    out = run.final
    selected = "last"
    best_file = run.dir / "checkpoints" / "best_val.pt"
    if run.cfg.select == "val" and best_file.is_file():
        best = checkpoint.load(best_file)
        model.load_state_dict(best["model"])
        selected = f"val:epoch{best['epoch']}"
    bs = 2 * run.cfg.real_stage.batch_size
    test = out.final_test if selected == "last" and out is not None and out.final_test is not None else None
    return {"test": test or evaluate_on(run, model, run.data.test, bs), "selected": selected,
            "test_ema": out.final_test_ema if out is not None else None,
            "val": evaluate_on(run, model, run.data.val, bs) if run.data.val is not None else None}


def _result(cfg: FinetuneConfig, run: Run, final: dict, session_s: float) -> dict:
    data, rt, stages = run.data, run.rt, run.record.info["stages"]
    return {
        "strategy": cfg.strategy, "dataset": cfg.data.name, "model": cfg.model.name, "seed": cfg.seed,
        "shots": cfg.data.shots, "synthetic": cfg.synthetic.path or None, "synthetic_set": data.synthetic_record,
        "synthetic_per_class": cfg.synthetic.per_class, "config_hash": config_hash(cfg, VOLATILE),
        "test": final["test"], "test_ema": final["test_ema"], "val": final["val"], "selected": final["selected"],
        "stages": stages, "total_steps": sum(s["steps"] for s in stages.values()),
        "leep": run.record.info["leep"],
        "images": {"train": len(data.train), "test": len(data.test), "val": len(data.val) if data.val else 0,
                   "synthetic": len(data.synthetic) if data.synthetic is not None else 0},
        "num_classes": data.num_classes,
        "skipped_images": {**data.skipped,
                           "during_training": sum(s.get("skipped_during_training", 0) for s in stages.values())},
        "skipped_files": data.skipped_files, "train_test_overlap": data.overlap,
        "few_shot_short_classes": data.short_classes, "ignored_entries": data.ignored,
        "wall_s": sum(s["wall_s"] for s in stages.values()), "gpu_s": sum(s["gpu_s"] for s in stages.values()),
        "session_wall_s": session_s, "resumed": run.record.resumed, "world_size": run.world,
        "device": str(rt.device) if not rt.is_cuda else torch.cuda.get_device_name(rt.device),
        "precision": dtype_name(rt.dtype), "git_sha": git_sha(), "synthtl": synthtl.__version__,
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
