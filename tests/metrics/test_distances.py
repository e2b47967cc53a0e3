import numpy as np
from PIL import Image

from synthtl.metrics.distances import fid, kid, precision_recall
from synthtl.metrics.leakage import hamming, near_duplicates, phash


def test_fid_hand_computed_for_diagonal_gaussians():
    # Two sets whose sample means and covariances are exactly known: +-1 patterns shifted by mu.
    base = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    real = base * np.array([1.0, 2.0])  # covariance diag(4/3, 16/3) (ddof=1), mean 0
    fake = base * np.array([3.0, 2.0]) + np.array([1.0, 0.0])  # covariance diag(12, 16/3), mean (1, 0)
    # FID = |mu1-mu2|^2 + sum_i (s1_i + s2_i - 2 sqrt(s1_i s2_i)) = 1 + (4/3 + 12 - 2*4) + 0 = 1 + 16/3
    assert abs(fid(real, fake) - (1 + 16 / 3)) < 1e-8
    assert abs(fid(real, real)) < 1e-8


def test_kid_hand_computed_small_example():
    x = np.array([[1.0], [2.0]])
    y = np.array([[0.0], [1.0]])
    k = lambda a, b: (a * b + 1) ** 3  # noqa: E731  (d = 1)
    # unbiased MMD^2 with m = n = 2: off-diagonal means of Kxx and Kyy, minus twice the mean of Kxy
    expected = k(1, 2) + k(0, 1) - 2 * np.mean([k(1, 0), k(1, 1), k(2, 0), k(2, 1)])
    mean, std = kid(x, y, subsets=3, subset_size=2)
    assert abs(mean - expected) < 1e-9 and std < 1e-12


def test_precision_recall_separate_and_identical_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    assert precision_recall(real, real + 1e-9, k=3) == (1.0, 1.0)
    far = rng.normal(size=(200, 8)) + 50
    assert precision_recall(real, far, k=3) == (0.0, 0.0)


def test_phash_finds_a_planted_duplicate():
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(6)]
    test_hashes = [phash(im) for im in imgs]
    copy = imgs[3].resize((48, 48)).rotate(0)  # a resized copy of test image 3
    syn_hashes = [phash(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))) for _ in range(4)]
    syn_hashes.append(phash(copy))
    pairs = near_duplicates(syn_hashes, test_hashes, None, None, max_bits=6)
    assert [(p["synthetic"], p["test"]) for p in pairs] == [(4, 3)]
    assert hamming(np.array([0b1011], dtype=np.uint64), np.array([0b0001], dtype=np.uint64))[0, 0] == 2


def test_feature_cosine_duplicates():
    feats = np.eye(4)
    pairs = near_duplicates([], [], feats[[2]] * 3, feats, min_cosine=0.95)
    assert pairs == [{"synthetic": 0, "test": 2, "cosine": 1.0}]
