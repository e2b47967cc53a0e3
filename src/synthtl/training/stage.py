"""One training stage as a plain function: `run_stage` trains a model, resumably. A resumed run re-executes its
strategy: a finished stage loads its final weights and record, the unfinished one continues from `last.pt`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn

from synthtl.config import FinetuneConfig, StageConfig
from synthtl.data.imagelist import ImageList
from synthtl.data.loader import ImageDataset, eval_loader, set_epoch, train_loader
from synthtl.data.prepare import RunData
from synthtl.data.transforms import DeviceAugment, eval_transform, train_transform
from synthtl.files import save_torch
from synthtl.runtime import Runtime, derive_seed, is_main
from synthtl.training import distributed
from synthtl.training.checkpoint import ResumeRecord
from synthtl.training.loop import Steps, evaluate, train_one_epoch
from synthtl.training.optim import build_optimizer, lr_at


@dataclass
class Run:
    """What the stages of one fine-tuning run share. It holds state only; functions do the work."""

    cfg: FinetuneConfig
    rt: Runtime
    dir: Path
    data: RunData
    record: ResumeRecord  # checkpoint files, metric rows and records so far (restored on resume)
    claim: Callable[[], None] = lambda: None  # called when the first stage starts training (writes config.yaml)
    world: int = 1  # data-parallel processes
    data_config: dict = field(default_factory=dict)  # preprocessing of the model's weights (set by new_model)
    eval_loaders: dict = field(default_factory=dict)  # `evaluate_on`'s loaders, by (images, batch size)
    final: dict = field(default_factory=dict)  # the last stage's final_test and final_test_ema (what the run reports)
    head: dict | None = None  # how the head was changed before the next stage (kept in that stage's record)


@dataclass
class Training:
    """One stage's moving parts, and how far it is: what `last.pt` saves and restores."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    ema: object
    step: int = 0
    epoch: int = 0  # the next epoch to train
    seconds: float = 0.0  # spent on this stage in every session so far
    best_val: tuple[float, int] | None = None  # (val top-1, epoch) of the best epoch (select=val)
    final_test: dict | None = None  # test metrics of the last epoch (the reported ones when select=last)
    final_test_ema: dict | None = None  # the same for the EMA weights (ema.enabled)

    def state(self, epoch: int) -> dict:
        return {"stage": self.name, "epoch": epoch, "step": self.step, "seconds": self.seconds,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.module.state_dict() if self.ema is not None else None, "best_val": self.best_val,
                "final_test": self.final_test, "final_test_ema": self.final_test_ema}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.module.load_state_dict(state["ema"])
        self.step, self.epoch, self.seconds = state["step"], state["epoch"] + 1, state["seconds"]
        self.best_val, self.final_test = state.get("best_val"), state.get("final_test")
        self.final_test_ema = state.get("final_test_ema")


def run_stage(run: Run, name: str, model: nn.Module, parts: list[ImageList], stage: StageConfig, *,
              total_steps: int | None = None, fraction: float | None = None, final: bool = False) -> None:
    """Trains `model` in place on `parts` ([real, synthetic] for mixed) as stage `name`; resumes or skips it.

    `total_steps`: exact optimizer steps (compute-matched control; default epochs x steps per epoch); `fraction`: the
    mixed synthetic share per epoch (None: all of both); `final`: the run's last stage, whose numbers are reported.
    `run.head` (how the head was changed before this stage) goes into its record."""
    done = run.record.finished_stage(name)
    if done is not None:
        model.load_state_dict(done["model"])
        run.final = {k: done.get(k) for k in ("final_test", "final_test_ema")} if final else run.final
        return
    run.claim()
    seed = derive_seed(run.cfg.seed, "stage", name)
    loader = train_loader([dataset(run, p, train=True) for p in parts], stage.batch_size, seed,
                          run.cfg.data.num_workers, fraction, pin_memory=run.rt.is_cuda,
                          rank=distributed.rank(), world=run.world)
    spe = len(loader)
    total = total_steps if total_steps is not None else stage.epochs * spe
    epochs = math.ceil(total / spe) if spe else 0
    trained = distributed.wrap(model, run.rt)
    scaler = torch.amp.GradScaler("cuda") if run.rt.dtype == torch.float16 else None
    ema = ModelEmaV3(model, decay=run.cfg.ema.decay) if run.cfg.ema.enabled else None
    t = Training(name, model, build_optimizer(model, stage), scaler, ema)
    if run.record.in_progress(name) is not None:
        t.restore(run.record.in_progress(name))
    how, rate = steps_of(run, t, stage, total, spe), 0.0
    for epoch in range(t.epoch, epochs):
        t0 = time.perf_counter()
        set_epoch(loader, seed, epoch)
        how.desc = f"{name} {epoch + 1}/{epochs}"
        stats, t.step = train_one_epoch(trained, loader, how, t.step)
        rate = stats.images / stats.seconds if stats.seconds > 0 else 0.0
        row = {"stage": name, "epoch": epoch + 1, "step": t.step, "lr": how.lr_fn(max(t.step - 1, 0)),
               **_totals(run, stats)}
        last = epoch == epochs - 1
        if is_main():
            _evaluate_epoch(run, t, stage, row, last, final)
            val = f", val top-1 {row['val_top1']:.2f}%" if "val_top1" in row else ""
            print(f"[synthtl] {name} epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f}{val}", flush=True)
        t.seconds += time.perf_counter() - t0
        row["stage_seconds"] = t.seconds
        run.record.log(row)
        if last or (epoch + 1) % run.cfg.checkpoint_every == 0:
            run.record.save_progress(t.state(epoch))
    record = stage_record(run, t, stage, parts, (epochs, spe, rate)) | ({"head": run.head} if run.head else {})
    run.record.finish_stage(name, record, t.state(epochs - 1))
    run.final = {"final_test": t.final_test, "final_test_ema": t.final_test_ema} if final else run.final


def steps_of(run: Run, t: Training, stage: StageConfig, total: int, spe: int) -> Steps:
    """How the stage's steps are taken (`loop.train_one_epoch`), warning when warmup outlasts the stage."""
    warmup = int(stage.warmup_epochs * spe)
    if warmup >= total > 0 and t.step == 0 and is_main():
        print(f"[synthtl] warning: {t.name} stage: warmup ({stage.warmup_epochs} epochs = {warmup} steps) is not "
              f"shorter than the stage ({total} steps); the learning rate never reaches its peak {stage.lr}")
    m = run.cfg.mixup
    mixup = Mixup(mixup_alpha=m.alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob, switch_prob=m.switch_prob,
                  label_smoothing=stage.label_smoothing, num_classes=run.data.num_classes) if stage.mixup else None
    return Steps(t.optimizer, run.rt, total, partial(lr_at, total_steps=total, warmup_steps=warmup, peak=stage.lr,
                                                     floor=stage.min_lr), run.data.num_classes, mixup,
                 stage.label_smoothing, stage.clip_grad, t.scaler, augment(run, True), run.cfg.model.channels_last,
                 stage.accum_steps, t.ema, run.world, progress=run.cfg.progress)


# ------------------------------------------------------------------------------------------------------ parts
def dataset(run: Run, images: ImageList, train: bool) -> ImageDataset:
    d = run.cfg.data
    if d.decode == "device":
        return ImageDataset(images, on_bad=d.on_bad_image, raw=True)
    tf = train_transform(run.data_config, d.crop_scale_min, d.hflip) if train else eval_transform(run.data_config)
    return ImageDataset(images, tf, on_bad=d.on_bad_image)


def augment(run: Run, train: bool) -> DeviceAugment | None:
    d = run.cfg.data
    on_device = d.decode == "device"
    return DeviceAugment(run.data_config, run.rt.device, train, d.crop_scale_min, d.hflip) if on_device else None


def evaluate_on(run: Run, model: nn.Module, images: ImageList, batch_size: int) -> dict:
    """`loop.evaluate` of `model` on `images`; the loader is kept for the run (its workers persist)."""
    key = (id(images), batch_size)
    if key not in run.eval_loaders:
        run.eval_loaders[key] = eval_loader(dataset(run, images, train=False), batch_size, run.cfg.data.num_workers,
                                            pin_memory=run.rt.is_cuda, persistent=True)
    return evaluate(model, run.eval_loaders[key], run.rt, run.data.num_classes, augment(run, False),
                    run.cfg.model.channels_last)


def _evaluate_epoch(run: Run, t: Training, stage: StageConfig, row: dict, last: bool, final: bool) -> None:
    """Test (for the curves; never for selection) and validation numbers of one epoch, into `row` (rank 0). `last`:
    the stage's last epoch; `final`: the run's last stage, whose last epoch's test numbers are reported."""
    bs, epoch = 2 * stage.batch_size, int(row["epoch"])
    if last or epoch % stage.eval_every == 0:
        test = evaluate_on(run, t.model, run.data.test, bs)
        row.update(test_top1=test["top1"], test_top5=test["top5"], test_loss=test["loss"])
        if t.ema is not None:
            row["test_top1_ema"] = (test_ema := evaluate_on(run, t.ema.module, run.data.test, bs))["top1"]
        if last and final:
            t.final_test = test
            t.final_test_ema = test_ema if t.ema is not None else None
    if run.data.val is not None:
        val = evaluate_on(run, t.model, run.data.val, bs)
        row.update(val_top1=val["top1"], val_loss=val["loss"])
        best = t.best_val
        if final and run.cfg.select == "val" and (best is None or val["top1"] > best[0]):
            t.best_val = (val["top1"], epoch)
            save_torch(run.dir / "checkpoints" / "best_val.pt", {"model": t.model.state_dict(), "epoch": epoch})


def stage_record(run: Run, t: Training, stage: StageConfig, parts: list[ImageList], shape: tuple) -> dict:
    """result.json's record of a finished stage; `shape`: (epochs, steps per epoch, this rank's images/s)."""
    epochs, spe, rank_images_per_s = shape
    rows = [r for r in run.record.metrics if r["stage"] == t.name]
    train_s = sum(r["train_seconds"] for r in rows)
    return {"epochs": epochs, "steps": t.step, "steps_per_epoch": spe, "train_images": sum(len(p) for p in parts),
            "batch_size": stage.batch_size, "lr": stage.lr, "mixup": stage.mixup, "settings": asdict(stage),
            "wall_s": t.seconds, "gpu_s": t.seconds * run.rt.gpus * run.world,
            "train_images_per_s": sum(r["images"] for r in rows) / train_s if train_s else 0.0,
            "rank_images_per_s": distributed.gather(rank_images_per_s), "world_size": run.world,
            "skipped_during_training": sum(r["skipped"] for r in rows)}


def _totals(run: Run, stats) -> dict:
    """The epoch's loss, accuracy and throughput over every rank (this process's numbers without torchrun)."""
    images, train_s, loss, top1 = stats.images, stats.seconds, stats.loss, stats.top1
    if run.world > 1:
        images, train_s, loss, top1 = distributed.sum_all([images, train_s, loss * images, top1 * images],
                                                          run.rt.device)
        loss, top1 = loss / max(images, 1), top1 / max(images, 1)
    return {"train_loss": loss, "train_top1": top1, "images": int(images),
            "images_per_s": images / (train_s / run.world) if train_s else 0.0, "train_seconds": stats.seconds,
            "skipped": stats.skipped}
