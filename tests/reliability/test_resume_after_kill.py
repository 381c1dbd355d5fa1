"""SIGKILL `dvc repro` at several points of train; the next `dvc repro` resumes from the last
checkpoint and ends with a generator byte-identical to an uninterrupted run's."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import dvc, make_project, mlflow_runs
from ganflow.tracking import TAG_RESUMED_FROM, TAG_RESUMED_STEP

pytestmark = [pytest.mark.dvc, pytest.mark.slow]
INJECT = Path(__file__).parent / "inject"
TRAIN = {"steps": 40, "log_every": 5, "checkpoint_every": 10, "sample_every": 20, "eval_every": 20, "eval_samples": 64}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A project whose prepare and fit_evaluator stages ran, and the uninterrupted run's outputs."""
    root = tmp_path_factory.mktemp("base")
    env = make_project(root, {"train": TRAIN})
    dvc(root, env, "repro", "fit_evaluator")
    reference = tmp_path_factory.mktemp("reference")
    shutil.copytree(root, reference, dirs_exist_ok=True)
    dvc(reference, {**env, "TORCH_HOME": str(reference / ".torch")}, "repro")
    return root, env, reference


def clone(base, tmp_path):
    root, env, _ = base
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    return {**env, "TORCH_HOME": str(tmp_path / ".torch")}


def killed_repro(root: Path, env: dict, kill: str | None = None, after_checkpoint: bool = False) -> int:
    """Run `dvc repro` in its own process group; kill it by injection (`kill`) or from outside once
    the first checkpoint exists. Return the exit status (negative: killed by that signal)."""
    # the injection patches the project's own code (the one its stages run and its checkpoints fingerprint)
    env = {**env, "PYTHONPATH": os.pathsep.join([str(INJECT), str(root / "src")])} | ({"GANFLOW_TEST_KILL": kill} if kill else {})
    p = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if after_checkpoint:
        ckpt = root / "models" / "checkpoint.pt"
        deadline = time.time() + 300
        while not ckpt.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGKILL)
    return p.wait(timeout=600)


@pytest.mark.parametrize(
    "kill, resumes_at",
    [
        ("train_log.tsv:4", 10),  # mid-training: step 20's log line, before checkpoint 20
        ("checkpoint.pt:3:partial", 20),  # halfway through writing checkpoint 30
        ("generator.pt:1:partial", 40),  # after the last checkpoint, while writing the generator
    ],
)
def test_kill_then_repro_resumes_to_the_same_bytes(base, tmp_path, kill, resumes_at):
    env = clone(base, tmp_path)
    status = killed_repro(tmp_path, env, kill=kill)
    assert status == -signal.SIGKILL
    ckpt = torch.load(tmp_path / "models/checkpoint.pt", weights_only=True)
    assert ckpt["step"] == resumes_at  # the last complete checkpoint survived the kill
    interrupted = mlflow_runs(tmp_path)[-1]
    assert interrupted.info.status == "RUNNING"  # SIGKILL: nobody could close it

    dvc(tmp_path, env, "repro")

    reference = base[2]
    for f in ("models/generator.pt", "models/generator_best.pt", "models/checkpoint.pt", "metrics/train_log.tsv",
              "metrics/fid_curve.tsv"):  # the checkpoint too: dvc.lock holds its hash
        assert (tmp_path / f).read_bytes() == (reference / f).read_bytes(), f
    assert not list((tmp_path / "models").glob(".*.tmp")), "a temp file of the killed write was left behind"
    runs = mlflow_runs(tmp_path)
    old = next(r for r in runs if r.info.run_id == interrupted.info.run_id)
    new = runs[-1]
    assert old.info.status == "KILLED" and new.info.status == "FINISHED"
    assert new.data.tags[TAG_RESUMED_FROM] == old.info.run_id
    assert new.data.tags[TAG_RESUMED_STEP] == str(resumes_at)


def test_kill_from_outside_at_any_moment(base, tmp_path):
    env = clone(base, tmp_path)
    assert killed_repro(tmp_path, env, after_checkpoint=True) == -signal.SIGKILL
    dvc(tmp_path, env, "repro")
    assert (tmp_path / "models/generator.pt").read_bytes() == (base[2] / "models/generator.pt").read_bytes()
