"""Three queued experiments run two at a time; all three land whole in the shared sqlite store."""

import time
import warnings

import pytest

from conftest import dvc, make_project, mlflow_runs, sh

pytestmark = [pytest.mark.dvc, pytest.mark.slow]


def run_queue_in_parallel(root):
    """A fresh project, a baseline, three queued experiments, `dvc queue start -j 2`; returns
    (final `dvc queue status`, {failed task: its stage logs})."""
    env = make_project(root, {"train": {"eval_every": 10}})
    dvc(root, env, "repro")
    sh("git", "add", "-A", cwd=root, env=env)
    sh("git", "commit", "-qm", "baseline", cwd=root, env=env)
    for lr in ("0.0001", "0.0003", "0.0005"):
        # a new experiment name: the first queued run creates it, from inside DVC's temp copy
        dvc(root, env, "exp", "run", "--queue", "-S", f"train.lr_g={lr}", "-S", "tracking.experiment=queued")
    dvc(root, env, "queue", "start", "-j", "2")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = dvc(root, env, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(10)
    failed = [line.split()[0] for line in status.splitlines() if line.rstrip().endswith("Failed")]
    logs = {task: (r := dvc(root, env, "queue", "logs", task, check=False)).stdout + r.stderr for task in failed}
    return status, logs


def test_queued_experiments_in_parallel_lose_no_metric(tmp_path):
    status, logs = run_queue_in_parallel(tmp_path / "a")
    root = tmp_path / "a"
    # DVC's parallel queue is experimental and has open races of its own (iterative/dvc#10673, #8763: a
    # task fails before or after its stages, with no stage output). Such a failure gets one fresh try;
    # a failure inside a ganflow stage never does.
    if logs and not any("Running stage" in text for text in logs.values()):
        warnings.warn(f"DVC's queue failed a task outside its stages; one fresh try:\n{status}")
        root = tmp_path / "b"
        status, logs = run_queue_in_parallel(root)
    assert status.count("Success") == 3, status + "\n".join(text[-4000:] for text in logs.values())

    runs = mlflow_runs(root, "queued")
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
        assert run.info.artifact_uri.startswith((root / "mlruns").as_uri())
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"params.yaml", "images"}
