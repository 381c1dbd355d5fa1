"""One real `dvc repro` of the whole pipeline on tiny params, in a temp git repo, with real MLflow.

The tests pass in any order: they only read the shared project (a repeated `dvc repro` is a no-op), and a
test that changes params, commits or logs runs does so in its own copy of it (`own_copy`)."""

import json
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from conftest import TINY, copy_project, dvc, make_project, mlflow_runs, sh

pytestmark = pytest.mark.slow


class Project(NamedTuple):
    root: Path
    env: dict
    commit: str  # the commit the first run was made at


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """The tiny project after its first `dvc repro`, with dvc.lock and metrics committed on top."""
    root = tmp_path_factory.mktemp("proj")
    env = make_project(root)
    commit = sh("git", "rev-parse", "HEAD", cwd=root, env=env).stdout.strip()
    dvc(root, env, "repro")
    sh("git", "add", "-A", cwd=root, env=env)
    sh("git", "commit", "-qm", "first run: dvc.lock and metrics", cwd=root, env=env)
    return Project(root, env, commit)


@pytest.fixture
def own_copy(project, tmp_path) -> Project:
    """A copy of the project as the first run left it, for a test that changes it."""
    root = tmp_path / "proj"
    return Project(root, copy_project(project.root, root, project.env), project.commit)


def test_every_output_is_there(project):
    root = project.root
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["count"] == 5000 and meta["shape"] == [1, 28, 28] and len(meta["sha256"]) == 64
    assert json.loads((root / "metrics/evaluator.json").read_text())["evaluator_accuracy"] > 0.5
    for png in ("real_grid", "train_grid", "sample_grid"):
        assert (root / f"metrics/{png}.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((root / "samples").glob("*.png"))) == TINY["sample"]["n"]
    assert len((root / "metrics/train_log.tsv").read_text().splitlines()) == 1 + 20 // 5
    ev = json.loads((root / "metrics/eval.json").read_text())
    assert {"fid_classifier", "is_classifier", "kid_classifier", "precision_classifier", "recall_classifier",
            "class_coverage", "class_kl", "n_samples"} <= set(ev)
    assert ev["n_samples"] == TINY["sample"]["n"]
    import torch

    for f in ("generator.pt", "checkpoint.pt", "evaluator.pt"):
        assert isinstance(torch.load(root / "models" / f, weights_only=True), dict)


def test_second_repro_is_a_no_op_and_metrics_show(project):
    root, env, _ = project
    before = (root / "models/generator.pt").stat().st_mtime_ns
    again = dvc(root, env, "repro")
    assert "Data and pipelines are up to date" in again.stdout
    assert (root / "models/generator.pt").stat().st_mtime_ns == before
    shown = json.loads(dvc(root, env, "metrics", "show", "--json").stdout)
    flat = json.dumps(shown)
    assert '"fid_classifier"' in flat and '"evaluator_accuracy"' in flat


def test_mlflow_run_holds_params_losses_grids_model_and_scores(project):
    root = project.root
    from mlflow import MlflowClient

    runs = mlflow_runs(root)
    assert len(runs) == 1
    run = runs[0]
    client = MlflowClient()
    assert run.info.status == "FINISHED"
    assert run.data.params["train.arch"] == "dcgan" and run.data.params["train.steps"] == "20"
    assert run.data.params["seed"] == "0" and "evaluate.inception" in run.data.params
    assert run.data.tags["mlflow.source.git.commit"] == project.commit  # the commit the run was made at
    losses = client.get_metric_history(run.info.run_id, "loss_D")
    assert [m.step for m in losses] == [5, 10, 15, 20]
    eval_json = json.loads((root / "metrics/eval.json").read_text())
    assert run.data.metrics["fid_classifier"] == pytest.approx(eval_json["fid_classifier"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "params.yaml" in artifacts and "images" in artifacts
    assert [m.name for m in client.search_logged_models(experiment_ids=[run.info.experiment_id])] == ["generator"]
    versions = client.search_model_versions("name='ganflow-generator'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id
    assert json.loads((root / "models/run.json").read_text())["run_id"] == run.info.run_id


def test_changed_eval_params_rerun_evaluate_only_into_the_same_run(own_copy):
    root, env, _ = own_copy
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["kid_subset_size"] = 40
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(root, env, "repro")
    assert "Running stage 'evaluate'" in out.stdout and "Running stage 'train'" not in out.stdout
    runs = mlflow_runs(root)
    assert len(runs) == 1 and runs[0].data.tags["param_override.evaluate.kid_subset_size"] == "40"
    diff = json.loads(dvc(root, env, "metrics", "diff", "--json").stdout)  # against HEAD's committed metrics
    assert "kid_classifier" in diff["metrics/eval.json"]


def test_dvc_exp_run_temp_logs_a_new_run_to_the_project_db(own_copy):
    root, env, _ = own_copy
    before = {r.info.run_id for r in mlflow_runs(root)}
    dvc(root, env, "exp", "run", "--temp", "-S", "train.steps=30")
    new = [r for r in mlflow_runs(root) if r.info.run_id not in before]
    assert len(new) == 1
    exp_run = new[0]
    assert exp_run.data.params["train.steps"] == "30" and exp_run.data.tags.get("dvc.exp_name")
    assert "fid_classifier" in exp_run.data.metrics
