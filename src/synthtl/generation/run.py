"""`synthtl generate`: plan -> this shard's unfinished rows -> batched denoising -> overlapped writes -> log.

A killed worker loses at most the batch in flight: an image is written atomically, then logged in the shard's
append-only progress file (a torn last line is cut); a restart skips logged images whose file exists and removes the
shard's temp files. One writer per shard (a lock); plan and finalize run under the set's lock. Black or NaN/Inf
outputs are redrawn with a new seed (recorded); CUDA OOM halves the batch; a full disk stops cleanly."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from synthtl import faults, identity
from synthtl.config import GenerateConfig
from synthtl.data import genset
from synthtl.data.cache import resized_jpeg
from synthtl.data.datasets import DATASETS, classnames, load_data
from synthtl.data.genset import PROGRESS_DIR, SetRows, present, read_state
from synthtl.errors import ConfigError, SynthTLError
from synthtl.files import append_jsonl, remove_temps, write_bytes
from synthtl.generation import img2img, shards, styles
from synthtl.generation.families import is_sdxl
from synthtl.generation.pipeline import generator_runtime, load_pipeline
from synthtl.generation.prompts import STYLE_TOKEN, fit_prompt, needs_token, template_set
from synthtl.runtime import dtype_name, is_main

SETTINGS_FORMAT = 1  # of plan.json's settings: what the images depend on


def parse_shard(spec: str) -> tuple[int, int]:
    """(i, N) from "i/N", else from torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if spec:
        i, n = spec.split("/")
        return int(i), int(n)
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def class_list(cfg: GenerateConfig) -> list[tuple[str, str]]:
    """(class id, readable name) of every class to generate, in the dataset's label order."""
    d = cfg.data
    try:  # the on-disk ids (folder names, wnids) when the dataset is present; a built-in one's names suffice otherwise
        train = load_data(d, "train", download=False)
        classes = list(zip(train.classes, train.names, strict=True))
    except SynthTLError:
        if d.name not in DATASETS:
            raise
        classes = [(n, n) for n in classnames(d.name)]
    if cfg.classes:
        wanted = set(cfg.classes)
        unknown = wanted - {x for pair in classes for x in pair}
        if unknown:
            raise ConfigError(f"classes={sorted(unknown)[:5]} are not classes of {d.name}")
        classes = [(c, n) for c, n in classes if c in wanted or n in wanted]
    # A non-UTF-8 folder name (lone surrogates) is prompted with replacement characters; the id keeps the exact name.
    return [(c, n.encode("utf-8", "surrogateescape").decode("utf-8", "replace")) for c, n in classes]


def settings(cfg: GenerateConfig, classes: list[tuple[str, str]], dtype: str, templates: list[str], style_hash: str,
             extra: dict | None = None) -> dict:
    """What the images depend on as resolved here (weights, the dtype "auto" became, templates, style hash, class
    names), recorded in plan.json and every manifest row; `extra`: img2img's keys (`img2img.identity`)."""
    g, p = cfg.generator, cfg.prompts
    weights = identity.generator_weights(g)  # from the weights, so a style embedding cannot change it
    return {**(extra or {}), "format": SETTINGS_FORMAT, "model": weights["model"], "revision": weights["revision"],
            "scheduler": g.scheduler, "steps": g.steps, "guidance": g.guidance, "height": g.height, "width": g.width,
            "dtype": dtype, "templates": templates, "suffix": p.suffix, "negative": p.negative,
            "style_hash": style_hash, "seed": cfg.seed, "classes": [name for _, name in classes],
            "image_format": cfg.image_format, "quality": cfg.quality, "train_copy": cfg.train_copy}


def _prompts_and_tokens(pipe, cfg: GenerateConfig, classes: list[tuple[str, str]], templates: list[str],
                        token_map: dict[str, str], default_token: str) -> tuple[list, list[str]]:
    """Each class's prompt record per template (`fit_prompt`; image i uses template i mod n) and its token."""
    tokenizer = pipe.tokenizer
    convert = getattr(pipe, "maybe_convert_prompt", lambda text, tok: text)  # multi-vector tokens expand to several

    def count(text: str) -> int:  # diffusers' conversion tokenizes without verbose=False: quiet_transformers below
        return len(tokenizer(convert(text, tokenizer), verbose=False).input_ids)

    tokens = [token_map.get(name, default_token) if needs_token(templates) else "" for _, name in classes]
    with styles.quiet_transformers():  # prompts too long on purpose are measured, then cut (`truncated`)
        prompts = [[fit_prompt(templates, name, t, count, tokenizer.model_max_length, cfg.prompts.suffix, tokens[c])
                    for t in range(len(templates))] for c, (_, name) in enumerate(classes)]
    return prompts, tokens


def finished(rows: SetRows, per_class: int) -> bool:
    """The first `per_class` images of every class are finished: the completion record says so and their files
    are there (one listing per class, so a deleted file is redrawn), without reading a log or the manifest."""
    return genset.is_complete(rows.folder, per_class) and bool(present(rows)[rows.idx < per_class].all())


def resume_todo(folder: Path, rows: SetRows, per_class: int, shard: int, num_shards: int) -> tuple[np.ndarray, list]:
    """(this shard's rows, its unfinished ones in generation order); removes the temp files it left when killed."""
    mine = shards.shard_mask(rows, shard, num_shards) & (rows.idx < per_class)
    shards.remove_shard_temps(folder, rows, mine)
    todo = np.flatnonzero(mine & ~read_state(folder).done)
    todo = todo[np.lexsort((rows.cls[todo], rows.idx[todo]))]  # by image index, then class: batches span classes
    return mine, todo.tolist()


def _setup(cfg: GenerateConfig, folder: Path):
    """(pipeline or None if already finished, runtime, planned rows, img2img sources or None).

    The first shard to take the set's lock writes the plan; the others only check it. img2img sources are selected
    (and checked against the test split) first: they are part of the identity."""
    p = cfg.prompts
    templates = template_set(p.templates, p.custom)
    if needs_token(templates) and not p.style_embedding:
        raise ConfigError(f"prompts.templates={p.templates} uses the style token: set prompts.style_embedding to the "
                          "output of `synthtl learn-style`")
    ident = identity.identity(cfg, identity.Resolver(missing={}))  # class names suffice without the dataset
    identity.check(folder, "generate", ident)  # another config's set is refused before anything loads
    classes, rt = class_list(cfg), generator_runtime(cfg.generator)
    style_hash = styles.generation_style_hash(p)  # the embedding's and/or the style LoRA's content hash
    sources = img2img.select_sources(cfg, classes) if cfg.mode == "img2img" else None
    made = settings(cfg, classes, dtype_name(rt.dtype), templates, style_hash,
                    img2img.identity(cfg, sources) if sources else None)
    if sources:
        img2img.refuse_other_sources(folder, made, sources)
    old = genset.check_settings(folder, made)
    planned = genset.rows_of(folder, old) if old is not None and old["per_class"] >= cfg.per_class else None
    if planned is not None and finished(planned, cfg.per_class):
        return None, rt, planned, sources  # a finished set: nothing to load, nothing to write
    pipe = load_pipeline(cfg.generator, rt, style_lora=p.style_lora)
    lora = getattr(pipe, "synthtl_style_lora", None)  # which kind of style LoRA makes the set (for the report)
    notes = {"style_lora": "class" if lora.per_class else "dataset"} if lora is not None else {}
    default_token = styles.load_into_pipeline(pipe, p.style_embedding)[0] if p.style_embedding else STYLE_TOKEN
    token_map = styles.class_tokens(p.style_embedding) if p.style_embedding else {}
    if sources:
        pipe = img2img.pipeline(pipe)  # after the style token is loaded: the two pipelines share the tokenizer
    if planned is not None:
        return pipe, rt, planned, sources
    prompts, tokens = _prompts_and_tokens(pipe, cfg, classes, templates, token_map, default_token)
    table = genset.class_table(classes, prompts, tokens, sources)
    with shards.set_lock(folder):
        identity.claim(folder, "generate", ident)
        rows = genset.write_or_extend(folder, made, table, cfg.per_class, notes)
        remove_temps(folder)  # a killed plan write's temp file (plan and manifest are only written under this lock)
    return pipe, rt, rows, sources


def run_generate(cfg: GenerateConfig) -> dict:
    """Generates (or resumes) this shard's part of the set; returns a summary (this shard's and the whole set's)."""
    shard, num_shards = parse_shard(cfg.shard)
    folder = Path(cfg.out_dir)
    if folder.exists() and not folder.is_dir():  # one clear line instead of a NotADirectoryError
        raise ConfigError(f"out_dir={str(folder)!r} is an existing file; give a folder (new, or a set to resume)")
    with shards.shard_lock(folder, shard, num_shards):
        return _run_shard(cfg, folder, shard, num_shards)


def _run_shard(cfg: GenerateConfig, folder: Path, shard: int, num_shards: int) -> dict:
    pipe, rt, rows, sources = _setup(cfg, folder)
    if pipe is None:
        mine, todo = shards.shard_mask(rows, shard, num_shards) & (rows.idx < cfg.per_class), []
    else:
        mine, todo = resume_todo(folder, rows, cfg.per_class, shard, num_shards)
    t0 = time.perf_counter()
    clock, lock = {"t": t0, "redraws": 0}, threading.Lock()

    def charge(images: int, redraws: int) -> None:  # this shard's cost since its last row, appended (a kill loses
        with lock:                                    # the batch in flight only); called after each logged batch
            t = time.perf_counter()
            append_jsonl(genset.cost_file(folder, shard, num_shards), [{
                "images": images, "seconds": t - clock["t"], "redraws": redraws - clock["redraws"], "gpus": rt.gpus,
                "device": str(rt.device)}])
            clock.update(t=t, redraws=redraws)

    log = folder / PROGRESS_DIR / f"{genset.shard_name(shard, num_shards)}.jsonl"
    stats = _generate(pipe, rows, todo, folder, log, cfg, sources, charge) if todo else {"images": 0, "redraws": 0}
    charge(0, stats["redraws"])  # the time since the last batch
    seconds = clock["t"] - t0  # what the cost log holds
    if pipe is None:
        complete = genset.is_complete(folder)
    else:
        with shards.set_lock(folder):
            complete = shards.finalize(folder, rows, shard, num_shards, cfg.per_class)
    whole, planned = genset.set_stats(folder), int(mine.sum())
    summary = {"shard": f"{shard}/{num_shards}", "planned": planned, "already_done": planned - len(todo),
               "generated": stats["images"], "redraws": stats["redraws"], "seconds": seconds,
               "gpu_seconds": seconds * rt.gpus, "images_per_s": stats["images"] / seconds if seconds else 0.0,
               "set_complete": complete, "set": whole, "out_dir": str(folder)}
    if is_main():
        print(f"[synthtl] shard {shard}/{num_shards}: generated {summary['generated']} images "
              f"({summary['already_done']} already done, {summary['redraws']} redrawn) in {seconds:.1f} s, "
              f"{summary['images_per_s']:.2f} img/s -> {folder}" + ("" if complete else " (set not complete yet)"))
        print(f"[synthtl] all {whole['shards']} shard(s) so far: {whole['images']} images, {whole['seconds']:.1f} "
              f"device-s, {whole['gpu_seconds']:.0f} GPU-s")
    return summary


@torch.inference_mode()
def denoise(pipe, rows: list[dict], seeds: list[int], cfg: GenerateConfig,
            sources: list[Image.Image] | None = None) -> tuple[np.ndarray, list[bool]]:
    """One batch: (uint8 images B x H x W x 3, per-image "black or non-finite"). With img2img `sources` each image
    starts from its source noised to img2img.strength; the seed draws both the VAE posterior sample and the noise."""
    g = cfg.generator
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]  # CPU noise: same image on any device
    negative = [r["negative_prompt"] for r in rows] if any(r["negative_prompt"] for r in rows) else None
    size = {"height": g.height, "width": g.width} if sources is None else \
        {"image": sources, "strength": cfg.img2img.strength}  # the size is the sources' (img2img.load_sources)
    latents = pipe(prompt=[r["prompt"] for r in rows], negative_prompt=negative, num_inference_steps=g.steps,
                   guidance_scale=g.guidance, generator=generators, output_type="latent", **size).images
    if pipe.vae.dtype == torch.float16 and is_sdxl(pipe):
        pipe.vae.to(torch.float32)  # SDXL's VAE overflows in fp16 (diffusers upcasts it too)
    images = pipe.vae.decode((latents / pipe.vae.config.scaling_factor).to(pipe.vae.dtype),
                             return_dict=False)[0].float()
    finite = torch.isfinite(images).flatten(1).all(1) & torch.isfinite(latents.float()).flatten(1).all(1)
    images = torch.nan_to_num((images / 2 + 0.5).clamp(0, 1), nan=0.0)
    u8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    black = u8.reshape(len(rows), -1).max(axis=1) <= cfg.black_threshold
    return u8, [bool(b) or not bool(f) for b, f in zip(black, finite.cpu(), strict=True)]


def _generate(pipe, rows: SetRows, todo: list[int], folder: Path, log: Path, cfg: GenerateConfig,
              sources: img2img.Sources | None = None, charge=None) -> dict:
    """Denoises `todo` (row positions) batch by batch while writer threads write and log behind it.

    A black or non-finite image is requeued with its next seed (an img2img redraw starts from the same source). With a
    per-class style LoRA each batch holds one class, whose adapter is written into the weights first."""
    per_class = getattr(getattr(pipe, "synthtl_style_lora", None), "per_class", False)
    if per_class:
        todo = sorted(todo, key=lambda p: (rows.cls[p], rows.idx[p]))  # class by class: one switch per class
    queue = deque((p, 0) for p in todo)  # (row position, redraw attempt)
    g, stats = cfg.generator, {"images": 0, "redraws": 0}
    batch_size = g.batch_size
    with _writing(folder, log, cfg, stats, len(todo), charge) as submit:
        while queue:
            n = min(batch_size, len(queue))
            if per_class:  # cut the batch where the class changes
                n = next((i for i in range(1, n) if rows.cls[queue[i][0]] != rows.cls[queue[0][0]]), n)
            batch = [queue.popleft() for _ in range(n)]
            batch_rows = [rows.row(p) for p, _ in batch]
            styles.set_style_lora_class(pipe, batch_rows[0]["class_name"])  # a no-op without a per-class LoRA
            seeds = [genset.image_seed(cfg.seed, r["class_index"], r["index"], a)
                     for r, (_, a) in zip(batch_rows, batch, strict=True)]
            try:
                fitted = img2img.load_sources(sources.root, batch_rows, g.width, g.height) if sources else None
                images, bad = denoise(pipe, batch_rows, seeds, cfg, fitted)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise SynthTLError("CUDA out of memory even with generator.batch_size=1; lower "
                                       "generator.height/width or free the GPU") from None
                torch.cuda.empty_cache()
                queue.extendleft(reversed(batch))
                batch_size //= 2
                print(f"[synthtl] CUDA out of memory: continuing with generator.batch_size={batch_size}")
                continue
            good = []
            for (p, attempt), row, img, seed, is_bad in zip(batch, batch_rows, images, seeds, bad, strict=True):
                if not is_bad:
                    good.append((row, img, seed, attempt))
                elif attempt >= cfg.max_redraws:
                    raise SynthTLError(f"image {row['id']} ({row['class_name']}) was black or non-finite in "
                                       f"{attempt + 1} draws; fp16 VAE overflow? try generator.dtype=bf16 or fp32")
                else:
                    queue.appendleft((p, attempt + 1))
                    stats["redraws"] += 1
            submit(good)
    return stats


@contextlib.contextmanager
def _writing(folder: Path, log: Path, cfg: GenerateConfig, stats: dict, total: int, charge=None):
    """Yields submit(batch of (row, image, seed, redraws)) to writer threads, so the GPU never waits for a disk. A
    batch's images are written, then logged with one append: a logged image is on disk, even if a later write fails."""
    writers, pending, lock = max(1, cfg.writers), deque(), threading.Lock()
    options = {} if cfg.image_format == "png" else {"quality": cfg.quality}
    bar = tqdm(total=total, desc="generate", unit="img", disable=not (cfg.progress and is_main()))

    def write(batch: list[tuple]) -> int:
        entries = []
        try:
            for row, img, seed, redraws in batch:
                faults.point("generate.write", row=row)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format=cfg.image_format.upper(), **options)
                write_bytes(folder / row["path"], buf.getvalue())
                if row.get("train_path"):
                    write_bytes(folder / row["train_path"], resized_jpeg(Image.fromarray(img), cfg.train_copy))
                entries.append({"id": row["id"], "seed": seed, "redraws": redraws})
        finally:  # also on DiskFullError, KeyboardInterrupt...: log what is on disk, then stop
            if entries:
                with lock:  # writer threads share this shard's log (and the cost log): one append at a time
                    append_jsonl(log, entries)
                    if charge is not None:
                        charge(len(entries), stats["redraws"])
        return len(entries)

    def drain(wait: bool) -> None:  # counts finished batches in order; a write error is raised after the others
        error = None
        while pending and (wait or pending[0].done() or len(pending) > 2 * writers):  # bound images held in RAM
            try:
                n = pending.popleft().result()
            except BaseException as e:  # DiskFullError, a cancelled write...: let the others finish first
                error = error or e
                continue
            stats["images"] += n
            bar.update(n)
        if error is not None:
            raise error

    def submit(batch: list[tuple]) -> None:
        if batch:
            pending.append(pool.submit(write, batch))
        drain(wait=False)

    with ThreadPoolExecutor(writers) as pool:
        try:
            yield submit
            drain(wait=True)
        except BaseException:
            for fut in pending:
                fut.cancel()
            with contextlib.suppress(BaseException):  # the original error is the one to report
                drain(wait=True)  # keep what was fully written before stopping
            raise
        finally:
            bar.close()
