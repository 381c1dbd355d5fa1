"""Self-conditioning (Liu, Wang, Zhu, Torralba & Isola 2020, "Diverse Image Generation via Self-Conditioned
GANs", CVPR): without labels, G and D are conditioned on clusters of the training images instead, and G is
sampled in the clusters' shares, so that each mode of the data is drawn as often as it occurs. Here the
clusters are k-means clusters of the pixels (area-averaged to at most 8 px a side: StackedMNIST's 1,000 clusters
fit 2.8x faster than at 14 px, and both data sets scored as well or better), fitted once on the training split
before training (the paper re-clusters D's features as it trains); the train stage keeps them in the
checkpoint, so a resumed run trains on the same ones. docs/sweep.md (rounds 16 and 18) has what they buy.
"""

from __future__ import annotations

import numpy as np
import torch

from ganflow import GanflowError
from ganflow.pixels import to_float

IMAGES_PER_CLUSTER = 90  # train.clusters auto: one cluster per this many training images (docs/sweep.md, round 16)
STACKED_IMAGES_PER_CLUSTER = 23  # on stacked-mnist: 23,040 training stacks -> 1,000 clusters (docs/sweep.md, round 18)
SIDE = 8  # k-means sees the images area-averaged by the smallest whole factor that brings them to at most this side


def auto_count(n_images: int, most: int, per: int = IMAGES_PER_CLUSTER) -> int:
    """train.clusters auto: one cluster per `per` training images (unconditional mnist-5k's 4,500: 50; on
    stacked-mnist one per STACKED_IMAGES_PER_CLUSTER, its 23,040: 1,000), at most `most`; 0 (off) where that
    leaves fewer than 2."""
    k = min(most, n_images // per)
    return k if k >= 2 else 0


def kmeans(images: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Each image's cluster (0..k-1, int64): scikit-learn's k-means (one k-means++ start seeded by `seed`)
    on the pixels in [-1, 1], area-averaged to at most SIDE a side (28 px: 7), on one thread (its threads
    add their partial sums in any order: one thread gives the same clusters for the same images and seed)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    if not 2 <= k <= len(images):
        raise GanflowError(f"train.clusters is {k}, but self-conditioning needs 2 to {len(images)} clusters "
                           f"for {len(images)} training images")
    x = to_float(torch.from_numpy(images))
    x = torch.nn.functional.avg_pool2d(x, -(-x.shape[-1] // SIDE), ceil_mode=True).flatten(1).numpy()
    with threadpool_limits(1):
        return KMeans(k, n_init=1, random_state=seed).fit(x).labels_.astype(np.int64)


def shares(labels: np.ndarray, k: int) -> list[float]:
    """Each cluster's share of the training images: how often G draws it."""
    return (np.bincount(labels, minlength=k) / len(labels)).tolist()


def draw(class_shares: list[float], seed: int, start: int, stop: int) -> torch.Tensor:
    """The clusters of images start..stop-1, drawn in `class_shares`: image i's from its own RNG seeded
    with (seed, i, 1) (its latent's is (seed, i)), so image i depends on (seed, i) only."""
    cdf = np.cumsum(class_shares)
    u = np.array([np.random.default_rng([seed, i, 1]).random() for i in range(start, stop)]) * cdf[-1]
    return torch.from_numpy(np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1))
