"""The FID bootstrap interval: the batched computation against the one it replaced (one np.cov and
one torch-fidelity FID per resample), on the classifier's real features."""

import numpy as np
import pytest
import torch

from ganflow import metrics as m
from ganflow.config import EvaluateConfig

CFG = EvaluateConfig(inception="off", batch_size=100)
CPU = torch.device("cpu")


def reference_interval(fake: torch.Tensor, real: torch.Tensor, reps: int, seed: int) -> tuple[float, float]:
    """The interval as ganflow computed it before (commit 81415d4): rows indexed per resample."""
    point = m.fid(fake, real)
    rng = np.random.default_rng(seed)
    boot = [m.fid(fake[torch.from_numpy(rng.integers(0, len(fake), len(fake)))],
                  real[torch.from_numpy(rng.integers(0, len(real), len(real)))]) for _ in range(reps)]
    lo, hi = np.quantile(boot, [(1 - m.CONFIDENCE) / 2, (1 + m.CONFIDENCE) / 2])
    return 2 * point - float(hi), 2 * point - float(lo)


@pytest.mark.stage
def test_batched_interval_agrees_with_the_per_resample_one(mnist, fresh_mnist, evaluator_file):
    real = m.real_features(mnist.images, "classifier", evaluator_file, CFG, CPU).emb
    other = m.extract(fresh_mnist.images[:400], "classifier", evaluator_file, CFG, CPU).emb
    # a worse "generator": real digits with a quarter of their pixels zeroed, so FID is well above 0
    damaged = fresh_mnist.images[400:800].copy()
    damaged[:, :, ::2, ::2] = 0
    worse = m.extract(damaged, "classifier", evaluator_file, CFG, CPU).emb
    for fake in (other, worse):
        old = reference_interval(fake, real, 60, 3)
        new = m.fid_interval(fake, real, 60, 3)
        width = old[1] - old[0]
        assert width > 0
        # the same resamples: the ends agree far inside the 10 % the issue asks for
        assert abs(new[0] - old[0]) < 0.01 * width and abs(new[1] - old[1]) < 0.01 * width, (old, new)


def test_batched_fid_matches_torch_fidelity_per_pair():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 16, generator=g) @ torch.randn(16, 16, generator=g)
    b = torch.randn(200, 16, generator=g) @ torch.randn(16, 16, generator=g) + 0.5
    idx = [np.arange(len(a)), np.random.default_rng(1).integers(0, len(a), len(a))]
    mu_a, cov_a = m._resampled_stats(a, idx)
    mu_b, cov_b = m._resampled_stats(b, [np.arange(len(b))] * 2)
    batched = m._fid_batch(mu_a, cov_a, mu_b, cov_b)
    for i, rows in enumerate(idx):
        np.testing.assert_allclose(float(batched[i]), m.fid(a[torch.from_numpy(rows)], b), rtol=1e-6)


@pytest.mark.parametrize("n, dim", [(700, 384), (300, 16)])
def test_resampled_stats_are_the_gathered_products_to_float32_rounding(n, dim):
    """The rows' packed outer products, built one triangle row at a time and multiplied by the counts in
    float32, give the covariances of the float64 products gathered with triu_indices before (commit
    3793ec5) to float32 rounding, and the same means bit for bit (700 rows of 384: several blocks)."""
    g = torch.Generator().manual_seed(dim)
    x = torch.relu(torch.randn(n, dim, generator=g)).double()
    draws = [np.random.default_rng(i).integers(0, n, n) for i in range(3)]
    centred = x - x.mean(0)
    counts = torch.from_numpy(np.stack([np.bincount(i, minlength=n) for i in draws])).double()
    iu = torch.triu_indices(dim, dim)
    packed = counts @ (centred[:, iu[0]] * centred[:, iu[1]])
    mu, cov = m._resampled_stats(x, draws)
    mean = counts @ centred / n
    exact = (packed - n * mean[:, iu[0]] * mean[:, iu[1]]) / (n - 1)
    assert torch.equal(mu, mean + x.mean(0))
    error = (cov[:, iu[0], iu[1]] - exact).abs().max() / exact.abs().max()
    assert 0 < error < 1e-5, error  # float32 sums of 700 rows (2e-6 here), not float64, and nothing worse


def test_a_dead_feature_takes_the_eigen_path_and_agrees_with_torch_fidelity():
    """A feature that is 0 in every row (a dead ReLU) makes every Σ₁ singular: Cholesky fails and
    √Σ₁ comes from the eigen-decomposition; the FIDs still equal torch-fidelity's, and the thread
    count is restored after the interval."""
    g = torch.Generator().manual_seed(2)
    a = torch.relu(torch.randn(400, 12, generator=g))
    a[:, 3] = 0
    b = torch.relu(torch.randn(300, 12, generator=g) + 0.2)
    idx = [np.random.default_rng(i).integers(0, len(a), len(a)) for i in range(3)]
    mu_a, cov_a = m._resampled_stats(a, idx)
    assert (torch.linalg.cholesky_ex(cov_a)[1] > 0).all()
    mu_b, cov_b = m._resampled_stats(b, [np.arange(len(b))] * 3)
    batched = m._fid_batch(mu_a, cov_a, mu_b, cov_b)
    for i, rows in enumerate(idx):
        np.testing.assert_allclose(float(batched[i]), m.fid(a[torch.from_numpy(rows)], b), rtol=1e-6)
    threads = torch.get_num_threads()
    m.fid_interval(a, b, 10, 0)
    assert torch.get_num_threads() == threads


def test_rank_deficient_features_give_a_finite_interval():
    """Fewer samples than dimensions (singular covariances): no NaN, as with torch-fidelity's complex sqrt."""
    g = torch.Generator().manual_seed(0)
    fake, real = torch.relu(torch.randn(20, 32, generator=g)), torch.relu(torch.randn(50, 32, generator=g))
    lo, hi = m.fid_interval(fake, real, 30, 0)
    assert np.isfinite([lo, hi]).all() and lo < hi
