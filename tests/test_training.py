import copy

import pytest
import torch

from conftest import TINY_TRAIN, paths, train
from ganflow import GanflowError, accel
from ganflow.config import parse_params
from ganflow.generator import load_generator
from ganflow.outputs import TrainPaths
from ganflow.training import Selection, Trainer


def test_the_train_stage_outputs_are_one_list():
    """dvc.yaml's train command, the stage's argv and TrainPaths follow one list of outputs."""
    import argparse

    import yaml

    from conftest import ROOT
    from ganflow.outputs import TRAIN_FILE_NAMES

    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["cmd"].split()
    assert cmd[:4] == ["python", "stages/train.py", "data/prepared", "models/evaluator.pt"]
    assert [c.rsplit("/", 1)[-1] for c in cmd[4:]] == list(TRAIN_FILE_NAMES)
    ap = argparse.ArgumentParser()
    TrainPaths.add_arguments(ap)
    paths = TrainPaths.from_args(ap.parse_args(cmd[4:]))
    assert paths.argv() == cmd[4:] and paths.checkpoint.name == "checkpoint.pt"


@pytest.mark.stage
def test_same_seed_gives_byte_identical_generator(mnist, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(mnist, a)
    train(mnist, b)
    assert (a / "generator.pt").read_bytes() == (b / "generator.pt").read_bytes()
    assert (a / "train_log.tsv").read_text() == (b / "train_log.tsv").read_text()
    c = tmp_path / "c"
    train(mnist, c, resume=False, lr_g=0.0005)  # not the default
    assert (a / "generator.pt").read_bytes() != (c / "generator.pt").read_bytes()


@pytest.mark.stage
def test_outputs(mnist, tmp_path):
    t = train(mnist, tmp_path)
    rows = (tmp_path / "train_log.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "loss_D", "loss_G", "D_x", "D_G_z"]
    assert [int(r.split("\t")[0]) for r in rows[1:]] == [5, 10, 15, 20]
    assert (tmp_path / "train_grid.png").read_bytes()[:4] == b"\x89PNG"
    assert t.state.step == 20


@pytest.mark.stage
def test_checkpoint_round_trip_with_weights_only(mnist, tmp_path):
    t = train(mnist, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 20 and set(ckpt) >= {"G", "D", "G_ema", "opt_g", "opt_d", "rng", "fingerprint", "log_rows"}
    for k, v in t.gs.G.state_dict().items():
        assert torch.equal(ckpt["G"][k], v)
    G, obj = load_generator(tmp_path / "generator.pt")
    assert obj["arch"] == "dcgan" and not G.training
    for k, v in t.gs.G_ema.state_dict().items():  # the EMA generator is the one saved
        assert torch.equal(G.state_dict()[k], v)


def test_ema_update_on_a_toy_model(mnist):
    params = parse_params({"train": {**TINY_TRAIN, "ema": 16.0, "batch_size": 16}})
    t = Trainer(params, mnist, "x")
    t.gs.schedule(0)
    assert t.gs.ema_weight.item() == pytest.approx(0.5)  # half-life of 16 images at 16 images per step
    before = copy.deepcopy(t.gs.G_ema.state_dict())
    with torch.no_grad():
        for p in t.gs.G.parameters():
            p.add_(1.0)
    t.gs.update_ema()
    for name, p in t.gs.G.named_parameters():
        assert torch.allclose(t.gs.G_ema.state_dict()[name], 0.5 * before[name] + 0.5 * p)


def test_diffaugment_sees_real_and_fake_alike(mnist, monkeypatch):
    import ganflow.augment as aug

    seen = []

    def spy(x):
        seen.append(x.shape[0])
        return x

    monkeypatch.setitem(aug.AUGMENTS._items, "translation", spy)
    params = parse_params({"train": {**TINY_TRAIN, "augment": ["translation"]}})
    t = Trainer(params, mnist, "x")
    t.gs.step()
    # D step: real + fake; G step: fake — every D input went through the augmentation
    assert seen == [16, 16, 16]


@pytest.mark.stage
def test_best_generator_is_the_one_with_the_lowest_fid(mnist, tmp_path):
    params = parse_params({"train": {**TINY_TRAIN, "eval_every": 5}})
    t = Trainer(params, mnist, "sha-test")
    scores = iter([9.0, 4.0, 6.0, 5.0])  # checks at steps 5, 10, 15, 20
    snapshots = {}

    def scorer(G):
        assert not G.training  # scored in eval mode
        snapshots[t.state.step] = {k: v.clone() for k, v in G.state_dict().items()}
        return next(scores)

    summary = t.run(paths(tmp_path), selection=Selection("fid_classifier", scorer))
    assert summary["best_step"] == 10 and summary["best_fid_classifier_during_training"] == 4.0
    assert 0 < summary["eval_time_fraction"] < 1
    best, info = load_generator(tmp_path / "generator_best.pt")
    assert info["step"] == 10 and info["fid_classifier"] == 4.0
    for k, v in best.state_dict().items():
        assert torch.equal(v, snapshots[10][k])
    last = torch.load(tmp_path / "generator.pt", weights_only=True)
    assert last["step"] == 20
    assert (tmp_path / "fid_curve.tsv").read_text().splitlines() == ["step\tfid_classifier", "5\t9", "10\t4", "15\t6", "20\t5"]


@pytest.mark.parametrize("arch", ["dcgan", "sngan"])
def test_conditional_training_step_changes_weights_and_samples_requested_classes(mnist, tmp_path, arch):
    from ganflow.sampling import class_grid, generate

    params = parse_params({"train": {**TINY_TRAIN, "arch": arch, "conditional": True, "ema": 0.0}})  # G itself, one step in
    t = Trainer(params, mnist, "x")
    before = {k: v.clone() for k, v in t.gs.G.state_dict().items()}
    t.gs.step()
    assert any(not torch.equal(before[k], v) for k, v in t.gs.G.state_dict().items())
    G = t.gs.G_eval.eval()
    assert G.cfg.n_classes == 10
    # the class embedding is used: the same latent under two classes gives two images (compared before
    # quantising: one step in, the uint8 images of some seeds differ by less than one level)
    z = torch.randn(20, G.cfg.z_dim)
    with torch.no_grad():
        assert not torch.equal(G(z, torch.tensor([3, 7] * 10)), G(z, torch.tensor([7, 3] * 10)))
    assert class_grid(G, 0).shape == (100, 1, 28, 28)
    with pytest.raises(GanflowError, match="knows 10 classes"):
        generate(G, 0, 0, 4, classes=[12])


def test_conditional_needs_labels(mnist):
    from ganflow.data import ImageSet

    unlabelled = ImageSet(mnist.images, None, [])
    with pytest.raises(GanflowError, match="train.conditional is true, but the prepared data has no labels"):
        Trainer(parse_params({"train": {**TINY_TRAIN, "conditional": True}}), unlabelled, "x")
    with pytest.raises(GanflowError, match="train.conditional is true, but arch seed is unconditional"):
        Trainer(parse_params({"train": {**TINY_TRAIN, "arch": "seed", "conditional": True}}), mnist, "x")


@pytest.mark.parametrize("arch, labelled, clusters, classes", [
    ("dcgan", True, "auto", 10), ("sngan", True, "auto", 10), ("dcgan", True, 7, 10),  # labels win over clusters
    ("dcgan", False, "auto", 11),  # self-conditioned: 1,000 images make 11 clusters (one per 90 images)
    ("dcgan", False, 0, 0), ("seed", True, "auto", 0), ("seed", False, "auto", 0),
])
def test_conditional_auto_follows_the_labels_and_the_arch(mnist, arch, labelled, clusters, classes):
    from ganflow.data import ImageSet

    data = mnist if labelled else ImageSet(mnist.images, None, [])
    t = Trainer(parse_params({"train": {**TINY_TRAIN, "arch": arch, "conditional": "auto", "clusters": clusters}}), data, "x")
    assert t.net_cfg.n_classes == classes and t.gs.G.cfg.n_classes == classes
    assert (t.gs.class_shares is not None) == (not labelled and classes > 0)


@pytest.mark.stage
def test_fid_checks_do_not_change_training(mnist, tmp_path):
    def scorer(G):
        torch.rand(5)  # a scorer that draws from the global RNG, as a DataLoader does
        return 1.0

    runs = []
    for every in (0, 5):
        accel.seed_everything(0, torch.device("cpu"))
        t = Trainer(parse_params({"train": {**TINY_TRAIN, "eval_every": every}}), mnist, "x")
        t.run(paths(tmp_path / str(every)), selection=Selection("fid_classifier", scorer))
        runs.append((tmp_path / str(every) / "generator.pt").read_bytes())
    assert runs[0] == runs[1]


@pytest.mark.stage  # 20 nets × resolutions: the one-step tests above are the quick tier's
@pytest.mark.parametrize("arch, loss, d_norm", [
    ("seed", "non-saturating", "none"), ("dcgan", "hinge", "spectral"), ("dcgan", "non-saturating", "batch"),
    ("dcgan", "wgan-gp", "none"), ("sngan", "hinge", "spectral"),
])
@pytest.mark.parametrize("resolution, channels", [(28, 1), (32, 3), (64, 1), (128, 3)])
def test_one_train_step_changes_both_nets(arch, loss, d_norm, resolution, channels):
    import numpy as np

    from ganflow.data import ImageSet

    rng = np.random.default_rng(0)
    ds = ImageSet(rng.integers(0, 256, (32, channels, resolution, resolution), dtype=np.uint8), None, [])
    t = Trainer(parse_params({"train": {**TINY_TRAIN, "arch": arch, "loss": loss, "d_norm": d_norm, "batch_size": 4}}), ds, "x")
    before = [copy.deepcopy(n.state_dict()) for n in (t.gs.G, t.gs.D)]
    stats = t.gs.step()
    assert torch.isfinite(stats).all()
    for net, old in zip((t.gs.G, t.gs.D), before):
        assert any(not torch.equal(old[k], v) for k, v in net.state_dict().items() if v.is_floating_point())
