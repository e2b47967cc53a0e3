import numpy as np

from synthtl.metrics.distances import fid, kid, precision_recall


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


def test_chunked_precision_recall_equals_the_full_matrix():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(90, 6)), rng.normal(size=(70, 6)) + 0.7

    def full(real, fake, k=3):  # the textbook formulation: whole n x n distance matrices
        d = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)  # noqa: E731
        rr, rf = np.sort(d(real, real), 1)[:, k], np.sort(d(fake, fake), 1)[:, k]
        return (d(fake, real) <= rr[None]).any(1).mean(), (d(real, fake) <= rf[None]).any(1).mean()

    want = full(real, fake)
    assert 0 < want[0] < 1 and 0 < want[1] < 1
    for chunk in (1, 16, 4096):
        got = precision_recall(real, fake, k=3, chunk=chunk)
        assert np.allclose(got, want)
