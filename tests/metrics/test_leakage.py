"""The leakage check: perceptual hashes read once per file, all-pairs comparisons in tiles that miss nothing."""

import numpy as np
from PIL import Image
from scipy.fft import dctn

from synthtl.metrics.leakage import (
    Search,
    cosine_pairs,
    expected_matches,
    hamming,
    hash_files,
    hash_pairs,
    near_duplicates,
    phash,
    phash_batch,
)


def _noise(rng, size=64) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _smooth(rng, size=256) -> Image.Image:
    """A photo-like image: low-frequency content, so resizing and JPEG keep its perceptual hash."""
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def test_batched_dct_hash_equals_the_textbook_definition():
    g = np.random.default_rng(0).integers(0, 255, (7, 32, 32)).astype(np.uint8)
    for img, h in zip(g, phash_batch(g), strict=True):
        low = dctn(img.astype(np.float64), norm="ortho")[:8, :8].flatten()
        bits = np.concatenate([[low[0] > 0], low[1:] > np.median(low[1:])])
        assert int(h) == int("".join("1" if b else "0" for b in bits), 2)


def test_phash_finds_a_planted_duplicate():
    rng = np.random.default_rng(1)
    imgs = [_smooth(rng) for _ in range(6)]
    test_hashes = np.array([phash(im) for im in imgs], dtype=np.uint64)
    copy = imgs[3].resize((181, 181))  # a resized copy of test image 3
    syn_hashes = np.array([phash(_smooth(rng)) for _ in range(4)] + [phash(copy)], dtype=np.uint64)
    count, flagged, pairs = near_duplicates(syn_hashes, test_hashes, search=Search(max_bits=6))
    assert (count, flagged) == (1, 1) and [(p["image"], p["test"]) for p in pairs] == [(4, 3)]
    assert hamming(np.array([0b1011], dtype=np.uint64), np.array([0b0001], dtype=np.uint64))[0, 0] == 2


def test_tiled_hash_comparison_finds_every_pair_a_full_matrix_finds():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2**63, 1000, dtype=np.uint64)
    b = rng.integers(0, 2**63, 333, dtype=np.uint64)
    for i, j, flip in [(0, 0, 0), (999, 332, 0b111), (500, 17, 0b100001), (998, 332, 1 << 63)]:
        a[i] = b[j] ^ np.uint64(flip)
    full = hamming(a, b)
    want = set(zip(*np.nonzero(full <= 6), strict=True))
    for chunk in (7, 100, 4096):  # tile edges inside and beyond both sets, the last row and column included
        i, j, bits = hash_pairs(a, b, 6, chunk, workers=2)
        assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(int(x), int(y)) for x, y in want}
        assert (bits == full[i, j]).all()
    assert (999, 332) in {(int(x), int(y)) for x, y in want}


def test_tiled_cosine_equals_the_full_product():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(23, 16))
    a[49] = 3 * b[22] + 1e-3  # the last rows of both: scaled copies
    a[0] = b[5]
    full = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    want = {(int(x), int(y)) for x, y in zip(*np.nonzero(full >= 0.95), strict=True)}
    i, j, cos = cosine_pairs(a, b, 0.95, chunk=8)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == want and {(0, 5), (49, 22)} <= want
    assert np.allclose(cos, full[i, j], atol=1e-5)


def test_hash_files_reads_every_format_and_marks_unreadable(tmp_path):
    rng = np.random.default_rng(4)
    big = _smooth(rng, 1024)
    big.save(tmp_path / "big.jpg", quality=95)  # decoded at a reduced DCT scale
    big.resize((300, 300)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((40, 40), dtype=np.uint16) + 3000).save(tmp_path / "deep.png")  # 16-bit grayscale
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths = [tmp_path / n for n in ("big.jpg", "small.png", "deep.png", "broken.jpg", "missing.jpg")]
    hashes, ok, digests = hash_files(paths, workers=2)
    assert ok.tolist() == [True, True, True, False, False]
    assert np.bitwise_count(hashes[0] ^ hashes[1]) <= 6  # the same picture, JPEG at 1024 px vs PNG at 300 px
    assert digests[4] == b"" and len({*digests[:4]}) == 4
    # unreadable rows never match, even though their hash (0) equals another unreadable row's
    count, _, pairs = near_duplicates(hashes, hashes, search=Search(max_bits=0), a_ok=ok, b_ok=ok)
    assert count == len(pairs) >= 3 and {(i, i) for i in range(3)} <= {(p["image"], p["test"]) for p in pairs}
    assert not {p["image"] for p in pairs} & {3, 4} and not {p["test"] for p in pairs} & {3, 4}


def test_expected_pairs_are_left_out_and_counted_apart_and_the_closest_are_listed_first():
    rng = np.random.default_rng(5)
    b = rng.integers(0, 2**63, 6, dtype=np.uint64)
    a = np.concatenate([b[:3] ^ np.uint64(0b1), b[3:4] ^ np.uint64(0b1111), rng.integers(0, 2**63, 2, dtype=np.uint64)])
    fa, fb = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    fa[5] = fb[4]  # a feature-only pair
    expected = np.array([0, -1, -1, -1, -1, -1])  # row 0 of A is an output of row 0 of B
    count, flagged, pairs = near_duplicates(a, b, fa, fb, Search(max_bits=3, min_cosine=0.99, limit=3),
                                            expected=expected)
    assert (count, flagged) == (3, 3)  # (1, 1), (2, 2) by hash, (5, 4) by cosine; (0, 0) expected; (3, 3) too far
    assert [(p["image"], p["test"]) for p in pairs] == [(1, 1), (2, 2), (5, 4)]
    assert pairs[0]["hash_bits"] == 1 and pairs[2]["cosine"] > 0.99 and "hash_bits" not in pairs[2]
    assert near_duplicates(a, b, fa, fb, Search(max_bits=3, min_cosine=0.99, limit=0))[:2] == (4, 4)
    assert near_duplicates(a, b, fa, fb, Search(max_bits=3, min_cosine=0.99, limit=0))[2] == []
    assert expected_matches(a, b, expected, fa, fb, Search(max_bits=3)).tolist() == [True] + [False] * 5
    assert not expected_matches(a, b, expected, a_ok=np.array([False] + [True] * 5)).any()  # unreadable: no match
