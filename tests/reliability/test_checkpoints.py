"""Checkpoints: exact resume, the fingerprint that guards it, what is set aside, and divergence (in-process)."""

import logging
import os

import pytest
import torch

from conftest import TINY_TRAIN, Payload, paths, train
from ganflow import GanflowError
from ganflow.config import parse_params
from ganflow.generator import load_generator
from ganflow.training import DivergenceError, Trainer


@pytest.mark.stage
def test_resume_equals_uninterrupted(mnist, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(mnist, whole)
    train(mnist, split, steps=10)  # "crash" after the step-10 checkpoint ...
    t = train(mnist, split)  # ... and train longer: resumes from step 10
    assert t.resumed_step == 10
    assert (whole / "generator.pt").read_bytes() == (split / "generator.pt").read_bytes()
    assert (whole / "train_log.tsv").read_text() == (split / "train_log.tsv").read_text()


@pytest.mark.stage
def test_changed_settings_start_fresh_and_say_which(mnist, tmp_path):
    train(mnist, tmp_path)
    params = parse_params({"train": {**TINY_TRAIN, "lr_d": 0.0005}})
    t = Trainer(params, mnist, "sha-test")
    msg = t.try_resume(tmp_path / "checkpoint.pt")
    assert "train.lr_d changed" in msg and "starting fresh" in msg and t.state.step == 0
    # the checkpoint that could not be resumed is kept, not overwritten by the fresh run's first one
    (kept,) = tmp_path.glob("checkpoint.prev-*-step20.pt")
    assert not (tmp_path / "checkpoint.pt").exists() and str(kept) in msg
    kept.rename(tmp_path / "checkpoint.pt")
    other_data = Trainer(parse_params({"train": TINY_TRAIN}), mnist, "another-sha")
    assert "data_sha256 changed" in other_data.try_resume(tmp_path / "checkpoint.pt")


@pytest.mark.stage
def test_truncated_checkpoint_is_a_clear_error(mnist, tmp_path):
    train(mnist, tmp_path)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    t = Trainer(parse_params({"train": TINY_TRAIN}), mnist, "sha-test")
    with pytest.raises(GanflowError, match="checkpoint.pt: unreadable or truncated"):
        t.try_resume(tmp_path / "checkpoint.pt")


@pytest.mark.stage
def test_nan_stops_training_naming_the_step(mnist, tmp_path, monkeypatch):
    params = parse_params({"train": TINY_TRAIN})
    t = Trainer(params, mnist, "sha-test")
    real_step = t.gs.step
    calls = {"n": 0}

    def poisoned():
        calls["n"] += 1
        out = real_step()
        return out * float("nan") if calls["n"] == 13 else out

    monkeypatch.setattr(t.gs, "step", poisoned)
    with pytest.raises(DivergenceError, match=r"training diverged between steps 11 and 15: loss_D, loss_G, D_x, D_G_z not finite"):
        t.run(paths(tmp_path))
    # the last good checkpoint (step 10) is kept, and no generator was written
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 10
    assert not (tmp_path / "generator.pt").exists()


@pytest.mark.stage
def test_train_longer_continues_only_when_steps_grew(mnist, tmp_path):
    train(mnist, tmp_path, steps=20)
    longer = Trainer(parse_params({"train": {**TINY_TRAIN, "steps": 30, "log_every": 10}}), mnist, "sha-test")
    assert longer.try_resume(tmp_path / "checkpoint.pt") == f"resuming from {tmp_path / 'checkpoint.pt'} at step 20"
    shorter = Trainer(parse_params({"train": {**TINY_TRAIN, "steps": 10}}), mnist, "sha-test")
    assert "beyond train.steps=10: starting fresh" in shorter.try_resume(tmp_path / "checkpoint.pt")


@pytest.mark.stage
def test_a_checkpoint_of_another_architecture_is_never_loaded(mnist, tmp_path):
    train(mnist, tmp_path, arch="seed")
    t = Trainer(parse_params({"train": TINY_TRAIN}), mnist, "sha-test")
    assert "train.arch changed" in t.try_resume(tmp_path / "checkpoint.pt") and t.state.step == 0


def test_a_file_of_another_program_or_a_pickle_payload_is_refused(mnist, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"model": torch.zeros(3)}, other)
    with pytest.raises(GanflowError, match="not a ganflow-generator-v1 file"):
        load_generator(other)

    evil = tmp_path / "evil.pt"
    torch.save({"format": "ganflow-generator-v1", "x": Payload()}, evil)
    with pytest.raises(GanflowError, match="refused by weights_only loading"):
        load_generator(evil)
    (tmp_path / "png.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(GanflowError, match="png.pt: unreadable or truncated"):
        load_generator(tmp_path / "png.pt")


def tamper(path, edit):
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


def test_set_aside_checkpoints_are_distinct_generations_and_bounded(mnist, tmp_path, caplog):
    """S9: each checkpoint set aside keeps its own file (time and step in the name), the 3 latest are
    kept, and the warning says so."""
    from ganflow.train_state import KEEP_SET_ASIDE

    train(mnist, tmp_path, steps=10)
    original = (tmp_path / "checkpoint.pt").read_bytes()
    names = []
    for attempt in range(KEEP_SET_ASIDE + 2):
        (tmp_path / "checkpoint.pt").write_bytes(original + bytes(attempt))  # a distinct generation each time
        t = Trainer(parse_params({"train": {**TINY_TRAIN, "resume": False}}), mnist, "sha-test")
        with caplog.at_level(logging.WARNING, "ganflow.train"):
            msg = t.try_resume(tmp_path / "checkpoint.pt")
        names.append(msg.split("kept as ")[1].split(";")[0])
        assert f"the {KEEP_SET_ASIDE} latest set-aside checkpoints are kept" in msg and msg in caplog.text
    kept = sorted(tmp_path.glob("checkpoint.prev-*.pt"))
    assert len(set(names)) == len(names) and all("-step10" in n for n in names)
    assert [str(k) for k in kept] == sorted(names[-KEEP_SET_ASIDE:])  # the oldest went
    assert [len(k.read_bytes()) - len(original) for k in kept] == [2, 3, 4]


def test_a_checkpoint_whose_ema_generator_holds_nan_is_set_aside(mnist, tmp_path):
    """S4: NaN in G_ema (G and D finite) never resumes into an all-NaN generator.pt."""
    train(mnist, tmp_path, steps=10)
    tamper(tmp_path / "checkpoint.pt", lambda c: next(v for v in c["G_ema"].values() if v.is_floating_point()).fill_(float("nan")))
    t = train(mnist, tmp_path)
    assert t.resumed_step is None and t.state.step == 20
    G, _ = load_generator(tmp_path / "generator.pt")
    assert all(torch.isfinite(v).all() for v in G.state_dict().values() if v.is_floating_point())
    (kept,) = tmp_path.glob("checkpoint.prev-*-step10.pt")
    with torch.no_grad():  # and training that makes G_ema NaN stops, naming it
        next(t.gs.G_ema.parameters()).fill_(float("nan"))
    with pytest.raises(DivergenceError, match=r"training diverged at step 20: G_ema\.\S+ holds NaN/Inf"):
        t.gs.check_finite_weights(20)


def _wrong_shape(c):
    k = next(k for k, v in c["D"].items() if v.is_floating_point())
    c["D"][k] = torch.zeros(3)


@pytest.mark.parametrize("edit, why", [
    (_wrong_shape, "could not be loaded (RuntimeError: Error(s) in loading state_dict"),
    (lambda c: c.pop("opt_d"), "could not be loaded (KeyError: 'opt_d')"),
    (lambda c: c["rng"][0].update(cpu=torch.zeros(3, dtype=torch.uint8)), "could not be loaded (RuntimeError"),
    (lambda c: c.pop("fingerprint"), "has no fingerprint"),
])
def test_a_tampered_checkpoint_with_a_matching_fingerprint_is_set_aside(mnist, tmp_path, edit, why):
    """C4: a checkpoint that does not load (wrong shape, missing part, corrupt RNG state, no fingerprint)
    is set aside with a warning, and training starts fresh, exactly as if there had been none."""
    train(mnist, tmp_path / "fresh", resume=False)
    train(mnist, tmp_path, steps=10)
    tamper(tmp_path / "checkpoint.pt", edit)
    t = train(mnist, tmp_path)  # no traceback: set aside, started afresh
    assert t.resumed_step is None and t.state.step == 20
    assert len(list(tmp_path.glob("checkpoint.prev-*.pt"))) == 1
    assert (tmp_path / "generator.pt").read_bytes() == (tmp_path / "fresh" / "generator.pt").read_bytes()
    msg = Trainer(parse_params({"train": TINY_TRAIN}), mnist, "sha-test").try_resume(tmp_path / "checkpoint.pt")
    assert msg.startswith("resuming")  # the fresh run's own checkpoint resumes
    os.replace(next(tmp_path.glob("checkpoint.prev-*.pt")), tmp_path / "checkpoint.pt")
    msg = Trainer(parse_params({"train": TINY_TRAIN}), mnist, "sha-test").try_resume(tmp_path / "checkpoint.pt")
    assert why in msg and "starting fresh" in msg and "\n" not in msg
