"""Checkpoints: exact resume, the fingerprint that guards it, and divergence (in-process)."""

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
    assert t.resumed["step"] == 10
    assert (whole / "generator.pt").read_bytes() == (split / "generator.pt").read_bytes()
    assert (whole / "log.tsv").read_text() == (split / "log.tsv").read_text()


@pytest.mark.stage
def test_changed_settings_start_fresh_and_say_which(mnist, tmp_path):
    train(mnist, tmp_path)
    params = parse_params({"train": {**TINY_TRAIN, "lr_d": 0.001}})
    t = Trainer(params, mnist, "sha-test")
    msg = t.try_resume(tmp_path / "checkpoint.pt")
    assert "train.lr_d changed" in msg and "starting fresh" in msg and t.state.step == 0
    # the checkpoint that could not be resumed is kept, not overwritten by the fresh run's first one
    kept = tmp_path / "checkpoint.prev.pt"
    assert kept.exists() and not (tmp_path / "checkpoint.pt").exists() and str(kept) in msg
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
    from ganflow import checkpoint

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
