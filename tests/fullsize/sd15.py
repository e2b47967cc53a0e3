"""Full-size stand-ins with no download: the real CLIP tokenizer and Stable Diffusion v1.5 with random weights.

The tokenizer is built from the BPE file that the `clip-anytorch` wheel ships (the same merges OpenAI's CLIP and
SD v1.5's tokenizer use). The Stable Diffusion folder has SD v1.5's exact architecture (synthtl's
`sd15_components` configs) and random weights, saved as a diffusers folder that `generator.model=<folder>` loads.

    python -m tests.fullsize.sd15 OUT [--dtype fp16]   # writes OUT/tokenizer and OUT/sd15 (used by gpu_check.sh)
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import time
from pathlib import Path

import torch

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408


def clip_package_dir() -> Path | None:
    """The installed `clip` package folder, found without importing it (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


def bpe_file() -> Path:
    """clip-anytorch's `bpe_simple_vocab_16e6.txt.gz`.

    Raises:
        FileNotFoundError: clip-anytorch is not installed (pip install clip-anytorch, or the `dev` extra).
    """
    folder = clip_package_dir()
    path = folder / "bpe_simple_vocab_16e6.txt.gz" if folder else None
    if path is None or not path.is_file():
        raise FileNotFoundError("the CLIP BPE file is missing: pip install clip-anytorch (in synthtl's dev extra)")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table (printable bytes map to themselves, the rest to 256+n)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_clip_tokenizer(out: Path) -> Path:
    """Writes a transformers CLIPTokenizer folder (vocab.json, merges.txt, configs) from CLIP's BPE file.

    CLIP's vocabulary, in id order: the 256 byte characters, the same with `</w>`, one entry per merge (the first
    48,894 lines after the header), then <|startoftext|> and <|endoftext|>: 49,408 entries.
    """
    from transformers import CLIPTokenizer

    lines = gzip.decompress(bpe_file().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1:CLIP_VOCAB_SIZE - 2 * 256 - 2 + 1]  # as CLIP's simple_tokenizer slices it (48,894 merges)
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges] + [SOT, EOT]
    if len(vocab) != CLIP_VOCAB_SIZE or len(set(vocab)) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe_file()} gives {len(vocab)} entries ({len(set(vocab))} distinct), not "
                         f"{CLIP_VOCAB_SIZE}: not CLIP's BPE file")
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"), unk_token=EOT, bos_token=SOT,
                        eos_token=EOT, pad_token=EOT, model_max_length=77)
    tok.save_pretrained(str(out))
    return out


def reference_tokenizer():
    """clip-anytorch's own SimpleTokenizer, loaded from its file (an independent reference implementation)."""
    folder = clip_package_dir()
    if folder is None:
        raise FileNotFoundError("clip-anytorch is not installed")
    spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", folder / "simple_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(str(bpe_file()))


def _materialize(module: torch.nn.Module, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Gives a module built with meta parameters real random weights in `dtype`.

    PyTorch's default Linear/Conv initialisation, U(+-1/sqrt(fan_in)), for every matrix (token and position
    embeddings included: std 0.02 for CLIP's width, as CLIP's own init), norms at 1 and biases at 0. Drawn directly
    in `dtype`: several times faster than each layer's own initialiser on a 1B-parameter model.
    """
    buffers = {k: v.clone() for k, v in module.named_buffers()}  # real: built outside the meta context
    module.to_empty(device="cpu").to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in module.named_buffers():
            b.copy_(buffers[name])
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                bound = 1.0 / math.sqrt(p[0].numel())
                p.uniform_(-bound, bound, generator=g)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return module


def build_sd15_pipeline(tokenizer_dir: Path, dtype: torch.dtype = torch.float16, seed: int = 0):
    """SD v1.5's architecture (synthtl's configs) with random weights and the real CLIP tokenizer."""
    from accelerate import init_empty_weights
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from synthtl.generation.pipeline import sd15_components

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    with init_empty_weights(include_buffers=False):  # parameters on the meta device: no slow initialisers
        parts = sd15_components(torch.float32, tokenizer=tokenizer)
    for i, name in enumerate(("unet", "vae", "text_encoder")):
        parts[name] = _materialize(parts[name], dtype, seed + i)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_sd15(out: Path, tokenizer_dir: Path, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Writes the random SD v1.5 as a diffusers folder (safetensors in `dtype`: fp16 halves the bytes to write)."""
    pipe = build_sd15_pipeline(tokenizer_dir, dtype, seed)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tok = write_clip_tokenizer(args.out / "tokenizer")
    print(f"tokenizer: {tok} ({time.perf_counter() - t0:.1f} s)")
    sd = save_sd15(args.out / "sd15", tok, torch.float16 if args.dtype == "fp16" else torch.float32)
    print(f"random SD v1.5: {sd} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
