"""The per-run toolbox strategies use: build a model, run a stage (resumably), score LEEP, finish.

A strategy is re-executed from its first line when a run resumes: `run_stage` of a stage that already finished
just loads its final weights, and the unfinished stage continues from its last checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from synthtl.config import FinetuneConfig, StageConfig
from synthtl.data.imagelist import ImageList
from synthtl.data.loader import ImageDataset, eval_loader, set_epoch, steps_per_epoch, train_loader
from synthtl.data.prepare import RunData
from synthtl.data.transforms import DeviceAugment, eval_transform, train_transform
from synthtl.files import write_jsonl
from synthtl.metrics.leep import leep
from synthtl.models import create_classifier, replace_head, source_label_space
from synthtl.runtime import Runtime, derive_seed, is_main
from synthtl.training import checkpoint
from synthtl.training.loop import evaluate, predict, train_one_epoch
from synthtl.training.optim import build_optimizer, lr_at

LAST = "last.pt"


class Context:
    """Shared state of one fine-tuning run.

    Args:
        cfg: The resolved config.
        rt: Device and precision.
        run_dir: The run folder.
        data: Real (and synthetic) images, already split and scanned.
        claim: Called once, when the first stage starts training: the run folder is claimed (config.yaml) only
            then, so a run that fails while setting up (missing weights, bad data) can be re-run with the fix.
    """

    def __init__(self, cfg: FinetuneConfig, rt: Runtime, run_dir: Path, data: RunData,
                 claim: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.rt = rt
        self.run_dir = run_dir
        self.data = data
        self.ckpt_dir = run_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.data_config: dict = {}
        self.metrics: list[dict] = []
        self.info: dict = {"stages": {}, "leep": {}}  # goes into result.json
        self.resume: dict | None = checkpoint.load(self.ckpt_dir / LAST) if (self.ckpt_dir / LAST).is_file() else None
        if self.resume:
            self.metrics = list(self.resume["metrics"])
            self.info = self.resume["info"]
        self.best_val: tuple[float, int] | None = None
        self.final_test: dict | None = None
        self._eval_loaders: dict[tuple, object] = {}
        self._tb = None
        self._claim = claim

    def claim(self) -> None:
        if self._claim is not None:
            self._claim()
            self._claim = None

    # ---------------------------------------------------------------------------------------------------- data
    def real_train(self) -> list[ImageList]:
        return [self.data.train]

    def synthetic_train(self) -> list[ImageList]:
        if self.data.synthetic is None:
            raise RuntimeError("no synthetic set was prepared")
        return [self.data.synthetic]

    def _dataset(self, images: ImageList, train: bool) -> ImageDataset:
        d = self.cfg.data
        if d.decode == "device":
            return ImageDataset(images, on_bad=d.on_bad_image, raw=True)
        tf = train_transform(self.data_config, d.crop_scale_min, d.hflip) if train else eval_transform(self.data_config)
        return ImageDataset(images, tf, on_bad=d.on_bad_image)

    def _augment(self, train: bool) -> DeviceAugment | None:
        d = self.cfg.data
        if d.decode != "device":
            return None
        return DeviceAugment(self.data_config, self.rt.device, train, d.crop_scale_min, d.hflip)

    def _eval(self, model: nn.Module, images: ImageList, batch_size: int) -> dict:
        key = (id(images), batch_size)
        if key not in self._eval_loaders:  # kept for the whole run: its workers persist between evaluations
            self._eval_loaders[key] = eval_loader(self._dataset(images, train=False), batch_size,
                                                  self.cfg.data.num_workers, pin_memory=self.rt.is_cuda,
                                                  persistent=True)
        loader = self._eval_loaders[key]
        return evaluate(model, loader, self.rt, self.data.num_classes, self._augment(False), self._channels_last)

    @property
    def _channels_last(self) -> bool:
        return self.cfg.model.channels_last and self.rt.is_cuda

    # --------------------------------------------------------------------------------------------------- model
    def new_model(self, pretrained: bool | None = None) -> nn.Module:
        """The starting model with a fresh target head; scores its LEEP first when it has a classifier head."""
        m = self.cfg.model
        pretrained = m.pretrained if pretrained is None else pretrained
        model, self.data_config = create_classifier(m.name, None, pretrained, m.weights if pretrained else "",
                                                    m.img_size)
        if pretrained and self.cfg.leep.enabled and "pretrained" not in self.info["leep"]:
            space = source_label_space(model)
            model.to(self.rt.device)
            self.info["leep"]["pretrained"] = self.leep_score(model) if space else None
            self.info["leep"]["pretrained_label_space"] = space
        replace_head(model, self.data.num_classes, seed=derive_seed(self.cfg.seed, "head"))
        model.to(self.rt.device)
        if self._channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def leep_score(self, model: nn.Module) -> float:
        """LEEP of `model`'s own label space for the real training images (eval transform)."""
        images = self.data.train
        n = self.cfg.leep.max_images
        if n and n < len(images):
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "leep"))
            images = images.subset(sorted(torch.randperm(len(images), generator=g)[:n].tolist()))
        loader = eval_loader(self._dataset(images, train=False), 2 * self.cfg.real_stage.batch_size,
                             self.cfg.data.num_workers)
        logits, labels, _ = predict(model, loader, self.rt, self._augment(False), self._channels_last)
        return leep(torch.softmax(logits, dim=1), labels, self.data.num_classes)

    def record_leep(self, key: str, model: nn.Module) -> None:
        if self.cfg.leep.enabled and key not in self.info["leep"]:
            self.info["leep"][key] = self.leep_score(model)

    # --------------------------------------------------------------------------------------------------- stages
    def stage_done(self, name: str) -> bool:
        return (self.ckpt_dir / f"stage-{name}.pt").is_file()

    def stage_steps(self, parts: list[ImageList], stage: StageConfig, fraction: float | None = None) -> int:
        n = sum(len(p) for p in parts)
        if fraction is not None and len(parts) == 2:
            n = len(parts[0]) + round(len(parts[0]) * fraction / (1 - fraction))
        return stage.epochs * steps_per_epoch(n, stage.batch_size)

    def run_stage(self, name: str, model: nn.Module, parts: list[ImageList], stage: StageConfig, *,
                  total_steps: int | None = None, fraction: float | None = None,
                  final: bool = False) -> None:
        """Trains `model` on `parts` for one stage; resumes or skips it if the run folder says so.

        Args:
            name: Stage name ("synthetic", "real", "mixed"), unique within the run.
            model: Trained in place.
            parts: One image list, or [real, synthetic] for the mixed strategy.
            stage: Optimisation settings, as the strategy runs them (see `strategies.effective_config`).
            total_steps: Exact optimizer steps (compute-matched control); default epochs x steps per epoch.
            fraction: Mixed strategy's synthetic share per epoch (None = all of both).
            final: The last stage: validation-based selection (select=val) applies to it.
        """
        done_file = self.ckpt_dir / f"stage-{name}.pt"
        if done_file.is_file():
            state = checkpoint.load(done_file)
            model.load_state_dict(state["model"])
            if "record" in state:  # killed between writing stage-X.pt and last.pt: the record travels with the weights
                self.info["stages"].setdefault(name, state["record"])
            return
        self.claim()
        seed = derive_seed(self.cfg.seed, "stage", name)
        loader = train_loader([self._dataset(p, train=True) for p in parts], stage.batch_size, seed,
                              self.cfg.data.num_workers, fraction, pin_memory=self.rt.is_cuda)
        spe = len(loader)
        total = total_steps if total_steps is not None else stage.epochs * spe
        epochs = math.ceil(total / spe) if spe else 0
        optimizer = build_optimizer(model, stage)
        scaler = torch.amp.GradScaler("cuda") if self.rt.dtype == torch.float16 else None
        mixup_fn = self._mixup(stage)
        step, start_epoch, spent = 0, 0, 0.0
        if self.resume and self.resume["stage"] == name:
            model.load_state_dict(self.resume["model"])
            optimizer.load_state_dict(self.resume["optimizer"])
            if scaler is not None and self.resume.get("scaler"):
                scaler.load_state_dict(self.resume["scaler"])
            step, start_epoch, spent = self.resume["step"], self.resume["epoch"] + 1, self.resume["seconds"]
            self.best_val = self.resume.get("best_val")
        warmup = int(stage.warmup_epochs * spe)
        if warmup >= total > 0 and step == 0 and is_main():
            print(f"[synthtl] warning: {name} stage: warmup ({stage.warmup_epochs} epochs = {warmup} steps) is not "
                  f"shorter than the stage ({total} steps); the learning rate never reaches its peak {stage.lr}")

        def lr_fn(s: int) -> float:
            return lr_at(s, total, warmup, stage.lr, stage.min_lr)

        augment = self._augment(True)
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            set_epoch(loader, seed, epoch)
            stats, step = train_one_epoch(
                model, loader, optimizer, self.rt, step=step, total_steps=total, lr_fn=lr_fn,
                num_classes=self.data.num_classes, mixup_fn=mixup_fn, label_smoothing=stage.label_smoothing,
                clip_grad=stage.clip_grad, scaler=scaler, augment=augment, channels_last=self._channels_last,
                desc=f"{name} {epoch + 1}/{epochs}", progress=self.cfg.progress)
            row = {"stage": name, "epoch": epoch + 1, "step": step, "lr": lr_fn(max(step - 1, 0)),
                   "train_loss": stats.loss, "train_top1": stats.top1, "images": stats.images,
                   "images_per_s": stats.images_per_s, "train_seconds": stats.seconds, "skipped": stats.skipped}
            last = epoch == epochs - 1
            if last or (epoch + 1) % stage.eval_every == 0:
                test = self._eval(model, self.data.test, 2 * stage.batch_size)
                row.update(test_top1=test["top1"], test_top5=test["top5"], test_loss=test["loss"])
                if last and final:
                    self.final_test = test  # the reported numbers when select=last (no second pass)
            if self.data.val is not None:
                val = self._eval(model, self.data.val, 2 * stage.batch_size)
                row.update(val_top1=val["top1"], val_loss=val["loss"])
                if final and self.cfg.select == "val" and (self.best_val is None or val["top1"] > self.best_val[0]):
                    self.best_val = (val["top1"], epoch + 1)
                    checkpoint.save(self.ckpt_dir / "best_val.pt", {"model": model.state_dict(), "epoch": epoch + 1})
            spent += time.perf_counter() - t0
            row["stage_seconds"] = spent
            self._log(row)
            if last or (epoch + 1) % self.cfg.checkpoint_every == 0:
                self._save_resume(name, epoch, step, spent, model, optimizer, scaler)
        rows = [r for r in self.metrics if r["stage"] == name]
        train_s = sum(r["train_seconds"] for r in rows)
        self.info["stages"][name] = {
            "epochs": epochs, "steps": step, "steps_per_epoch": spe, "train_images": sum(len(p) for p in parts),
            "batch_size": stage.batch_size, "lr": stage.lr, "mixup": stage.mixup, "settings": asdict(stage),
            "wall_s": spent,
            "gpu_s": spent * self.rt.gpus,
            "train_images_per_s": sum(r["images"] for r in rows) / train_s if train_s else 0.0,
            "skipped_during_training": sum(r["skipped"] for r in rows)}
        checkpoint.save(done_file, {"model": model.state_dict(), "record": self.info["stages"][name]})
        self._save_resume(name, epochs - 1, step, spent, model, optimizer, scaler, finished=True)

    def _mixup(self, stage: StageConfig):
        if not stage.mixup:
            return None
        from timm.data import Mixup

        m = self.cfg.mixup
        return Mixup(mixup_alpha=m.alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob, switch_prob=m.switch_prob,
                     label_smoothing=stage.label_smoothing, num_classes=self.data.num_classes)

    def _save_resume(self, name: str, epoch: int, step: int, seconds: float, model: nn.Module,
                     optimizer: torch.optim.Optimizer, scaler, finished: bool = False) -> None:
        state = {"stage": name, "epoch": epoch, "step": step, "seconds": seconds, "finished": finished,
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else None, "metrics": self.metrics,
                 "info": self.info, "best_val": self.best_val}
        if is_main():
            checkpoint.save(self.ckpt_dir / LAST, state)
        self.resume = None if finished else self.resume

    def _log(self, row: dict) -> None:
        self.metrics.append(row)
        if not is_main():
            return
        write_jsonl(self.run_dir / "metrics.jsonl", self.metrics)
        if self.cfg.tensorboard:
            if self._tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as e:
                    raise RuntimeError("tensorboard=true needs the tensorboard package: pip install "
                                       "'synthtl[tensorboard]'") from e
                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self._tb.add_scalar(f"{row['stage']}/{k}", v, row["step"])
            self._tb.flush()

    # --------------------------------------------------------------------------------------------------- finish
    def finish(self, model: nn.Module) -> dict:
        """Final metrics of the trained model (the last epoch, or the best-validation epoch with select=val)."""
        selected = "last"
        if self.cfg.select == "val" and (self.ckpt_dir / "best_val.pt").is_file():
            best = checkpoint.load(self.ckpt_dir / "best_val.pt")
            model.load_state_dict(best["model"])
            selected = f"val:epoch{best['epoch']}"
        bs = 2 * self.cfg.real_stage.batch_size
        test = self.final_test if selected == "last" and self.final_test is not None else None
        out = {"test": test or self._eval(model, self.data.test, bs), "selected": selected}
        out["val"] = self._eval(model, self.data.val, bs) if self.data.val is not None else None
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

