"""Textual inversion on CUDA in bf16 (SD v1.5's architecture): one step moves the new token's vector and nothing
else, and the learned vector stays fp32."""

import torch

from synthtl.config import StyleConfig, load_config
from synthtl.style.inversion import InversionRecipe, add_tokens, install_hook
from synthtl.style.recipe import MicroBatch
from tests.gpu.conftest import needs_cuda, plain_pipeline, sd15_on_gpu

pytestmark = needs_cuda


def test_bf16_inversion_step_changes_only_the_token_rows(tmp_path):
    from diffusers import DDPMScheduler

    cfg = load_config(StyleConfig, None, ["resolution=256", "batch_size=2", "mode=class", "generator.device=cuda",
                                          "generator.dtype=bf16"])
    r = InversionRecipe(cfg, tmp_path)
    pipe = plain_pipeline(sd15_on_gpu(torch.bfloat16))
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False).eval()
    r.pipe, r.noise_sched, r.sdxl, r.scaler = pipe, DDPMScheduler.from_config(pipe.scheduler.config), False, None
    r.inv = inv = add_tokens(pipe, cfg, 3, r.rt.device)
    hook = install_hook(pipe.text_encoder, inv)
    r.opt = torch.optim.AdamW([{"params": [p]} for p in inv.learned], lr=5e-3)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in inv.learned)
    vocab = torch.arange(len(pipe.tokenizer), device="cuda")

    def effective_table() -> torch.Tensor:  # what the text encoder reads for every id, hook included
        with torch.no_grad():
            return pipe.text_encoder.get_input_embeddings()(vocab[None])[0].float().clone()

    frozen = {f"{m}.{n}": p.detach().clone() for m in ("unet", "vae", "text_encoder")
              for n, p in getattr(pipe, m).named_parameters()}
    before = effective_table()
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 4, 32, 32, generator=g).to("cuda", torch.bfloat16)
    noise = torch.randn(lat.shape, generator=g).to("cuda", torch.bfloat16)
    prompts = [f"a fox photo in the style of {inv.prompt_token(0)}."] * 2
    loss = r.step(0, [MicroBatch(lat, noise, torch.tensor([10, 500], device="cuda"), prompts)])
    assert torch.isfinite(torch.tensor(loss)) and inv.updates == [1, 0, 0]
    after = effective_table()
    changed = (before != after).any(dim=1).nonzero().flatten().tolist()
    assert changed == inv.ids[:1].tolist()
    for name, p in frozen.items():
        module, _, rest = name.partition(".")
        assert torch.equal(dict(getattr(pipe, module).named_parameters())[rest], p), name
    assert all(p.grad is None for m in (pipe.unet, pipe.text_encoder, pipe.vae) for p in m.parameters())
    hook.remove()
