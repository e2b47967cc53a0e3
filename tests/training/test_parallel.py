"""Data-parallel training (gloo, 2 CPU processes), gradient accumulation, EMA and compile.

A BatchNorm-free model (timm's test_vit) is used where results are compared across batch splits: BatchNorm
statistics depend on how a batch is split (SyncBatchNorm makes them global on CUDA, see training/distributed.py).
"""

import json
import multiprocessing as mp
import socket
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

pytestmark = pytest.mark.integration
VIT = ["model.name=test_vit", "model.img_size=32", "real_stage.epochs=2", "real_stage.lr=0.01"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, argv: list[str], kill_after_first_save: bool = False) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    from synthtl import cli

    if kill_after_first_save:  # as if the job were killed right after its first checkpoint (every rank stops)
        from synthtl.training.checkpoint import ResumeRecord

        real = ResumeRecord.save_progress

        def die(self, state):
            real(self, state)
            raise KeyboardInterrupt

        ResumeRecord.save_progress = die

    raise SystemExit(cli.main(argv))


def torchrun(world: int, *argv: str, kill: bool = False) -> list[int]:
    """What `torchrun --nproc-per-node world -m synthtl ...` does, in spawned processes; returns exit codes."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, list(argv), kill)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    return [p.exitcode for p in procs]


def _run(out: Path, name: str) -> tuple[dict, list[dict]]:
    folder = out / name
    rows = [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines()]
    return json.loads((folder / "result.json").read_text()), rows


def test_two_processes_train_one_model_like_one_process(tiny_overrides, tmp_path):
    """2 gloo processes (killed after the first epoch's checkpoint, then resumed) give one process's numbers."""
    args = [*tiny_overrides, *VIT, f"out_dir={tmp_path / 'runs'}"]
    assert run_cli("finetune", *args, "run_name=single") == 0
    assert torchrun(2, "finetune", *args, "run_name=ddp", kill=True) == [130, 130]
    assert (tmp_path / "runs" / "ddp" / "checkpoints" / "last.pt").is_file()
    assert torchrun(2, "finetune", *args, "run_name=ddp") == [0, 0]
    single, rows1 = _run(tmp_path / "runs", "single")
    ddp, rows2 = _run(tmp_path / "runs", "ddp")
    assert ddp["world_size"] == 2 and single["world_size"] == 1 and ddp["resumed"] is True
    assert len(ddp["stages"]["real"]["rank_images_per_s"]) == 2
    assert ddp["total_steps"] == single["total_steps"]  # the configured batch stays the global batch
    for a, b in zip(rows1, rows2, strict=True):
        assert a["images"] == b["images"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4, abs=1e-5)
    assert ddp["test"]["top1"] == single["test"]["top1"]
    assert not list((tmp_path / "runs" / "ddp").rglob("*rank1*"))  # only rank 0 writes
    assert torchrun(2, "finetune", *args, "run_name=ddp") == [0, 0]  # finished: a no-op on every rank


def test_two_processes_with_batchnorm_stay_within_noise_of_one(tiny_overrides, tmp_path):
    """On CPU, BatchNorm's batch statistics are per rank (half the batch each): the numbers differ from one process's,
    by noise only (the README says which claim holds for which model)."""
    args = [*tiny_overrides, "real_stage.epochs=2", "leep.enabled=false", f"out_dir={tmp_path / 'runs'}"]
    assert run_cli("finetune", *args, "run_name=single") == 0
    assert torchrun(2, "finetune", *args, "run_name=ddp") == [0, 0]
    (single, rows1), (ddp, rows2) = _run(tmp_path / "runs", "single"), _run(tmp_path / "runs", "ddp")
    assert ddp["total_steps"] == single["total_steps"] and [r["images"] for r in rows1] == [r["images"] for r in rows2]
    assert rows1[0]["train_loss"] != pytest.approx(rows2[0]["train_loss"], rel=1e-4)  # BN statistics per rank
    for a, b in zip(rows1, rows2, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.35)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=0.15)


def test_accumulation_equals_the_whole_batch(tiny_overrides, tmp_path):
    args = [*tiny_overrides, *VIT, f"out_dir={tmp_path / 'runs'}"]
    assert run_cli("finetune", *args, "run_name=whole") == 0
    assert run_cli("finetune", *args, "real_stage.accum_steps=4", "run_name=accum") == 0
    whole, rows1 = _run(tmp_path / "runs", "whole")
    accum, rows2 = _run(tmp_path / "runs", "accum")
    assert accum["total_steps"] == whole["total_steps"]
    for a, b in zip(rows1, rows2, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4, abs=1e-5)


def test_ema_with_zero_decay_is_the_raw_model(tiny_overrides, tmp_path):
    args = [*tiny_overrides, "real_stage.epochs=2", f"out_dir={tmp_path / 'runs'}"]
    assert run_cli("finetune", *args, "ema.enabled=true", "ema.decay=0", "run_name=ema0") == 0
    res, rows = _run(tmp_path / "runs", "ema0")
    assert res["test_ema"] == res["test"]
    assert all(r["test_top1_ema"] == r["test_top1"] for r in rows)
    assert run_cli("finetune", *args, "ema.enabled=true", "ema.decay=0.9", "run_name=ema9") == 0
    assert _run(tmp_path / "runs", "ema9")[0]["test_ema"] is not None
    assert run_cli("finetune", *args, "run_name=plain") == 0
    assert _run(tmp_path / "runs", "plain")[0]["test_ema"] is None  # off by default


def test_compile_is_applied_when_asked(tiny_overrides, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(type(self).__name__))
    assert run_cli("finetune", *tiny_overrides, "model.compile=true", f"out_dir={tmp_path / 'runs'}") == 0
    assert calls == ["ResNet"]
