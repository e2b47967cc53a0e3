"""Near-duplicates between two image sets (synthetic or train vs the real test split), all pairs, by perceptual hash
and, when the features mean something, by feature cosine. Nothing is sampled: tiled all-pairs XOR + popcount over
uint64 hashes (~1e9 pairs in seconds on one core) and tiled matrix products, so memory is bounded by the tile size."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from synthtl.data.images import to_rgb

HASH_SIZE = 32  # side of the grayscale thumbnail the DCT is taken of
HASH_KEEP = 8  # low frequencies kept per axis: 8 x 8 = 64 bits
TILE_PAIRS = 1 << 19  # hash pairs per tile of the all-pairs comparison (sized for the CPU cache)


# The first HASH_KEEP rows of the orthonormal DCT-II matrix of size HASH_SIZE (scipy's dct(norm="ortho")).
_X, _K = np.arange(HASH_SIZE)[None, :], np.arange(HASH_KEEP)[:, None]
_DCT = np.cos(np.pi * (2 * _X + 1) * _K / (2 * HASH_SIZE)) * np.sqrt(2.0 / HASH_SIZE)
_DCT[0] /= np.sqrt(2.0)


def phash_batch(gray: np.ndarray) -> np.ndarray:
    """(n,) uint64 DCT perceptual hashes of (n, 32, 32) 8-bit luminance thumbnails: bit 63 says DC > 0; the other 63,
    whether each low-frequency AC term lies above the AC terms' median (the DC term carries brightness only)."""
    low = np.einsum("ij,njk,lk->nil", _DCT, gray.astype(np.float64), _DCT).reshape(len(gray), -1)
    bits = np.hstack([low[:, :1] > 0, low[:, 1:] > np.median(low[:, 1:], axis=1, keepdims=True)])
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).ravel()


def thumbnail(img: Image.Image) -> np.ndarray:
    """The 32 x 32 grayscale thumbnail a hash is taken of (BOX-filtered, so every source pixel counts)."""
    return np.asarray(img.convert("L").resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BOX), dtype=np.uint8)


def phash(img: Image.Image) -> int:
    """The perceptual hash of one image (the same value `hash_files` gives its file)."""
    return int(phash_batch(thumbnail(img)[None])[0])


def _scan_one(path: Path) -> tuple[bytes, np.ndarray | None]:
    """(content digest, thumbnail or None when the file cannot be decoded)."""
    try:
        data = path.read_bytes()
    except OSError:
        return b"", None
    digest = hashlib.blake2b(data, digest_size=16).digest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":  # libjpeg's draft mode: luminance at >= 64 px, as the thumbnail is 32 px
                img.draft("L", (2 * HASH_SIZE, 2 * HASH_SIZE))
            img.load()
            return digest, thumbnail(img if img.mode in ("L", "RGB") else to_rgb(img))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return digest, None


@contextlib.contextmanager
def quiet_pil() -> Iterator[None]:
    """Silences PIL's warnings around a decoder thread pool. `catch_warnings` swaps process-wide state unsafely across
    threads (it can leave every warning ignored), so the caller sets this one filter once, on its own thread."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"PIL\.")
        yield


def hash_files(paths: Sequence[Path], workers: int = 0) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    """(phashes (n,) uint64, readable (n,) bool, 16-byte BLAKE2b digests of the bytes or b"" if missing), each file
    read once in `workers` threads (0 = one per core: decoding and hashing release the GIL)."""
    hashes, ok, digests, block = np.zeros(len(paths), dtype=np.uint64), np.zeros(len(paths), dtype=bool), [], 1024
    with quiet_pil(), ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), block):
            scanned = list(pool.map(_scan_one, paths[start:start + block], chunksize=16))
            digests += [d for d, _ in scanned]
            good = [start + i for i, (_, t) in enumerate(scanned) if t is not None]
            if good:
                hashes[good] = phash_batch(np.stack([t for _, t in scanned if t is not None]))
                ok[good] = True
    return hashes, ok, digests


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two arrays of 64-bit hashes (as uint64)."""
    return np.bitwise_count(np.bitwise_xor(a[:, None], b[None, :]))


def hash_pairs(a: np.ndarray, b: np.ndarray, max_bits: int, chunk: int = 4096,
               workers: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, bits) of every pair with Hamming(a[i], b[j]) <= max_bits, in tiles, row blocks over `workers`."""
    workers = workers or os.cpu_count() or 1
    a, b = np.ascontiguousarray(a, dtype=np.uint64), np.ascontiguousarray(b, dtype=np.uint64)
    cols = max(1, min(chunk, len(b)))
    # Tiles of about TILE_PAIRS pairs stay in the CPU cache, which makes XOR + popcount + compare ~3x faster than
    # one large block; the buffers are reused, so memory is a few MB per thread whatever the set sizes.
    rows = max(1, min(chunk, TILE_PAIRS // cols))
    block = rows * max(1, 64 // workers)

    def scan(start: int) -> list[tuple]:
        x, bits, hit = (np.empty((rows, cols), t) for t in (np.uint64, np.uint8, bool))
        out = []
        for i0 in range(start, min(start + block, len(a)), rows):
            pa = a[i0:i0 + rows, None]
            for j0 in range(0, len(b), cols):
                pb = b[None, j0:j0 + cols]
                r, c = len(pa), pb.shape[1]
                np.bitwise_xor(pa, pb, out=x[:r, :c])
                np.bitwise_count(x[:r, :c], out=bits[:r, :c])
                np.less_equal(bits[:r, :c], max_bits, out=hit[:r, :c])
                if hit[:r, :c].any():
                    ii, jj = np.nonzero(hit[:r, :c])
                    out.append((ii + i0, jj + j0, bits[ii, jj]))
        return out

    with ThreadPoolExecutor(workers) as pool:  # numpy's ufuncs release the GIL: blocks run on every core
        found = [t for part in pool.map(scan, range(0, len(a), block)) for t in part]
    return _cat(found, np.uint8)


def cosine_pairs(a: np.ndarray, b: np.ndarray, min_cosine: float,
                 chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) as int64, int64, float32: every pair of feature rows with cosine >= min_cosine, tiled."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)

    an, bn = unit(a), unit(b)
    found = []
    for i0 in range(0, len(an), chunk):
        for j0 in range(0, len(bn), chunk):
            cos = an[i0:i0 + chunk] @ bn[j0:j0 + chunk].T
            ii, jj = np.nonzero(cos >= min_cosine)
            found.append((ii + i0, jj + j0, cos[ii, jj]))
    return _cat(found, np.float32)


def _cat(found: list[tuple], value_dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.concatenate([f[k] for f in found]).astype(t) if found else np.zeros(0, dtype=t)
                 for k, t in enumerate((np.int64, np.int64, value_dtype)))


@dataclass(frozen=True)
class Search:
    """What counts as a near-duplicate pair, and how pairs are searched and listed."""

    max_bits: int = 6  # Hamming distance (of 64 bits) at or below which a pair counts
    min_cosine: float = 0.95  # feature cosine at or above which a pair counts
    chunk: int = 4096  # rows per tile of the all-pairs comparisons (bounds memory)
    limit: int | None = None  # pairs listed, the closest first (None: all)


def near_duplicates(a_hashes: np.ndarray, b_hashes: np.ndarray, a_feats: np.ndarray | None = None,
                    b_feats: np.ndarray | None = None, search: Search = Search(), a_ok: np.ndarray | None = None,
                    b_ok: np.ndarray | None = None, expected: np.ndarray | None = None) -> tuple[int, int, list[dict]]:
    """Near-duplicate pairs between set A (synthetic or train) and B (test), all pairs; feats None: hashes only;
    unreadable rows (`*_ok` False) never match. `expected`: per row of A, the row of B it should match (an img2img
    output's source) or -1; those pairs are left out (see `expected_matches`).

    Returns (distinct pairs, distinct A images in them, `search.limit` pairs closest first as {"image" (index in A),
    "test" (index in B), "hash_bits" and/or "cosine"})."""
    a_hashes, b_hashes = np.asarray(a_hashes, dtype=np.uint64), np.asarray(b_hashes, dtype=np.uint64)
    a_idx = np.flatnonzero(a_ok) if a_ok is not None else np.arange(len(a_hashes))
    b_idx = np.flatnonzero(b_ok) if b_ok is not None else np.arange(len(b_hashes))

    def rows(i: np.ndarray, j: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs of readable rows as rows of A and B, without the expected pairs."""
        i, j = a_idx[i], b_idx[j]
        keep = np.asarray(expected, dtype=np.int64)[i] != j if expected is not None else slice(None)
        return i[keep], j[keep], v[keep]

    hi, hj, hb = rows(*hash_pairs(a_hashes[a_idx], b_hashes[b_idx], search.max_bits, search.chunk))
    ci, cj, cc = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if a_feats is not None and b_feats is not None and len(a_feats) and len(b_feats):
        ci, cj, cc = rows(*cosine_pairs(np.asarray(a_feats)[a_idx], np.asarray(b_feats)[b_idx], search.min_cosine,
                                        search.chunk))
    n_b = max(len(b_hashes), 1)
    keys = np.unique(np.concatenate([hi * n_b + hj, ci * n_b + cj]))
    # Closest first: fewest hash bits, then highest cosine; only `limit` of each become dicts.
    pairs: dict[tuple[int, int], dict] = {}
    for k in np.argsort(hb, kind="stable")[:search.limit]:
        pairs[(int(hi[k]), int(hj[k]))] = {"image": int(hi[k]), "test": int(hj[k]), "hash_bits": int(hb[k])}
    for k in np.argsort(-cc, kind="stable")[:search.limit]:
        pairs.setdefault((int(ci[k]), int(cj[k])), {"image": int(ci[k]), "test": int(cj[k])})["cosine"] = float(cc[k])
    listed = sorted(pairs.values(), key=lambda e: (e.get("hash_bits", 65), -e.get("cosine", -2.0), e["image"],
                                                   e["test"]))
    return len(keys), len(np.unique(keys // n_b)), listed[:search.limit]


def expected_matches(a_hashes: np.ndarray, b_hashes: np.ndarray, expected: np.ndarray,
                     a_feats: np.ndarray | None = None, b_feats: np.ndarray | None = None, search: Search = Search(),
                     a_ok: np.ndarray | None = None, b_ok: np.ndarray | None = None) -> np.ndarray:
    """Which rows of A are near-duplicates (by `search`'s thresholds) of their `expected` row of B (or -1), as
    (len(A),) bool: False where nothing is expected or either image is unreadable. Others as in `near_duplicates`."""
    expected = np.asarray(expected, dtype=np.int64)
    a_ok = np.ones(len(a_hashes), dtype=bool) if a_ok is None else np.asarray(a_ok, dtype=bool)
    b_ok = np.ones(len(b_hashes), dtype=bool) if b_ok is None else np.asarray(b_ok, dtype=bool)
    i = np.flatnonzero(expected >= 0)
    j = expected[i]
    ok = a_ok[i] & b_ok[j]
    i, j = i[ok], j[ok]
    a_h, b_h = np.asarray(a_hashes, dtype=np.uint64)[i], np.asarray(b_hashes, dtype=np.uint64)[j]
    hit = np.bitwise_count(np.bitwise_xor(a_h, b_h)) <= search.max_bits
    if a_feats is not None and b_feats is not None and len(a_feats) and len(b_feats):
        fa, fb = np.asarray(a_feats, dtype=np.float32)[i], np.asarray(b_feats, dtype=np.float32)[j]
        cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)).clip(1e-12)
        hit |= cos >= search.min_cosine
    out = np.zeros(len(a_hashes), dtype=bool)
    out[i[hit]] = True
    return out
