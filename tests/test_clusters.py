"""Self-conditioning (train.clusters): k-means clusters of the training images stand in for labels, and a
self-conditioned generator draws its clusters in their shares of the data."""

import numpy as np
import pytest
import torch

from ganflow import GanflowError, clusters
from ganflow.data import ImageSet
from ganflow.nets import NetConfig, build
from ganflow.sampling import generate, labels


def test_auto_makes_one_cluster_per_90_images():
    assert clusters.auto_count(4500, 1000) == 50  # unconditional mnist-5k's training split
    assert clusters.auto_count(23040, 1000) == 256  # StackedMNIST's
    assert clusters.auto_count(1000, 1000) == 11
    assert clusters.auto_count(10**6, 1000) == 1000
    assert clusters.auto_count(180, 1000) == 2
    assert clusters.auto_count(179, 1000) == 0  # fewer than 2 clusters: off


def test_kmeans_gives_the_same_clusters_for_the_same_images_and_seed(mnist):
    images = mnist.images[:300]
    a, b, c = clusters.kmeans(images, 5, seed=0), clusters.kmeans(images, 5, seed=0), clusters.kmeans(images, 5, seed=1)
    assert a.dtype == np.int64 and a.shape == (300,) and set(a.tolist()) == set(range(5))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # pixels group digits: each cluster is mostly one digit (chance would be about 0.1 to 0.3)
    purity = sum(np.bincount(mnist.labels[:300][a == k]).max() for k in range(5)) / 300
    assert purity > 0.4
    assert clusters.shares(a, 5) == pytest.approx(np.bincount(a, minlength=5) / 300)
    with pytest.raises(GanflowError, match=r"^train.clusters is 301, but self-conditioning needs 2 to 300 clusters"):
        clusters.kmeans(images, 301, seed=0)


def test_kmeans_sees_the_pixels_area_averaged_to_at_most_8_px(monkeypatch):
    import sklearn.cluster

    seen = []

    class Recording(sklearn.cluster.KMeans):
        def fit(self, x, *args, **kw):
            seen.append(x.shape[1])
            return super().fit(x, *args, **kw)

    monkeypatch.setattr(sklearn.cluster, "KMeans", Recording)
    for side, channels, width in ((28, 1, 7 * 7), (32, 3, 3 * 8 * 8), (64, 3, 3 * 8 * 8)):
        images = np.random.default_rng(0).integers(0, 256, (20, channels, side, side), dtype=np.uint8)
        clusters.kmeans(images, 2, seed=0)
        assert seen.pop() == width


def test_a_self_conditioned_generator_draws_its_clusters_in_their_shares():
    G = build("dcgan", NetConfig(28, 1, z_dim=8, width=8, n_classes=3))[0].eval()
    G.class_shares = [0.6, 0.3, 0.1]
    y = labels(G, None, 0, 6000, seed=1)
    assert np.bincount(y.numpy(), minlength=3) / 6000 == pytest.approx([0.6, 0.3, 0.1], abs=0.02)
    # image i's cluster depends on (seed, i) only, and so does the image
    assert torch.equal(labels(G, None, 100, 110, seed=1), y[100:110])
    assert not torch.equal(labels(G, None, 0, 100, seed=2), y[:100])
    assert torch.equal(generate(G, 1, 70, 75), generate(G, 1, 0, 128)[70:75])
    # sample.classes still picks clusters by hand; an unconditional draw in shares is the default
    assert labels(G, [2], 0, 4, seed=1).tolist() == [2, 2, 2, 2]


@pytest.mark.stage
def test_a_self_conditioned_run_keeps_its_clusters_and_resumes_exactly(mnist, tmp_path):
    """Unlabelled data, train.clusters 4: the nets take 4 classes, the clusters ride in the checkpoint (so a
    resumed run trains on the ones it began with) and their shares in generator.pt (so sampling draws them);
    a run killed after its step-10 checkpoint and resumed equals the whole one, bit for bit."""
    from conftest import killed_then_resumed, train

    from ganflow.generator import load_generator

    data = ImageSet(mnist.images, None, [])
    a = train(data, tmp_path / "whole", clusters=4)
    b = killed_then_resumed(data, tmp_path / "split", {"clusters": 4})
    assert b.resumed_step == 10
    assert (tmp_path / "whole" / "generator.pt").read_bytes() == (tmp_path / "split" / "generator.pt").read_bytes()
    found = clusters.kmeans(mnist.images, 4, seed=0)
    assert a.net_cfg.n_classes == 4 and torch.equal(a.gs.labels, torch.from_numpy(found))
    assert torch.equal(torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["clusters"], torch.from_numpy(found))
    G, info = load_generator(tmp_path / "whole" / "generator.pt")
    assert info["class_shares"] == G.class_shares == pytest.approx(clusters.shares(found, 4))
    # the clusters condition the nets: the same run unconditioned ends elsewhere
    train(data, tmp_path / "plain", clusters=0)
    assert (tmp_path / "whole" / "generator.pt").read_bytes() != (tmp_path / "plain" / "generator.pt").read_bytes()


def test_clusters_need_an_arch_that_takes_classes(mnist):
    from conftest import TINY_TRAIN

    from ganflow.config import parse_params
    from ganflow.training import Trainer

    data = ImageSet(mnist.images, None, [])
    with pytest.raises(GanflowError, match=r"^train.clusters is 5, but arch seed takes no classes: use auto or 0$"):
        Trainer(parse_params({"train": {**TINY_TRAIN, "arch": "seed", "clusters": 5}}), data, "x")


def test_stacked_mnist_self_conditions_on_one_cluster_per_23_training_stacks():
    from ganflow.config import parse_params
    from ganflow.gan_step import cluster_count

    def count(n_images: int, source: str = "stacked-mnist", **train) -> int:
        params = parse_params({"prepare": {"source": source, "channels": 3}, "train": train})
        stacks = ImageSet(np.zeros((n_images, 3, 28, 28), np.uint8), np.zeros(n_images, np.int64), [str(i) for i in range(1000)])
        return cluster_count(params.train, stacks, params.prepare.source)

    assert count(23040) == 1000  # the default's training stacks (docs/sweep.md, round 18)
    assert count(900) == 39  # stacked_n 1,000: never more clusters than its training stacks
    assert count(23040, clusters=256) == 256 and count(23040, clusters=0) == 0
    assert count(23040, arch="seed") == 0  # an arch without classes trains unclustered under auto
    assert clusters.auto_count(23040, 1000) == 256  # elsewhere: one per 90
