"""`synthtl learn-style`: Dataset Style Inversion (one token S* for a dataset) or per-class textual inversion.

Paper (docs/method.md, point 5): one pseudo-token for the whole dataset, learned from its real training images with
prompts that name each image's class ("a {class} photo in the style of S*"), ~20k steps. Ours: per-class mode
(one token per class, same prompts: a clean comparison), VAE latents cached once (with flipped variants), the
frozen models in bf16/fp16 on GPU, the learned vectors as separate fp32 parameters (one per token) written into the
text encoder's embedding output by a hook, so no other embedding row can change.

Per-class mode trains N tokens in one process as if they were N separate runs (docs/method.md, "Per-class textual
inversion"): every step's batch holds one class, classes take turns, and a token that is not in a batch gets no
gradient, so AdamW leaves it alone (no weight decay, no moment update, no step count); its warmup follows its own
update count.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from synthtl import identity
from synthtl.config import StyleConfig, to_yaml
from synthtl.data.datasets import load_data
from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb
from synthtl.data.splits import train_indices, write_split
from synthtl.errors import BadImageError, ConfigError, DataError
from synthtl.files import (
    exclusive,
    load_torch,
    read_json,
    remove_temps,
    save_torch,
    sha256_file,
    write_bytes,
    write_json,
    write_text,
)
from synthtl.generation.families import is_sdxl, text_encoders, tokenizers
from synthtl.generation.styles import EMBEDS, STYLE_JSON
from synthtl.runtime import Runtime, derive_seed, is_main, resolve_runtime, world_size

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # one parameter and param group per token
DEFAULT_TEMPLATES = [  # ours: each names the image's class, as the paper's DSI prompt does
    "a {} photo in the style of {token}.",
    "a photo of a {} in the style of {token}.",
    "a rendition of a {} in the style of {token}.",
    "a picture of a {} in the style of {token}.",
    "a cropped photo of a {} in the style of {token}.",
    "a close-up photo of a {} in the style of {token}.",
]


def style_runtime(cfg: StyleConfig) -> Runtime:
    """Frozen models in bf16 on GPU (fp16 where bf16 is missing), fp32 on CPU; the learned vectors stay fp32."""
    return resolve_runtime(cfg.generator.device, cfg.generator.dtype, auto_gpu="bf16")


def class_token(base: str, index: int) -> str:
    return f"{base[:-1]}-{index}>" if base.endswith(">") else f"{base}-{index}"


@dataclass
class Inversion:
    """The learnable state: new tokens (each with `vectors` sub-tokens), their fp32 vectors and update counts."""

    tokens: list[str]  # one per class (class mode) or one (dataset mode)
    sub_tokens: list[list[str]]  # the tokenizer entries of each token: [S*, S*_1, ...]
    ids: torch.Tensor  # tokenizer ids of every sub-token, flattened in token order
    learned: list[torch.nn.Parameter]  # one (vectors, dim) float32 parameter per token, so each has its own Adam state
    updates: list[int] = field(default_factory=list)  # optimizer steps each token has taken
    widths: list[int] = field(default_factory=list)  # one per text encoder: each token's vectors side by side
    encoder_ids: list[torch.Tensor] = field(default_factory=list)  # `ids` in each text encoder's tokenizer

    def prompt_token(self, t: int) -> str:
        """What a prompt contains for token t: every sub-token, as diffusers' multi-vector convention does."""
        return " ".join(self.sub_tokens[t])

    def state(self) -> dict[str, torch.Tensor]:
        """{token: (vectors, dim)}: the learned_embeds.safetensors layout; with two text encoders (SDXL, one token)
        diffusers' SDXL layout {"clip_l": ..., "clip_g": ...} instead (`sdxl.split_state`)."""
        state = {tok: p.detach().float().cpu().clone() for tok, p in zip(self.tokens, self.learned, strict=True)}
        if len(self.widths) > 1:
            from synthtl.style.sdxl import split_state

            return split_state(state[self.tokens[0]], self.widths)
        return state


def add_tokens(tokenizer, text_encoder, cfg: StyleConfig, num_classes: int, device: torch.device) -> Inversion:
    """Adds the new tokens to the tokenizer and embedding table; the learned vectors start from the initializer.

    Args:
        tokenizer: The tokenizer, or a list with one per text encoder (SDXL: two); the tokens are added to each.
        text_encoder: The text encoder, or a list in the same order. With several, each token's parameter holds one
            vector per encoder side by side (SDXL base: 768 + 1280 wide), each from the initializer in its encoder.

    Raises:
        ConfigError: a token already in a tokenizer, or an initializer that is not exactly one token.
    """
    toks = tokenizer if isinstance(tokenizer, list) else [tokenizer]
    encoders = text_encoder if isinstance(text_encoder, list) else [text_encoder]
    tokens = [cfg.token] if cfg.mode == "dataset" else [class_token(cfg.token, c) for c in range(num_classes)]
    sub_tokens = [[t] + [f"{t}_{i}" for i in range(1, cfg.vectors)] for t in tokens]
    flat = [s for subs in sub_tokens for s in subs]
    encoder_ids, inits = [], []
    for tok, encoder in zip(toks, encoders, strict=True):
        ids, init = _add_to_vocab(tok, encoder, cfg, flat)
        encoder_ids.append(ids.to(device))
        inits.append(init)
    init = torch.cat(inits)
    learned = [torch.nn.Parameter(init.repeat(len(subs), 1).to(device)) for subs in sub_tokens]
    return Inversion(tokens, sub_tokens, encoder_ids[0], learned, [0] * len(tokens), [len(i) for i in inits],
                     encoder_ids)


def _add_to_vocab(tokenizer, text_encoder, cfg: StyleConfig, flat: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Adds `flat` to one tokenizer and its embedding table; returns (their ids, the initializer's fp32 vector)."""
    init_ids = tokenizer.encode(cfg.initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        raise ConfigError(f"initializer={cfg.initializer!r} is {len(init_ids)} tokens for this tokenizer; choose a "
                          "word that is a single token (e.g. photo, style, painting)")
    text_encoder.requires_grad_(False)  # only the separate fp32 vectors learn
    vocab = tokenizer.get_vocab()
    # "photo" is stored as "photo</w>" in CLIP's vocabulary: adding it would silently re-map that word everywhere.
    clash = [s for s in flat if s in vocab or f"{s.lower()}</w>" in vocab]
    if clash:
        raise ConfigError(f"token {clash[0]!r} is already in the tokenizer; pick another style.token (e.g. "
                          "<my-dataset-style>)")
    tokenizer.add_tokens(flat)
    try:
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    except TypeError:  # transformers < 4.46
        text_encoder.resize_token_embeddings(len(tokenizer))
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(flat))
    table = text_encoder.get_input_embeddings().weight
    init = table[init_ids[0]].detach().float().clone()
    with torch.no_grad():
        table[ids] = init.to(table.dtype)  # the table rows are never read: the hook replaces them
    return ids, init


def install_hook(text_encoder, inv: Inversion, encoder: int = 0):
    """Makes the embedding layer output the fp32 learned vectors (cast) at the new tokens' positions.

    Only the tokens that occur in the prompts enter the graph, so the others get no gradient (and do not step).
    `encoder` is the text encoder's place in `add_tokens`' list: its ids and its columns of the learned vectors.
    """
    size = len(text_encoder.get_input_embeddings().weight)
    token_of = torch.full((size,), -1, dtype=torch.long)
    vector_of = torch.zeros(size, dtype=torch.long)
    widths = inv.widths or [inv.learned[0].shape[1]]
    lo, hi = sum(widths[:encoder]), sum(widths[:encoder + 1])
    flat = iter((inv.encoder_ids[encoder] if inv.encoder_ids else inv.ids).tolist())
    for t, subs in enumerate(inv.sub_tokens):
        for v in range(len(subs)):
            i = next(flat)
            token_of[i], vector_of[i] = t, v
    token_of, vector_of = token_of.to(inv.ids.device), vector_of.to(inv.ids.device)

    def hook(module, inputs, output):
        ids = inputs[0]
        tok = token_of.to(ids.device)[ids]
        present = tok[tok >= 0].unique().tolist()
        if not present:
            return output
        vec = vector_of.to(ids.device)[ids]
        out = output.clone()
        for t in present:
            mask = tok == t
            out[mask] = inv.learned[t][vec[mask], lo:hi].to(out.dtype)
        return out

    return text_encoder.get_input_embeddings().register_forward_hook(hook)


def make_optimizer(inv: Inversion, cfg: StyleConfig) -> torch.optim.AdamW:
    """AdamW with one param group per token (group t holds `inv.learned[t]`).

    AdamW skips a parameter whose grad is None (no decay, no moments, no step), and a token absent from a batch has
    none (see `install_hook`, `optimizer_step`): no token moves another.
    """
    return torch.optim.AdamW([{"params": [p]} for p in inv.learned], lr=base_lr(cfg), weight_decay=cfg.weight_decay)


def base_lr(cfg: StyleConfig) -> float:
    return cfg.lr * (cfg.batch_size * cfg.grad_accum if cfg.scale_lr else 1)


def token_lr(cfg: StyleConfig, updates: int) -> float:
    """The lr of a token's next update: linear warmup over the token's own updates, then constant."""
    lr = base_lr(cfg)
    return lr * min(1.0, (updates + 1) / cfg.warmup_steps) if cfg.warmup_steps else lr


# -------------------------------------------------------------------------------------------------------------- data
def training_images(cfg: StyleConfig, out: Path) -> ImageList:
    """The real training images (train split, or its few-shot subset): never a test image."""
    d = cfg.data
    images = load_data(d, "train")
    seed = d.split_seed if d.split_seed >= 0 else cfg.seed
    idx = train_indices(images, d, seed)[0]  # the selection fine-tuning makes (unreadable shots skipped later)
    if cfg.images_per_class:
        rng = np.random.default_rng(derive_seed(seed, "style-images") % 2**32)
        keep = []
        for cls in images.subset(idx).by_class():
            keep += sorted(rng.permutation(cls)[: cfg.images_per_class].tolist())
        idx = [idx[i] for i in sorted(keep)]
    if not idx:
        raise DataError(f"dataset {d.name!r} has no images in the chosen training split; nothing to learn a style from")
    write_split(out / "splits" / "train.json", images, idx, kind="style-train", shots=d.shots, seed=seed)
    return images.subset(idx)


def _square(img: Image.Image, size: int, center: bool) -> Image.Image:
    """Short side to `size`; with `center`, also the centre square."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    if center:
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


@torch.inference_mode()
def cache_latents(vae, images: ImageList, cfg: StyleConfig, rt: Runtime,
                  sizes: list | None = None) -> tuple[list, list[int], int]:
    """VAE latent means of every image (and of its mirror image), computed once; returns (latents, labels, skipped).

    latents[i] is a (variants, 4, h, w) tensor on CPU in the frozen models' dtype. `sizes`, when given, receives
    latents[i]'s (original height, original width, crop top, crop left) in pixels (SDXL's size conditioning).
    """
    out, labels, skipped = [], [], 0
    bar = tqdm(total=len(images), desc="encode", unit="img", disable=not (cfg.progress and is_main()))
    for i in range(len(images)):
        bar.update()
        try:
            original = load_rgb(images.path(i))
            img = _square(original, cfg.resolution, cfg.crop == "center")
        except BadImageError:
            if cfg.data.on_bad_image == "skip":
                skipped += 1
                continue
            raise
        variants = [img] + ([img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)] if cfg.random_flip else [])
        x = torch.stack([torch.from_numpy(np.asarray(v, dtype=np.float32)).permute(2, 0, 1) for v in variants])
        x = (x / 127.5 - 1).to(rt.device, vae.dtype)
        with rt.autocast():
            lat = vae.encode(x).latent_dist.mean
        out.append(lat.to("cpu", vae.dtype))
        labels.append(images.labels[i])
        if sizes is not None:
            resized = _square(original, cfg.resolution, False).size if cfg.crop == "center" else img.size
            top, left = (resized[1] - img.height) // 2, (resized[0] - img.width) // 2  # as `_square` cropped
            sizes.append((original.height, original.width, top, left))
    bar.close()
    if not out:
        raise DataError("none of the training images could be read")
    return out, labels, skipped


def by_class_index(labels: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        out.setdefault(y, []).append(i)
    return out


def sample_batch(latents: list, by_class: dict[int, list[int]], cfg: StyleConfig, size: int,
                 g: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """A class-balanced batch: a class uniformly at random, then one of its images, a flip and a crop."""
    picks = sample_picks(latents, by_class, cfg, size, g)
    return crop_picks(latents, picks, size), [y for y, *_ in picks]


def sample_picks(latents: list, by_class: dict[int, list[int]], cfg: StyleConfig, size: int,
                 g: torch.Generator) -> list[tuple[int, int, int, int, int]]:
    """`sample_batch`'s draws: (class, latent index, variant, crop top, crop left) per item, crops in latent cells."""
    present = sorted(by_class)
    picks = []
    for _ in range(cfg.batch_size):
        y = present[int(torch.randint(len(present), (1,), generator=g))]
        i = by_class[y][int(torch.randint(len(by_class[y]), (1,), generator=g))]
        v = int(torch.randint(len(latents[i]), (1,), generator=g))
        h, w = latents[i].shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=g)) if h > size else 0
        left = int(torch.randint(w - size + 1, (1,), generator=g)) if w > size else 0
        picks.append((y, i, v, top, left))
    return picks


def crop_picks(latents: list, picks: list[tuple[int, int, int, int, int]], size: int) -> torch.Tensor:
    return torch.stack([latents[i][v][:, top:top + size, left:left + size] for _, i, v, top, left in picks])


def class_of_step(cfg: StyleConfig, classes: list[int], step: int) -> int:
    """Per-class mode: the class whose images fill step `step`'s batch.

    Classes take turns, in a fresh seeded order every round of len(classes) steps, so after k rounds every token has
    had exactly k updates, each on a batch of its own class: what a separate run with this batch size does.
    """
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "style-class-order", step // len(classes)))
    return classes[int(torch.randperm(len(classes), generator=g)[step % len(classes)])]


# -------------------------------------------------------------------------------------------------------------- run
def freeze(pipe):
    """UNet, VAE and text encoders frozen and in eval mode (their activations still carry gradients to the tokens)."""
    for m in (pipe.unet, pipe.vae, *text_encoders(pipe)):
        m.requires_grad_(False)
        m.eval()
    return pipe


def _components(cfg: StyleConfig, rt: Runtime):
    from diffusers import DDPMScheduler

    from synthtl.generation.pipeline import load_pipeline

    gen = cfg.generator
    if cfg.method == "lora":
        # A LoRA is injected into the attention's to_q/to_k/to_v after loading: fused q/k/v projections (on CUDA)
        # would bypass those layers, so most LoRA matrices would never get a gradient. A compiled UNet would not see
        # the injected layers either.
        gen = dataclasses.replace(gen, fuse_qkv=False, compile=False)
    pipe = freeze(load_pipeline(gen, rt))
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    return pipe, DDPMScheduler.from_config(pipe.scheduler.config)


def diffusion_loss(pipe, noise_sched, lat: torch.Tensor, ids: torch.Tensor | list[torch.Tensor], noise: torch.Tensor,
                   t: torch.Tensor, rt: Runtime, time_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The denoising loss of latents `lat` (already scaled) conditioned on token ids (SDXL: one id tensor per text
    encoder, and the batch's size conditioning `time_ids`). The target is what the model predicts: the noise, or the
    velocity for v-prediction models (SD 2.x at 768 px)."""
    kind = noise_sched.config.prediction_type
    if kind not in ("epsilon", "v_prediction"):
        raise ConfigError(f"the generator's scheduler predicts {kind!r}; style learning supports epsilon and "
                          "v_prediction models (SD 1.x/2.x, SDXL)")
    with rt.autocast():
        ehs, added = encode_ids(pipe, ids, time_ids)
        noisy = noise_sched.add_noise(lat, noise, t)
        pred = pipe.unet(noisy, t, ehs, added_cond_kwargs=added).sample
    target = noise_sched.get_velocity(lat, noise, t) if kind == "v_prediction" else noise
    return F.mse_loss(pred.float(), target.float())


def encode_ids(pipe, ids: torch.Tensor | list[torch.Tensor],
               time_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict | None]:
    """The UNet's text conditioning: (encoder hidden states, SDXL's added conditions or None)."""
    if isinstance(ids, list):  # one id tensor per text encoder: SDXL
        from synthtl.style.sdxl import conditioning

        return conditioning(pipe, ids, time_ids)
    return pipe.text_encoder(ids)[0], None


def tokenize_all(pipe, prompts: list[str], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    """`tokenize` with each of the pipeline's tokenizers: one tensor (SD), or one per text encoder (SDXL)."""
    ids = [tokenize(tok, prompts).to(device) for tok in tokenizers(pipe)]
    return ids if len(ids) > 1 else ids[0]


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Prompt ids padded to the text encoder's length: the ids are fed to the text encoder as they are."""
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


def _prompts(cfg: StyleConfig, inv: Inversion, names: tuple[str, ...], ys: list[int], g: torch.Generator) -> list[str]:
    templates = cfg.templates or DEFAULT_TEMPLATES
    out = []
    for y in ys:
        t = templates[int(torch.randint(len(templates), (1,), generator=g))]
        token = inv.prompt_token(0 if cfg.mode == "dataset" else y)
        out.append(t.replace("{token}", token).replace("{}", names[y]))
    return out


@dataclass
class MicroBatch:
    """One forward/backward's worth of training data, drawn before any compute."""

    latents: torch.Tensor  # scaled VAE latents (b, 4, h, w) on the device
    noise: torch.Tensor
    timesteps: torch.Tensor
    prompts: list[str]
    time_ids: torch.Tensor | None = None  # SDXL: (b, 6) original size, crop top-left, target size (`sdxl.time_ids`)


def draw_micro_batch(pipe, noise_sched, inv: Inversion, cfg: StyleConfig, names: tuple[str, ...], latents: list,
                     by_class: dict[int, list[int]], rt: Runtime, g: torch.Generator,
                     sizes: list | None = None) -> MicroBatch:
    """Images from `by_class` (one class in per-class mode), noise, timesteps and prompts, all drawn from `g`.

    SDXL also gets each image's size conditioning from `sizes` (`cache_latents`) and the crop drawn here.
    """
    batch, ys = draw_images(pipe, noise_sched, cfg, latents, by_class, rt, g, sizes)
    batch.prompts = _prompts(cfg, inv, names, ys, g)
    return batch


def draw_images(pipe, noise_sched, cfg: StyleConfig, latents: list, by_class: dict[int, list[int]], rt: Runtime,
                g: torch.Generator, sizes: list | None = None) -> tuple[MicroBatch, list[int]]:
    """A micro-batch without its prompts (the caller words them), and its classes: what inversion and LoRA share.

    SDXL (`sizes` from `cache_latents`) also gets each image's time ids: its original size, the crop drawn here (in
    pixels of the resized image) and the target size.
    """
    cells = cfg.resolution // 8
    time_ids = None
    if is_sdxl(pipe):
        from synthtl.style.sdxl import time_ids as sdxl_time_ids

        if sizes is None:
            raise ValueError("SDXL needs each image's sizes: pass cache_latents(..., sizes=[]) here")
        picks = sample_picks(latents, by_class, cfg, cells, g)
        lat, ys = crop_picks(latents, picks, cells), [y for y, *_ in picks]
        px = pipe.vae_scale_factor  # pixels per latent cell (8 in SD/SDXL)
        time_ids = torch.tensor([sdxl_time_ids(sizes[i][:2], (sizes[i][2] + top * px, sizes[i][3] + left * px),
                                               (cfg.resolution, cfg.resolution)) for _, i, _, top, left in picks])
    else:
        lat, ys = sample_batch(latents, by_class, cfg, cells, g)
    lat = lat.to(rt.device, pipe.unet.dtype) * pipe.vae.config.scaling_factor
    noise = torch.randn(lat.shape, generator=g).to(rt.device, lat.dtype)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(ys),), generator=g).to(rt.device)
    return MicroBatch(lat, noise, t, [], time_ids), ys


def inversion_step(pipe, noise_sched, inv: Inversion, opt: torch.optim.Optimizer, cfg: StyleConfig,
                   batches: list[MicroBatch], rt: Runtime, scaler: torch.amp.GradScaler | None = None) -> float:
    """One optimizer step on `batches` (gradients accumulated over them); returns the loss.

    Only the tokens named in the prompts get a gradient, so only they change and only their update counts grow. A
    per-class run feeds batches of one class; a mixed batch also leaves absent tokens alone, but scales each
    present token's gradient by its share of the batch.
    """
    for t, group in enumerate(opt.param_groups):  # group t holds token t (make_optimizer)
        group["lr"] = token_lr(cfg, inv.updates[t])
    total = 0.0
    for b in batches:
        ids = tokenize_all(pipe, b.prompts, rt.device)
        loss = diffusion_loss(pipe, noise_sched, b.latents, ids, b.noise, b.timesteps, rt, b.time_ids) / len(batches)
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.item()
    stepped = [t for t, p in enumerate(inv.learned) if p.grad is not None]
    if optimizer_step(opt, scaler):
        for t in stepped:
            inv.updates[t] += 1
    return total


def optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> bool:
    """One (loss-scaled, for fp16) optimizer step, then the gradients set to None; returns whether it stepped.

    None, not zero: a zero gradient would make AdamW decay the token and update its moments.
    """
    taken = True
    if scaler:
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        taken = scaler.get_scale() >= scale  # the scaler lowers its scale exactly when it skipped (inf/NaN grads)
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return taken


def _validation_grid(pipe, inv: Inversion, cfg: StyleConfig, names: tuple[str, ...], path: Path) -> None:
    """A grid: one row per validation class, fixed seeds, the current embedding."""
    from diffusers import DPMSolverMultistepScheduler

    from synthtl.generation.families import family_of_pipeline

    family = family_of_pipeline(pipe)
    val = family.pipeline_class()(**{**pipe.components, **family.kwargs(),
                                     "scheduler": DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)})
    val.set_progress_bar_config(disable=True)
    template = (cfg.templates or DEFAULT_TEMPLATES)[0]
    rows = []
    for c in range(min(cfg.validation_classes, len(names))):
        token = inv.prompt_token(0 if cfg.mode == "dataset" else c)
        prompt = template.replace("{token}", token).replace("{}", names[c])
        gens = [torch.Generator("cpu").manual_seed(cfg.seed + k) for k in range(cfg.validation_images)]
        with torch.inference_mode():
            # Embedded here, as in training: given the prompt text, diffusers would expand the already expanded
            # multi-vector token again ("S* S*_1" -> "S* S*_1 S* S*_1_1").
            embeds, added = encode_ids(pipe, tokenize_all(pipe, [prompt] * cfg.validation_images,
                                                          pipe.text_encoder.device))
            pooled = {"pooled_prompt_embeds": added["text_embeds"]} if added else {}  # SDXL; sizes: the defaults
            imgs = val(prompt_embeds=embeds, **pooled, num_inference_steps=cfg.validation_steps,
                       guidance_scale=cfg.generator.guidance, height=cfg.resolution, width=cfg.resolution,
                       generator=gens).images
        rows.append(imgs)
    write_sheet(rows, path)


def write_sheet(rows: list[list[Image.Image]], path: Path) -> None:
    """A validation grid: one row of images per class, written atomically as PNG."""
    import io

    w, h = rows[0][0].size
    sheet = Image.new("RGB", (w * len(rows[0]), h * len(rows)), "white")
    for r, imgs in enumerate(rows):
        for k, im in enumerate(imgs):
            sheet.paste(im, (k * w, r * h))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def _peak_memory_mb(rt: Runtime) -> float:
    if rt.is_cuda:
        return torch.cuda.max_memory_allocated(rt.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _load_checkpoint(path: Path) -> dict:
    return load_torch(path, "synthtl style checkpoint", "delete it to start the style over")


def run_learn_style(cfg: StyleConfig) -> dict:
    """Learns (or resumes, or skips if finished) a style embedding; returns style.json's content.

    Raises:
        ConfigError: started as several processes, or the folder holds another config's (or an older format's) work.
        LockedError: another process is writing the same out_dir.
    """
    if world_size() > 1:  # checked before anything loads: N ranks would each learn, and race on the same files
        raise ConfigError(f"learn-style was started as {world_size()} processes (WORLD_SIZE): run learn-style as a "
                          "single process; style learning has no multi-GPU mode yet (start it without torchrun)")
    if cfg.method == "lora":  # ours, beyond the paper: a LoRA on the generator instead of tokens
        from synthtl.style.lora import run_learn_lora

        return run_learn_lora(cfg)
    return learn_in_folder(cfg, _learn, _finished)


def _finished(cfg: StyleConfig, out: Path, done: dict) -> bool:
    """Whether a style.json of this config is a finished embedding (its file is there)."""
    return (out / EMBEDS).is_file()


def learn_in_folder(cfg: StyleConfig, learn: Callable[[StyleConfig, Path, str], dict],
                    finished: Callable[[StyleConfig, Path, dict], bool] = lambda cfg, out, done: True) -> dict:
    """The folder's side of every style method: holds its lock, removes a killed run's temp files, refuses another
    config's style (finished or not: `synthtl.identity`), returns a finished style (per `finished`), else claims the
    folder and calls `learn(cfg, out, identity hash)`, which resumes from its checkpoints."""
    out = Path(cfg.out_dir)
    ident = identity.identity(cfg)
    with exclusive(out, "style folder"):
        remove_temps(out, recursive=True)  # what a killed run's atomic writes left; safe: we hold the lock
        identity.check(out, "style", ident)
        done = read_json(out / STYLE_JSON) if (out / STYLE_JSON).is_file() else None
        if done is not None and finished(cfg, out, done):
            if is_main():
                print(f"[synthtl] {out} is already finished; nothing to do")
            return done
        identity.claim(out, "style", ident)
        write_text(out / "config.yaml", to_yaml(cfg))
        return learn(cfg, out, identity.digest(ident))


def _learn(cfg: StyleConfig, out: Path, identity: str) -> dict:
    """Setup, the step loop (checkpointed), the final grid and files; the caller holds the folder's lock."""
    t_start = time.perf_counter()
    images = training_images(cfg, out)
    total_steps = cfg.steps_per_class * images.num_classes if cfg.steps_per_class else cfg.steps
    if cfg.mode == "class" and total_steps < images.num_classes:
        raise ConfigError(f"mode=class with steps={total_steps} leaves some of the {images.num_classes} class tokens "
                          "untrained; set steps_per_class (paper: 5000) or steps >= the number of classes")
    rt = style_runtime(cfg)
    pipe, noise_sched = _components(cfg, rt)
    if is_sdxl(pipe):
        from synthtl.style.sdxl import check_config

        check_config(cfg)
    inv = add_tokens(tokenizers(pipe), text_encoders(pipe), cfg, images.num_classes, rt.device)
    hooks = [install_hook(encoder, inv, k) for k, encoder in enumerate(text_encoders(pipe))]
    sizes: list[tuple[int, int, int, int]] | None = [] if is_sdxl(pipe) else None  # SDXL's size conditioning
    latents, labels, skipped = cache_latents(pipe.vae, images, cfg, rt, sizes)
    groups = by_class_index(labels)
    missing = [images.names[c] for c in range(images.num_classes) if c not in groups]
    if cfg.mode == "class" and missing:
        raise DataError(f"class {missing[0]!r} has no readable training image, so its token cannot be learned; add "
                        "images of it or use mode=dataset")
    opt = make_optimizer(inv, cfg)
    scaler = torch.amp.GradScaler("cuda") if rt.dtype == torch.float16 else None
    ckpt = out / CHECKPOINT
    step, losses, seconds = _resume(ckpt, identity, cfg, inv, opt) if ckpt.is_file() else (0, [], 0.0)
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc="learn-style", unit="step",
               disable=not (cfg.progress and is_main()))
    while step < total_steps:
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "style-step", step))
        pool = groups
        if cfg.mode == "class":
            c = class_of_step(cfg, sorted(groups), step)
            pool = {c: groups[c]}
        batches = [draw_micro_batch(pipe, noise_sched, inv, cfg, images.names, latents, pool, rt, g, sizes)
                   for _ in range(cfg.grad_accum)]
        losses.append(inversion_step(pipe, noise_sched, inv, opt, cfg, batches, rt, scaler))
        step += 1
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        bar.update()
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            seconds_now = seconds + time.perf_counter() - t0
            if is_main():
                save_torch(ckpt, {"format": CHECKPOINT_FORMAT, "config_hash": identity, "step": step,
                                  "learned": [p.detach().cpu() for p in inv.learned], "updates": inv.updates,
                                  "optimizer": opt.state_dict(), "losses": losses, "seconds": seconds_now})
        if cfg.validate_every and step % cfg.validate_every == 0 and step != total_steps and is_main():
            _validation_grid(pipe, inv, cfg, images.names, out / "validation" / f"step-{step:06d}.png")
    bar.close()
    seconds += time.perf_counter() - t0
    if is_main():
        _validation_grid(pipe, inv, cfg, images.names, out / "validation" / f"step-{step:06d}.png")
    for hook in hooks:
        hook.remove()
    return _save(cfg, out, inv, images, losses, seconds, time.perf_counter() - t_start, skipped, identity, rt,
                 total_steps)


def _resume(ckpt: Path, identity: str, cfg: StyleConfig, inv: Inversion,
            opt: torch.optim.Optimizer) -> tuple[int, list[float], float]:
    """Loads a checkpoint into `inv` and `opt`; returns (step, losses, seconds)."""
    state = _load_checkpoint(ckpt)
    if state.get("config_hash") != identity or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{ckpt} belongs to another config or version of synthtl; delete it to start over")
    with torch.no_grad():
        for p, saved in zip(inv.learned, state["learned"], strict=True):
            p.copy_(saved)
    opt.load_state_dict(state["optimizer"])
    inv.updates[:] = list(state["updates"])
    return state["step"], list(state["losses"]), state["seconds"]


def _save(cfg: StyleConfig, out: Path, inv: Inversion, images: ImageList, losses: list[float], seconds: float,
          wall: float, skipped: int, identity: str, rt: Runtime, total_steps: int) -> dict:
    from safetensors.torch import save

    state = inv.state()
    write_bytes(out / EMBEDS, save(state))
    if cfg.mode == "class":  # one diffusers-format file per token as well
        for tok, emb in state.items():
            write_bytes(out / "tokens" / f"{tok.strip('<>')}.safetensors", save({tok: emb}))
    window = max(1, len(losses) // 100)
    curve = [{"step": (i + 1) * window, "loss": float(np.mean(losses[i * window:(i + 1) * window]))}
             for i in range(math.ceil(len(losses) / window))]
    per_class = (cfg.steps_per_class or total_steps // images.num_classes) if cfg.mode == "class" else None
    info = {
        "mode": cfg.mode, "tokens": inv.tokens, "vectors": cfg.vectors, "initializer": cfg.initializer,
        "class_tokens": {n: inv.tokens[c] for c, n in enumerate(images.names)} if cfg.mode == "class" else {},
        "classes": list(images.names), "train_images": len(images), "skipped_images": skipped,
        "split_file": "splits/train.json", "dataset": cfg.data.name, "model": cfg.generator.model,
        "steps": len(losses), "total_steps": total_steps, "steps_per_class": per_class,
        "token_updates": dict(zip(inv.tokens, inv.updates, strict=True)),  # optimizer steps each token took
        "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "lr": cfg.lr,
        "resolution": cfg.resolution, "loss_curve": curve, "train_seconds": seconds, "wall_s": wall,
        "gpu_s": seconds * rt.gpus, "peak_memory_mb": _peak_memory_mb(rt), "device": str(rt.device),
        "dtype": str(rt.dtype).replace("torch.", ""), "hash": sha256_file(out / EMBEDS)[:16],
        "identity": identity}
    if is_main():
        write_json(out / STYLE_JSON, info)
        (out / CHECKPOINT).unlink(missing_ok=True)
        print(f"[synthtl] learned {len(inv.tokens)} token(s) in {seconds:.0f} s "
              f"(final loss {curve[-1]['loss']:.4f}) -> {out / EMBEDS}")
    return info
