"""`synthtl generate`: plan -> this shard's unfinished rows -> batched denoising -> overlapped writes -> log.

A killed worker loses at most the batch in flight: an image is written atomically, then logged in this shard's
append-only progress file (a torn last line is cut before the next append); a restart skips every logged image whose
file exists and removes this shard's leftover temp files. One writer per shard (a lock); plan and finalize run under
the set's lock. Outputs that are black or hold NaN/Inf are redrawn with a new seed (recorded). CUDA out-of-memory
halves the batch and goes on. A full disk stops cleanly with nothing half-written counted.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from synthtl import identity
from synthtl.config import GenerateConfig
from synthtl.data import genset
from synthtl.data.cache import resized_jpeg
from synthtl.data.datasets import DATASETS, classnames, load_data
from synthtl.data.genset import PROGRESS_DIR, SetRows, present, read_state
from synthtl.errors import ConfigError, SynthTLError
from synthtl.files import append_jsonl, read_json, remove_temps, write_bytes, write_json
from synthtl.generation import img2img, shards
from synthtl.generation.pipeline import generator_runtime, load_pipeline
from synthtl.generation.prompts import STYLE_TOKEN, fit_prompt, needs_token, template_set
from synthtl.generation.styles import class_tokens, generation_style_hash, load_into_pipeline, set_style_lora_class
from synthtl.runtime import dtype_name, is_main


def parse_shard(spec: str) -> tuple[int, int]:
    """(i, N) from "i/N", else from torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if spec:
        i, n = spec.split("/")
        return int(i), int(n)
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def class_list(cfg: GenerateConfig) -> list[tuple[str, str]]:
    """(class id, readable name) of every class to generate, in the dataset's label order."""
    d = cfg.data
    if d.name in DATASETS:
        names = classnames(d.name)
        classes = [(n, n) for n in names]
        try:  # the on-disk ids (folder names, wnids) when the dataset is present; names alone suffice otherwise
            train = load_data(d, "train", download=False)
            classes = list(zip(train.classes, train.names, strict=True))
        except SynthTLError:
            pass
    else:
        train = load_data(d, "train", download=False)
        classes = list(zip(train.classes, train.names, strict=True))
    if cfg.classes:
        wanted = set(cfg.classes)
        unknown = wanted - {n for _, n in classes} - {c for c, _ in classes}
        if unknown:
            raise ConfigError(f"classes={sorted(unknown)[:5]} are not classes of {d.name}")
        classes = [(c, n) for c, n in classes if c in wanted or n in wanted]
    # A folder name that is not UTF-8 (kept as lone surrogates) cannot go into a prompt: its bytes are read as UTF-8
    # with replacement characters there, while the id (and so the training match) keeps the exact name.
    return [(c, n.encode("utf-8", "surrogateescape").decode("utf-8", "replace")) for c, n in classes]


def _encode(img: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(img)
    if fmt == "jpeg":
        pil.save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        pil.save(buf, format="WEBP", quality=quality)
    else:
        pil.save(buf, format="PNG")
    return buf.getvalue()


def _write(folder: Path, row: dict, img: np.ndarray, seed: int, redraws: int, cfg: GenerateConfig) -> dict:
    """Writes one image (and its training copy) atomically, fsynced; returns its progress-log row."""
    write_bytes(folder / row["path"], _encode(img, cfg.image_format, cfg.quality))
    if row.get("train_path"):
        write_bytes(folder / row["train_path"], resized_jpeg(Image.fromarray(img), cfg.train_copy, quality=95))
    return {"id": row["id"], "seed": seed, "redraws": redraws}


def _write_batch(folder: Path, log: Path, log_lock: threading.Lock, batch: list[tuple], cfg: GenerateConfig) -> int:
    """Writes a batch's images, then logs them with one append (one fsync): a logged image is on disk.

    Runs on a writer thread, so the thread feeding the GPU never waits for a disk. On an error (a full disk, a
    kill) the images written before it are still logged, then the error is raised. Returns the images logged.
    """
    entries, error = [], None
    for row, img, seed, attempt in batch:
        try:
            entries.append(_write(folder, row, img, seed, attempt, cfg))
        except BaseException as e:  # DiskFullError, KeyboardInterrupt...: keep what is on disk, then stop
            error = e
            break
    if entries:
        with log_lock:  # writer threads share this shard's log: one append at a time
            append_jsonl(log, entries)
    if error is not None:
        raise error
    return len(entries)


@torch.inference_mode()
def denoise(pipe, rows: list[dict], seeds: list[int], cfg: GenerateConfig,
            sources: list[Image.Image] | None = None) -> tuple[np.ndarray, list[bool]]:
    """Generates one batch: (uint8 images B x H x W x 3, per-image flag "black or non-finite").

    With `sources` (mode=img2img: `pipe` is the image-to-image pipeline), each image starts from its source noised
    to img2img.strength; the seed draws both the VAE posterior sample and the noise.
    """
    g = cfg.generator
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]  # CPU noise: same image on any device
    negative = [r["negative_prompt"] for r in rows] if any(r["negative_prompt"] for r in rows) else None
    size = {"height": g.height, "width": g.width} if sources is None else \
        {"image": sources, "strength": cfg.img2img.strength}  # the size is the sources' (fitted by img2img.fit)
    latents = pipe(prompt=[r["prompt"] for r in rows], negative_prompt=negative, num_inference_steps=g.steps,
                   guidance_scale=g.guidance, generator=generators, output_type="latent", **size).images
    if pipe.vae.dtype == torch.float16 and getattr(pipe, "text_encoder_2", None) is not None:
        pipe.vae.to(torch.float32)  # SDXL's VAE overflows in fp16 (diffusers upcasts it too)
    images = pipe.vae.decode((latents / pipe.vae.config.scaling_factor).to(pipe.vae.dtype),
                             return_dict=False)[0].float()
    finite = torch.isfinite(images).flatten(1).all(1) & torch.isfinite(latents.float()).flatten(1).all(1)
    images = torch.nan_to_num((images / 2 + 0.5).clamp(0, 1), nan=0.0)
    u8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    black = u8.reshape(len(rows), -1).max(axis=1) <= cfg.black_threshold
    return u8, [bool(b) or not bool(f) for b, f in zip(black, finite.cpu(), strict=True)]


@contextlib.contextmanager
def _quiet_tokenizer():
    """Silences transformers' "sequence length is longer than the maximum" warning while prompts are measured: a long
    class name is cut to fit (and the manifest records `truncated`), so the warning would only alarm. diffusers'
    multi-vector conversion tokenizes without a way to pass verbose=False."""
    logger = logging.getLogger("transformers.tokenization_utils_base")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _prompts_and_tokens(pipe, cfg: GenerateConfig, classes: list[tuple[str, str]], templates: list[str],
                        token_map: dict[str, str], default_token: str) -> tuple[list, list[str]]:
    """Each class's prompt record per template (`fit_prompt`: fits the text encoder, style token kept; image i of a
    class uses template i mod len(templates)) and each class's token."""
    tokenizer = pipe.tokenizer
    convert = getattr(pipe, "maybe_convert_prompt", lambda text, tok: text)  # multi-vector tokens expand to several

    def count(text: str) -> int:  # measures a prompt that may be too long on purpose: no overflow warning
        with _quiet_tokenizer():
            return len(tokenizer(convert(text, tokenizer), verbose=False).input_ids)

    tokens = [token_map.get(name, default_token) if needs_token(templates) else "" for _, name in classes]
    prompts = [[fit_prompt(templates, name, t, count, tokenizer.model_max_length, cfg.prompts.suffix, tokens[c])
                for t in range(len(templates))] for c, (_, name) in enumerate(classes)]
    return prompts, tokens


SETTINGS_FORMAT = 1  # of plan.json's settings: what the images depend on


def settings(cfg: GenerateConfig, classes: list[tuple[str, str]], dtype: str, templates: list[str], style_hash: str,
             extra: dict | None = None) -> dict:
    """What the set's images depend on, as resolved on this machine (the generator's weights, the dtype "auto" became,
    the templates, the style's content hash, the class names), recorded in plan.json and in every manifest row;
    `extra`: the keys of mode=img2img (`img2img.identity`)."""
    g, p = cfg.generator, cfg.prompts
    weights = identity.generator_weights(g)  # from the weights, so a style embedding cannot change it
    return {**(extra or {}), "format": SETTINGS_FORMAT, "model": weights["model"], "revision": weights["revision"],
            "scheduler": g.scheduler, "steps": g.steps, "guidance": g.guidance, "height": g.height, "width": g.width,
            "dtype": dtype, "templates": templates, "suffix": p.suffix, "negative": p.negative,
            "style_hash": style_hash, "seed": cfg.seed, "classes": [name for _, name in classes],
            "image_format": cfg.image_format, "quality": cfg.quality, "train_copy": cfg.train_copy}


def finished(rows: SetRows, per_class: int) -> bool:
    """The first `per_class` images of every class are finished: the completion record says so and their files
    are there (one listing per class, so a deleted file is redrawn), without reading a log or the manifest."""
    return genset.is_complete(rows.folder, per_class) and bool(present(rows)[rows.idx < per_class].all())


def resume_todo(folder: Path, rows: SetRows, per_class: int, shard: int, num_shards: int) -> tuple[np.ndarray, list]:
    """(this shard's rows, its unfinished ones in generation order); removes the temp files it left when killed."""
    mine = shards.shard_mask(rows, shard, num_shards) & (rows.idx < per_class)
    shards.remove_shard_temps(folder, rows, mine, shard, num_shards)
    todo = np.flatnonzero(mine & ~read_state(folder).done)
    todo = todo[np.lexsort((rows.cls[todo], rows.idx[todo]))]  # by image index, then class: batches span classes
    return mine, todo.tolist()


def _setup(cfg: GenerateConfig, folder: Path):
    """(pipeline, runtime, planned rows, img2img source reader or None); the pipeline is None when the wanted images
    are already finished.

    The plan is written under the set's lock by whichever shard (torchrun rank) gets it first; every other shard
    finds it there and only checks it. With mode=img2img the sources are selected (and checked against the test
    split) first: they are part of the identity.
    """
    templates = template_set(cfg.prompts.templates, cfg.prompts.custom)
    if needs_token(templates) and not cfg.prompts.style_embedding:
        raise ConfigError(f"prompts.templates={cfg.prompts.templates} uses the style token: set "
                          "prompts.style_embedding to the output of `synthtl learn-style`")
    ident = identity.identity(cfg, identity.Resolver(missing={}))  # class names suffice without the dataset
    identity.check(folder, "generate", ident)  # another config's set is refused before anything loads
    classes = class_list(cfg)
    rt = generator_runtime(cfg.generator)
    style_hash = generation_style_hash(cfg.prompts)  # the embedding's and/or the style LoRA's content hash
    sources = img2img.select_sources(cfg, classes) if cfg.mode == "img2img" else None
    extra = img2img.identity(cfg, sources) if sources is not None else None
    made = settings(cfg, classes, dtype_name(rt.dtype), templates, style_hash, extra)
    if sources is not None:
        _explain_source_change(folder, made, sources)
    reader = img2img.SourceReader(sources.root, cfg.generator.width, cfg.generator.height) if sources else None
    old = genset.check_settings(folder, made)
    planned = genset.rows_of(folder, old) if old is not None and old["per_class"] >= cfg.per_class else None
    if planned is not None and finished(planned, cfg.per_class):
        return None, rt, planned, reader  # a finished set: nothing to load, nothing to write
    pipe = load_pipeline(cfg.generator, rt, style_lora=cfg.prompts.style_lora)
    lora = getattr(pipe, "synthtl_style_lora", None)  # which kind of style LoRA makes the set (for the report)
    notes = {"style_lora": "class" if lora.per_class else "dataset"} if lora is not None else {}
    token_map, default_token = {}, STYLE_TOKEN
    if cfg.prompts.style_embedding:
        loaded = load_into_pipeline(pipe, cfg.prompts.style_embedding)
        token_map = class_tokens(cfg.prompts.style_embedding)
        default_token = loaded[0]
    if sources is not None:
        pipe = img2img.pipeline(pipe)  # after the style token is loaded: the two pipelines share the tokenizer
    if planned is not None:
        return pipe, rt, planned, reader
    prompts, tokens = _prompts_and_tokens(pipe, cfg, classes, templates, token_map, default_token)
    table = genset.class_table(classes, prompts, tokens, sources)
    with shards.set_lock(folder):
        identity.claim(folder, "generate", ident)
        rows = genset.write_or_extend(folder, made, table, cfg.per_class, notes)
        remove_temps(folder)  # a killed plan write's temp file (plan and manifest are only written under this lock)
    return pipe, rt, rows, reader


def _explain_source_change(folder: Path, made: dict, sources: img2img.Sources) -> None:
    """Refuses a set planned from other img2img sources with a line naming the first differing source (the plain
    settings check would only show two hashes)."""
    plan_file = folder / genset.PLAN
    if not plan_file.is_file():
        return
    old = read_json(plan_file)
    if old["settings"].get("sources") in (None, made["sources"]):
        return
    what = img2img.changed_sources(old.get("classes", []), sources) or "the sources differ"
    raise ConfigError(f"{folder} was planned from other img2img sources ({what}). Use another out_dir, or the "
                      "same data settings (data.shots, data.split_seed, data.split_file, data.val_fraction) and files "
                      "to resume or extend it")


def run_generate(cfg: GenerateConfig) -> dict:
    """Generates (or resumes) this shard's part of the set; returns a summary (this shard's and the whole set's)."""
    shard, num_shards = parse_shard(cfg.shard)
    folder = Path(cfg.out_dir)
    shards.check_out_dir(folder)
    with shards.shard_lock(folder, shard, num_shards):
        return _run_shard(cfg, folder, shard, num_shards)


STATS_EVERY_S = 10.0  # how often a generating shard rewrites its cost record (progress/shard-*.summary.json)


def _run_shard(cfg: GenerateConfig, folder: Path, shard: int, num_shards: int) -> dict:
    pipe, rt, rows, reader = _setup(cfg, folder)
    if pipe is None:
        mine, todo = shards.shard_mask(rows, shard, num_shards) & (rows.idx < cfg.per_class), []
    else:
        mine, todo = resume_todo(folder, rows, cfg.per_class, shard, num_shards)
    log = folder / PROGRESS_DIR / f"{genset.shard_name(shard, num_shards)}.jsonl"
    t0 = time.perf_counter()
    stats_file = genset.stats_file(folder, shard, num_shards)
    prev = read_json(stats_file) if stats_file.is_file() else {"images": 0, "seconds": 0.0, "redraws": 0}
    saved = [t0]

    def save_stats(now: dict, elapsed: float | None = None) -> None:
        """Every shard (torchrun rank) keeps its own file, so the set's cost is the sum over shards, not rank 0's
        share; it is rewritten every STATS_EVERY_S while generating, so a killed run's work still counts."""
        t = time.perf_counter()
        if elapsed is not None or t - saved[0] >= STATS_EVERY_S:  # `elapsed` given: the final record
            saved[0] = t
            spent = elapsed if elapsed is not None else t - t0
            write_json(stats_file, {"images": prev["images"] + now["images"], "seconds": prev["seconds"] + spent,
                                    "redraws": prev["redraws"] + now["redraws"], "device": str(rt.device),
                                    "gpus": rt.gpus})

    stats = (_generate(pipe, rows, todo, folder, log, cfg, reader, on_progress=save_stats) if todo
             else {"images": 0, "redraws": 0})
    seconds = time.perf_counter() - t0
    save_stats(stats, elapsed=seconds)
    if pipe is None:
        complete = genset.is_complete(folder)
    else:
        with shards.set_lock(folder):
            complete = shards.finalize(folder, rows, shard, num_shards, cfg.per_class)
    whole = genset.set_stats(folder)
    planned = int(mine.sum())
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


def _generate(pipe, rows: SetRows, todo: list[int], folder: Path, log: Path, cfg: GenerateConfig,
              reader: img2img.SourceReader | None = None, on_progress=None) -> dict:
    """Denoises `todo` (row positions) batch by batch; writer threads write and log each batch behind it. With an
    img2img `reader`, each batch's sources are loaded first (a redraw starts from the same source, new seed).

    With a per-class style LoRA every batch holds one class, whose adapter is written into the weights first.
    """
    per_class = getattr(getattr(pipe, "synthtl_style_lora", None), "per_class", False)
    if per_class:
        todo = sorted(todo, key=lambda p: (rows.cls[p], rows.idx[p]))  # class by class: one switch per class
    queue = deque((p, 0) for p in todo)  # (row position, redraw attempt)
    batch_size = cfg.generator.batch_size
    writers = max(1, cfg.writers)
    pending: list[Future] = []
    log_lock = threading.Lock()
    stats = {"images": 0, "redraws": 0}
    bar = tqdm(total=len(todo), desc="generate", unit="img", disable=not (cfg.progress and is_main()))

    def drain(wait: bool) -> None:
        """Counts finished batches in submission order; re-raises a write error after the others are logged."""
        error = None
        while pending and (wait or pending[0].done() or len(pending) > 2 * writers):  # bound images held in RAM
            fut = pending.pop(0)
            try:
                n = fut.result()
            except BaseException as e:  # DiskFullError, a cancelled write...: let the others finish first
                error = error or e
                continue
            stats["images"] += n
            bar.update(n)
            if on_progress is not None:
                on_progress(stats)  # the shard's cost so far, so that a killed run's work is still counted
        if error is not None:
            raise error

    with ThreadPoolExecutor(writers) as pool:
        try:
            while queue:
                n = min(batch_size, len(queue))
                if per_class:  # cut the batch where the class changes
                    n = next((i for i in range(1, n) if rows.cls[queue[i][0]] != rows.cls[queue[0][0]]), n)
                batch = [queue.popleft() for _ in range(n)]
                batch_rows = [rows.row(p) for p, _ in batch]
                set_style_lora_class(pipe, batch_rows[0]["class_name"])  # a no-op without a per-class LoRA
                seeds = [genset.image_seed(cfg.seed, r["class_index"], r["index"], a)
                         for r, (_, a) in zip(batch_rows, batch, strict=True)]
                try:
                    if reader is None:
                        images, bad = denoise(pipe, batch_rows, seeds, cfg)
                    else:
                        images, bad = denoise(pipe, batch_rows, seeds, cfg, reader(batch_rows))
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
                    if is_bad:
                        if attempt >= cfg.max_redraws:
                            raise SynthTLError(
                                f"image {row['id']} ({row['class_name']}) was black or non-finite in {attempt + 1} "
                                "draws; fp16 VAE overflow? try generator.dtype=bf16 or fp32")
                        queue.appendleft((p, attempt + 1))
                        stats["redraws"] += 1
                        continue
                    good.append((row, img, seed, attempt))
                if good:
                    pending.append(pool.submit(_write_batch, folder, log, log_lock, good, cfg))
                drain(wait=False)
            drain(wait=True)
        except BaseException:
            for fut in pending:
                fut.cancel()
            with contextlib.suppress(BaseException):  # the original error is the one to report
                drain(wait=True)  # keep what was fully written before stopping
            raise
        finally:
            bar.close()
    return stats
