"""Three queued experiments run two at a time; all three land whole in the shared sqlite store."""

import time

import pytest

from conftest import dvc, make_project, mlflow_runs, sh

pytestmark = pytest.mark.slow


def test_queued_experiments_in_parallel_lose_no_metric(tmp_path):
    env = make_project(tmp_path, {"train": {"eval_every": 10}})
    dvc(tmp_path, env, "repro")
    sh("git", "add", "-A", cwd=tmp_path, env=env)
    sh("git", "commit", "-qm", "baseline", cwd=tmp_path, env=env)
    for lr in ("0.0001", "0.0003", "0.0005"):
        # a new experiment name: the first queued run creates it, from inside DVC's temp copy
        dvc(tmp_path, env, "exp", "run", "--queue", "-S", f"train.lr_g={lr}", "-S", "tracking.experiment=queued")
    dvc(tmp_path, env, "queue", "start", "-j", "2")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = dvc(tmp_path, env, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 3, status

    runs = mlflow_runs(tmp_path, "queued")
    assert sorted(r.data.params["train.lr_g"] for r in runs) == ["0.0001", "0.0003", "0.0005"]
    from mlflow import MlflowClient

    client = MlflowClient()
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags.get("dvc.exp_name")
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_G")] == [5, 10, 15, 20]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "fid_classifier_during_training")] == [10, 20]
        assert {"fid_classifier", "is_classifier", "kid_classifier", "class_coverage"} <= set(run.data.metrics)
        # artifacts live in the project, not in the temp copy DVC ran the experiment in (and deleted)
        assert run.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"params.yaml", "images"}
