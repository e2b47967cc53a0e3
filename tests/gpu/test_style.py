"""Textual inversion on CUDA in bf16 (SD v1.5's architecture): one step moves the new token's vector and nothing
else, and the learned vector stays fp32."""

import torch

from synthtl.config import StyleConfig, load_config
from synthtl.runtime import resolve_runtime
from synthtl.style import train as style_train
from tests.gpu.conftest import needs_cuda, plain_pipeline, sd15_on_gpu

pytestmark = needs_cuda


def test_bf16_inversion_step_changes_only_the_token_rows():
    from diffusers import DDPMScheduler

    rt = resolve_runtime("cuda", "bf16")
    pipe = style_train.freeze(plain_pipeline(sd15_on_gpu(torch.bfloat16)))
    cfg = load_config(StyleConfig, None, ["resolution=256", "batch_size=2"])
    inv = style_train.add_tokens(pipe.tokenizer, pipe.text_encoder, cfg, 3, rt.device)
    hook = style_train.install_hook(pipe.text_encoder, inv)
    params = inv.learned if isinstance(inv.learned, list) else [inv.learned]
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params)
    vocab = torch.arange(len(pipe.tokenizer), device="cuda")

    def effective_table() -> torch.Tensor:  # what the text encoder reads for every id, hook included
        with torch.no_grad():
            return pipe.text_encoder.get_input_embeddings()(vocab[None])[0].float().clone()

    frozen = {f"{m}.{n}": p.detach().clone() for m in ("unet", "vae", "text_encoder")
              for n, p in getattr(pipe, m).named_parameters()}
    before = effective_table()
    opt = torch.optim.AdamW(params, lr=5e-3)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 4, 32, 32, generator=g).to("cuda", torch.bfloat16)
    ids = pipe.tokenizer([f"a fox photo in the style of {inv.prompt_token(0)}."] * 2, padding="max_length",
                         truncation=True, max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    noise = torch.randn(lat.shape, generator=g).to("cuda", torch.bfloat16)
    loss = style_train.diffusion_loss(pipe, sched, lat, ids.cuda(), noise, torch.tensor([10, 500], device="cuda"), rt)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    opt.step()
    after = effective_table()
    changed = (before != after).any(dim=1).nonzero().flatten().tolist()
    assert changed == inv.ids.tolist()
    for name, p in frozen.items():
        module, _, rest = name.partition(".")
        assert torch.equal(dict(getattr(pipe, module).named_parameters())[rest], p), name
    assert all(p.grad is None for m in (pipe.unet, pipe.text_encoder, pipe.vae) for p in m.parameters())
    hook.remove()
