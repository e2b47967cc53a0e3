"""Near-duplicates between synthetic images and the real test split: perceptual hash and feature cosine."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn


def phash(img: Image.Image, size: int = 32, keep: int = 8) -> int:
    """64-bit DCT perceptual hash: low frequencies of the grayscale 32x32 image above their median."""
    g = np.asarray(img.convert("L").resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(g, norm="ortho")[:keep, :keep].flatten()
    bits = low[1:] > np.median(low[1:])  # the DC term carries brightness only
    bits = np.concatenate([[low[0] > 0], bits])
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two arrays of 64-bit hashes (as uint64)."""
    x = np.bitwise_xor(a[:, None], b[None, :])
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def near_duplicates(syn_hashes: list[int], test_hashes: list[int], syn_feats: np.ndarray | None,
                    test_feats: np.ndarray | None, max_bits: int = 6, min_cosine: float = 0.95) -> list[dict]:
    """Pairs (synthetic index, test index) within `max_bits` hash bits or above `min_cosine`, closest first."""
    a = np.array(syn_hashes, dtype=np.uint64)
    b = np.array(test_hashes, dtype=np.uint64)
    found: dict[tuple[int, int], dict] = {}
    if len(a) and len(b):
        dist = hamming(a, b)
        for i, j in zip(*np.nonzero(dist <= max_bits), strict=True):
            found[(int(i), int(j))] = {"synthetic": int(i), "test": int(j), "hash_bits": int(dist[i, j])}
    if syn_feats is not None and test_feats is not None and len(syn_feats) and len(test_feats):
        sn = syn_feats / np.linalg.norm(syn_feats, axis=1, keepdims=True).clip(1e-12)
        tn = test_feats / np.linalg.norm(test_feats, axis=1, keepdims=True).clip(1e-12)
        cos = sn @ tn.T
        for i, j in zip(*np.nonzero(cos >= min_cosine), strict=True):
            entry = found.setdefault((int(i), int(j)), {"synthetic": int(i), "test": int(j)})
            entry["cosine"] = float(cos[i, j])
    return sorted(found.values(), key=lambda e: (e.get("hash_bits", 64), -e.get("cosine", 0.0)))
