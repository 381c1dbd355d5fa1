"""A NaN loss stops `dvc repro` with one line naming the steps; the last good checkpoint stays,
and the MLflow run is FAILED. Nothing retries."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import dvc, make_project, mlflow_runs

pytestmark = [pytest.mark.dvc, pytest.mark.slow]
INJECT = Path(__file__).parent / "inject"


def test_nan_stops_the_pipeline(tmp_path):
    env = make_project(tmp_path, {"train": {"steps": 40, "log_every": 5, "checkpoint_every": 10, "eval_every": 0}})
    dvc(tmp_path, env, "repro", "fit_evaluator")
    r = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, capture_output=True, text=True,
                       env={**env, "PYTHONPATH": str(INJECT), "GANFLOW_TEST_NAN_AT": "23"})
    assert r.returncode != 0
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error: ")]
    assert errors == ["error: training diverged between steps 21 and 25: loss_D, loss_G, D_x, D_G_z not finite"]
    assert r.stdout.count("Running stage 'train'") == 1  # no retry
    assert torch.load(tmp_path / "models/checkpoint.pt", weights_only=True)["step"] == 20
    assert not (tmp_path / "models/generator.pt").exists()
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FAILED"
