import copy

import pytest
import torch

from conftest import TINY_TRAIN
from ganflow import GanflowError, checkpoint
from ganflow.config import parse_params
from ganflow.training import DivergenceError, Trainer, TrainPaths


def paths(d):
    return TrainPaths(d / "generator.pt", d / "checkpoint.pt", d / "log.tsv", d / "grid.png", d / "best.pt", d / "fid.tsv")


def train(mnist, out, resume=True, **overrides):
    params = parse_params({"train": {**TINY_TRAIN, **overrides}})
    t = Trainer(params, mnist, "sha-test")
    if resume:
        t.try_resume(out / "checkpoint.pt")
    t.run(paths(out))
    return t


def test_same_seed_gives_byte_identical_generator(mnist, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(mnist, a)
    train(mnist, b)
    assert (a / "generator.pt").read_bytes() == (b / "generator.pt").read_bytes()
    assert (a / "log.tsv").read_text() == (b / "log.tsv").read_text()
    c = tmp_path / "c"
    train(mnist, c, resume=False, lr_g=0.001)
    assert (a / "generator.pt").read_bytes() != (c / "generator.pt").read_bytes()


def test_outputs(mnist, tmp_path):
    t = train(mnist, tmp_path)
    rows = (tmp_path / "log.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "loss_D", "loss_G", "D_x", "D_G_z"]
    assert [int(r.split("\t")[0]) for r in rows[1:]] == [5, 10, 15, 20]
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert t.state.step == 20


def test_checkpoint_round_trip_with_weights_only(mnist, tmp_path):
    t = train(mnist, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 20 and set(ckpt) >= {"G", "D", "G_ema", "opt_g", "opt_d", "rng", "fingerprint", "log_rows"}
    for k, v in t.G.state_dict().items():
        assert torch.equal(ckpt["G"][k], v)
    G, obj = checkpoint.load_generator(tmp_path / "generator.pt")
    assert obj["arch"] == "dcgan" and not G.training
    for k, v in t.G_ema.state_dict().items():  # the EMA generator is the one saved
        assert torch.equal(G.state_dict()[k], v)


def test_resume_equals_uninterrupted(mnist, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(mnist, whole)
    train(mnist, split, steps=10)  # "crash" after the step-10 checkpoint ...
    t = train(mnist, split)  # ... and train longer: resumes from step 10
    assert t.resumed["step"] == 10
    assert (whole / "generator.pt").read_bytes() == (split / "generator.pt").read_bytes()
    assert (whole / "log.tsv").read_text() == (split / "log.tsv").read_text()


def test_changed_settings_start_fresh_and_say_which(mnist, tmp_path):
    train(mnist, tmp_path)
    params = parse_params({"train": {**TINY_TRAIN, "lr_d": 0.001}})
    t = Trainer(params, mnist, "sha-test")
    msg = t.try_resume(tmp_path / "checkpoint.pt")
    assert "train.lr_d changed" in msg and "starting fresh" in msg and t.state.step == 0
    other_data = Trainer(parse_params({"train": TINY_TRAIN}), mnist, "another-sha")
    assert "data_sha256 changed" in other_data.try_resume(tmp_path / "checkpoint.pt")


def test_truncated_checkpoint_is_a_clear_error(mnist, tmp_path):
    train(mnist, tmp_path)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    t = Trainer(parse_params({"train": TINY_TRAIN}), mnist, "sha-test")
    with pytest.raises(GanflowError, match="checkpoint.pt: unreadable or truncated"):
        t.try_resume(tmp_path / "checkpoint.pt")


def test_nan_stops_training_naming_the_step(mnist, tmp_path, monkeypatch):
    params = parse_params({"train": TINY_TRAIN})
    t = Trainer(params, mnist, "sha-test")
    real_step = t.train_step
    calls = {"n": 0}

    def poisoned():
        calls["n"] += 1
        out = real_step()
        return out * float("nan") if calls["n"] == 13 else out

    monkeypatch.setattr(t, "train_step", poisoned)
    with pytest.raises(DivergenceError, match=r"training diverged between steps 11 and 15: loss_D, loss_G, D_x, D_G_z not finite"):
        t.run(paths(tmp_path))
    # the last good checkpoint (step 10) is kept, and no generator was written
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 10
    assert not (tmp_path / "generator.pt").exists()


def test_ema_update_on_a_toy_model(mnist):
    params = parse_params({"train": {**TINY_TRAIN, "ema": 16.0, "batch_size": 16}})
    t = Trainer(params, mnist, "x")
    assert t.ema_beta == pytest.approx(0.5)  # half-life of 16 images at 16 images per step
    before = copy.deepcopy(t.G_ema.state_dict())
    with torch.no_grad():
        for p in t.G.parameters():
            p.add_(1.0)
    t.update_ema()
    for name, p in t.G.named_parameters():
        assert torch.allclose(t.G_ema.state_dict()[name], 0.5 * before[name] + 0.5 * p)


def test_diffaugment_sees_real_and_fake_alike(mnist, monkeypatch):
    import ganflow.augment as aug

    seen = []

    def spy(x):
        seen.append(x.shape[0])
        return x

    monkeypatch.setitem(aug.AUGMENTS._items, "translation", spy)
    params = parse_params({"train": {**TINY_TRAIN, "augment": ["translation"]}})
    t = Trainer(params, mnist, "x")
    t.train_step()
    # D step: real + fake; G step: fake — every D input went through the augmentation
    assert seen == [16, 16, 16]


def test_best_generator_is_the_one_with_the_lowest_fid(mnist, tmp_path):
    params = parse_params({"train": {**TINY_TRAIN, "eval_every": 5}})
    t = Trainer(params, mnist, "sha-test")
    scores = iter([9.0, 4.0, 6.0, 5.0])  # checks at steps 5, 10, 15, 20
    snapshots = {}

    def scorer(G):
        assert not G.training  # scored in eval mode
        snapshots[t.state.step] = {k: v.clone() for k, v in G.state_dict().items()}
        return next(scores)

    summary = t.run(paths(tmp_path), scorer=scorer)
    assert summary["best_step"] == 10 and summary["best_fid_classifier_during_training"] == 4.0
    assert 0 < summary["eval_time_fraction"] < 1
    best, info = checkpoint.load_generator(tmp_path / "best.pt")
    assert info["step"] == 10 and info["fid_classifier"] == 4.0
    for k, v in best.state_dict().items():
        assert torch.equal(v, snapshots[10][k])
    last = torch.load(tmp_path / "generator.pt", weights_only=True)
    assert last["step"] == 20
    assert (tmp_path / "fid.tsv").read_text().splitlines() == ["step\tfid_classifier", "5\t9", "10\t4", "15\t6", "20\t5"]


@pytest.mark.parametrize("arch", ["dcgan", "sngan"])
def test_conditional_training_step_changes_weights_and_samples_requested_classes(mnist, tmp_path, arch):
    from ganflow.sampling import class_grid, generate

    params = parse_params({"train": {**TINY_TRAIN, "arch": arch, "conditional": True}})
    t = Trainer(params, mnist, "x")
    before = {k: v.clone() for k, v in t.G.state_dict().items()}
    t.train_step()
    assert any(not torch.equal(before[k], v) for k, v in t.G.state_dict().items())
    G = t.G_eval.eval()
    assert G.cfg.n_classes == 10
    # the class embedding is used: the same latent under two classes gives two images
    x = generate(G, 0, 0, 20, classes=[3, 7])
    y = generate(G, 0, 0, 20, classes=[7, 3])
    assert not torch.equal(x, y)
    assert class_grid(G, 0).shape == (100, 1, 28, 28)
    with pytest.raises(GanflowError, match="knows 10 classes"):
        generate(G, 0, 0, 4, classes=[12])


def test_conditional_needs_labels(mnist):
    from ganflow.data import ImageSet

    unlabelled = ImageSet(mnist.images, None, [])
    with pytest.raises(GanflowError, match="train.conditional is true, but the prepared data has no labels"):
        Trainer(parse_params({"train": {**TINY_TRAIN, "conditional": True}}), unlabelled, "x")
