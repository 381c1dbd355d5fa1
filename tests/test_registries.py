"""Every registry: lookup errors, duplicate registration, and each registered part working."""

import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from ganflow import GanflowError, augment, config, losses
from ganflow.config import PrepareConfig
from ganflow.data import SOURCES, load_source
from ganflow.nets import ARCHS, NetConfig, build
from ganflow.registry import Registry


def test_registry_refuses_duplicates_and_names_the_choices():
    r = Registry("widget")
    r.register("a")(1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        r.register("a")(2)
    with pytest.raises(KeyError, match="unknown widget 'b' \\(choose from a\\)"):
        r.get("b")


def test_registered_names():
    assert {"seed", "dcgan"} <= set(ARCHS.names())
    assert {"non-saturating", "hinge", "wgan-gp", "rpgan"} <= set(losses.LOSSES.names())
    assert {"mnist-5k", "mnist", "fashion-mnist", "cifar10", "folder", "stacked-mnist"} == set(SOURCES.names())
    assert {"color", "translation", "cutout"} == set(augment.AUGMENTS.names())


def test_config_checks_exactly_the_registered_names():
    # config.py holds the names torch-free (so `ganflow check` never imports torch): they must not drift
    assert config.arch_names() == ARCHS.names()
    assert sorted(config.SOURCE_NAMES) == SOURCES.names()
    assert sorted(config.LOSS_NAMES) == losses.LOSSES.names()
    assert sorted(config.AUGMENT_NAMES) == augment.AUGMENTS.names()


@pytest.mark.parametrize("arch", ARCHS.names())
@pytest.mark.parametrize("resolution", [28, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_architectures_shapes(arch, resolution, channels):
    G, D = build(arch, NetConfig(resolution, channels, z_dim=16, width=8))
    x = G(torch.randn(3, 16))
    assert x.shape == (3, channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (3,)
    with pytest.raises(ValueError, match="expected N×16, got 3×15"):
        G(torch.randn(3, 15))


def test_seed_architecture_is_the_original_design():
    G, D = build("seed", NetConfig(28, 1, z_dim=100, width=999))
    dense = [m for m in G.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dense] == [(100, 128), (128, 128), (128, 784)]
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size, m.stride) for m in convs] == [(64, (5, 5), (2, 2)), (128, (5, 5), (2, 2))]


@pytest.mark.parametrize("name", losses.LOSSES.names())
def test_losses_give_finite_gradients_to_both_players(name):
    torch.manual_seed(0)
    G, D = build("dcgan", NetConfig(28, 1, z_dim=8, width=8))
    loss = losses.get(name)
    real = torch.rand(4, 1, 28, 28) * 2 - 1
    fake = G(torch.randn(4, 8))
    d, r, f = loss.d_loss(D, real, fake.detach())
    d.backward()
    assert torch.isfinite(d) and r.shape == f.shape == (4,)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())
    g = loss.g_loss(D, fake)
    g.backward()
    assert torch.isfinite(g) and all(p.grad is not None for p in G.parameters())


def test_hinge_and_non_saturating_values():
    r, f = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])
    assert losses.get("hinge").d_from_logits(r, f).item() == pytest.approx((0 + 1) / 2 + (0 + 1) / 2)
    ns = losses.get("non-saturating").d_from_logits(r, f).item()
    expect = np.mean(np.log1p(np.exp([-2.0, 0.0]))) * 2
    assert ns == pytest.approx(expect, rel=1e-6)


def test_r1_penalty_is_half_the_mean_squared_gradient_on_real_images():
    w = torch.randn(1, 1, 28, 28, requires_grad=True)
    D = lambda x, y: (w * x).sum((1, 2, 3))  # noqa: E731 - ∇ₓD = w for every image
    penalty = losses.Loss.r1_penalty(D, torch.rand(4, 1, 28, 28))
    assert penalty.item() == pytest.approx(w.square().sum().item() / 2, rel=1e-5)
    penalty.backward()  # it reaches D's weights: d/dw of ½‖w‖² is w
    assert torch.allclose(w.grad, w.detach(), atol=1e-5)


def test_dcgan_projection_reads_classes_from_pooled_channels():
    D = build("dcgan", NetConfig(28, 1, z_dim=8, width=8, n_classes=10))[1].eval()  # eval: no power iteration per call
    assert D.head.embed.weight.shape == (10, 16)  # one direction per class in D's last 16 channels
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 2])
    h = D.body(x)
    want = D.head.linear(h.flatten(1)).squeeze(1) + (D.head.embed(y) * h.sum((2, 3))).sum(1)
    assert torch.allclose(D(x, y), want, atol=1e-5)


@pytest.mark.parametrize("arch", ["dcgan", "sngan"])
def test_d_width_sizes_d_alone(arch):
    G, D = build(arch, NetConfig(28, 1, z_dim=8, width=8))
    G2, D2 = build(arch, NetConfig(28, 1, z_dim=8, width=8, d_width=16))
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(G2) == count(G) and count(D2) > 2 * count(D)
    assert D2(G2(torch.randn(2, 8))).shape == (2,)


@pytest.mark.parametrize("name", ["hinge", "non-saturating"])
def test_top_k_g_loss_counts_only_the_fakes_d_rates_most_real(name):
    logits = torch.tensor([3.0, -1.0, 0.5, -4.0], requires_grad=True)
    loss = losses.get(name)
    top2 = loss.g_loss(lambda x, y: x, logits, keep=torch.tensor(2.0))
    assert top2.item() == pytest.approx(loss.g_per_sample(torch.tensor([3.0, 0.5])).mean().item())
    top2.backward()
    assert (logits.grad[[1, 3]] == 0).all() and (logits.grad[[0, 2]] != 0).all()
    every = loss.g_loss(lambda x, y: x, logits.detach(), keep=torch.tensor(4.0))
    assert every.item() == pytest.approx(loss.g_loss(lambda x, y: x, logits.detach()).item())


def test_mnist_5k_source_is_real_mnist():
    ds = load_source(PrepareConfig(), "unused")
    assert ds.images.shape == (5000, 1, 28, 28) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [500] * 10
    ds32 = load_source(PrepareConfig(resolution=32, channels=3), "unused")
    assert ds32.images.shape == (5000, 3, 32, 32)


@pytest.mark.parametrize("source", ["mnist", "fashion-mnist", "cifar10"])
def test_torchvision_sources_fail_offline_with_a_clear_error(source, tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    for cls in ("MNIST", "FashionMNIST", "CIFAR10"):
        monkeypatch.setattr(tvd, cls, offline)
    with pytest.raises(GanflowError) as err:
        load_source(PrepareConfig(source=source), tmp_path / "raw")
    msg = str(err.value)
    assert msg.startswith(f"prepare.source {source}: could not download it (URLError") and str(tmp_path / "raw") in msg


def _image_folder(root, modes=("L", "RGB", "RGBA", "P")):
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True)
        for i, mode in enumerate(modes):
            Image.new(mode, (40 + 7 * i, 30 + 3 * i), color=i * 40).save(root / c / f"{i}.png")
    return root


def test_folder_source_converts_modes_and_sizes(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    ds = load_source(PrepareConfig(source="folder", folder=str(root), resolution=32, channels=3), tmp_path)
    assert ds.images.shape == (8, 3, 32, 32) and ds.classes == ["cats", "dogs"]
    assert ds.labels.tolist() == [0] * 4 + [1] * 4


def test_folder_source_lists_every_unreadable_file(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    (root / "cats" / "notes.txt").write_text("not an image")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(GanflowError) as err:
        load_source(PrepareConfig(source="folder", folder=str(root)), tmp_path)
    msg = str(err.value)
    assert "2 unreadable file(s)" in msg and "cats/notes.txt" in msg and "dogs/broken.png" in msg


def test_folder_source_missing_or_empty(tmp_path):
    with pytest.raises(GanflowError, match="no such folder"):
        load_source(PrepareConfig(source="folder", folder=str(tmp_path / "nope")), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GanflowError, match="no image files"):
        load_source(PrepareConfig(source="folder", folder=str(tmp_path / "empty")), tmp_path)


@pytest.mark.parametrize("policy", augment.AUGMENTS.names())
def test_augmentations_keep_shape_and_change_images(policy):
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    seen = []
    D = augment.wrap(lambda x, y=None: seen.append(x) or x.sum(), [policy])
    D(x)
    assert seen[0].shape == x.shape and not torch.equal(x, seen[0])
