import pytest
import torch

from synthtl import runtime
from synthtl.errors import ConfigError
from synthtl.runtime import derive_seed, is_main, resolve_runtime, seed_everything


def test_cpu_runtime_is_fp32_and_autocast_is_a_noop():
    rt = resolve_runtime("cpu", "auto")
    assert rt.device.type == "cpu" and rt.dtype == torch.float32 and rt.gpus == 0
    with rt.autocast():
        assert (torch.ones(2) @ torch.ones(2)).dtype == torch.float32


def test_no_silent_downgrade():
    with pytest.raises(ConfigError, match="fp16"):
        resolve_runtime("cpu", "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_runtime("cuda", "auto")
    with pytest.raises(ConfigError, match="precision"):
        resolve_runtime("cpu", "fp8")


@pytest.mark.parametrize("device, words", [("bogus", "is not a device"), ("cuda:x", "is not a device"),
                                           ("meta", "runs on cpu or cuda")])
def test_bad_device_is_one_line(device, words, capsys):
    with pytest.raises(ConfigError, match=words):
        resolve_runtime(device)


def test_bad_device_from_the_cli_is_one_line(tmp_path, capsys):
    from tests.conftest import run_cli

    assert run_cli("finetune", "-c", "finetune/tiny_cpu", "data.name=digits", "device=bogus",
                   f"out_dir={tmp_path / 'r'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "device='bogus' is not a device" in err[0]


def test_seeds():
    assert seed_everything(7) == 7 and seed_everything(7, rank_=2) == 9
    a = torch.rand(3)
    seed_everything(7)
    torch.rand(3)
    assert derive_seed(1, "stage", 0) == derive_seed(1, "stage", 0)
    assert len({derive_seed(1, "stage", e) for e in range(100)}) == 100
    assert a.shape == (3,)


def test_rank_zero(monkeypatch):
    assert is_main()
    monkeypatch.setenv("RANK", "1")
    assert not is_main()


def test_one_precision_policy_for_training_inversion_and_generation(monkeypatch):
    import torch

    from synthtl.config import GeneratorConfig, StyleConfig
    from synthtl.generation.pipeline import generator_runtime
    from synthtl.runtime import resolve_runtime
    from synthtl.style.recipe import style_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cuda = GeneratorConfig(device="cuda")
    assert resolve_runtime("cuda").dtype == torch.bfloat16  # training
    assert style_runtime(StyleConfig(generator=cuda)).dtype == torch.bfloat16  # frozen models of inversion
    assert generator_runtime(cuda).dtype == torch.float16  # Stable Diffusion inference
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_runtime("cuda").dtype == style_runtime(StyleConfig(generator=cuda)).dtype == torch.float16
    for rt in (resolve_runtime("cpu"), generator_runtime(GeneratorConfig(device="cpu")),
               style_runtime(StyleConfig(generator=GeneratorConfig(device="cpu")))):
        assert rt.dtype == torch.float32


def test_cpu_threads_follow_the_cores_this_process_may_use(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2})  # e.g. a Slurm or container limit
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert runtime.cpu_threads() == 3 and runtime.cpu_threads(2) == 1 and runtime.cpu_threads(5) == 1
        resolve_runtime("cpu")
        assert torch.get_num_threads() == 3
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        resolve_runtime("cpu")
        assert torch.get_num_threads() == 2  # the user's OMP_NUM_THREADS wins
    finally:
        torch.set_num_threads(before)
