"""One real `dvc repro` of the whole pipeline on tiny params, in a temp git repo, with real MLflow.

The tests pass in any order: they only read the shared project (a repeated `dvc repro` is a no-op), and a
test that changes params, commits or logs runs does so in its own copy of it (`own_copy`)."""

import json
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from conftest import TINY, copy_project, dvc, make_project, mlflow_runs, sh

pytestmark = [pytest.mark.dvc, pytest.mark.slow]


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


def test_a_fresh_clone_reproduces_every_tracked_file(project, tmp_path):
    """`make repro` in a fresh clone (no DVC cache, its own MLflow store) re-runs every stage up to sample and
    leaves git status clean: dvc.lock is byte-identical, because no MLflow run id goes into a tracked file
    (the clone's training run is found by the sha256 of the generator it wrote). So DVC finds evaluate's
    inputs unchanged and skips it: the committed scores are those of these very bytes."""
    from ganflow.metrics import file_sha256

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(project.root), str(clone), cwd=tmp_path, env=project.env)
    env = {**project.env, "TORCH_HOME": str(clone / ".torch")}
    out = dvc(clone, env, "repro").stdout
    assert "Running stage 'train'" in out and "Running stage 'sample'" in out
    assert "Stage 'evaluate' didn't change, skipping" in out
    assert sh("git", "status", "--porcelain", cwd=clone, env=env).stdout == "", sh("git", "diff", cwd=clone, env=env).stdout
    (run,) = mlflow_runs(clone)
    assert run.data.tags["ganflow.generator_sha256"] == file_sha256(project.root / "models/generator.pt")


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
    from ganflow.metrics import file_sha256

    assert run.data.tags["ganflow.generator_sha256"] == file_sha256(root / "models/generator.pt")  # how evaluate finds it
    assert run.data.tags["ganflow.checkpoint_sha256"] == file_sha256(root / "models/checkpoint.pt")  # how a resume does


def test_mlflow_run_provenance_review_and_registry(project):
    """What a reviewer sees: a readable name, where it came from, what it was trained on, the scores'
    artifacts, a step-0 grid, and a registered version that says its contract and its scores."""
    root = project.root
    from mlflow import MlflowClient

    from ganflow import tracking

    run = mlflow_runs(root)[0]
    client = MlflowClient()
    tags = run.data.tags
    assert run.info.run_name == f"baseline {project.commit[:7]}"
    assert tags[tracking.TAG_BASELINE_COMMIT] == project.commit and tags[tracking.TAG_PARAMS_DIFF] == "none"
    assert tags[tracking.TAG_DIRTY] == "false" and "`dvc repro` on commit" in tags[tracking.TAG_NOTE]
    import torch

    trained_on = torch.load(root / "models/checkpoint.pt", weights_only=True)["fingerprint"]["data_sha256"]  # the training split
    assert tags[tracking.TAG_DATA] == trained_on and len(tags[tracking.TAG_EVALUATOR]) == 64
    assert [d.dataset.digest for d in client.get_run(run.info.run_id).inputs.dataset_inputs] == [trained_on[:16]]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.json", "sample_grid.png", "stage_inputs.json", "before_this_stage"} <= artifacts
    seen = json.loads(Path(client.download_artifacts(run.info.run_id, "stage_inputs.json", str(root / ".."))).read_text())
    locked = {d["path"]: d["md5"] for d in yaml.safe_load((root / "dvc.lock").read_text())["stages"]["evaluate"]["deps"]}
    assert seen["deps"] == locked  # the hashes of the lock DVC wrote after the stage (issue 21)
    steps = sorted({int(p.path.split("+step+")[1].split("+")[0]) for p in client.list_artifacts(run.info.run_id, "images")
                    if "train_grid+step+" in p.path})
    assert steps[0] == 0 and 20 in steps  # the slider starts at the untrained G
    assert json.loads((root / ".ganflow/mlflow_run.json").read_text())["mlflow_run_id"] == run.info.run_id
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags[tracking.TAG_EXPERIMENT_KIND] == "custom_model_development"
    version = client.get_model_version_by_alias("ganflow-generator", tracking.CHAMPION)
    assert version.run_id == run.info.run_id and version.tags[tracking.TAG_STATUS] == "champion"
    assert version.tags["data_sha256"] == trained_on and "fid_classifier" in version.tags
    assert "z ~ N(0, 1) of size z_dim=16" in version.description and "in [-1, 1]" in version.description


def test_changed_eval_params_rerun_evaluate_only_into_a_nested_run(own_copy):
    """Another experiment's scores never overwrite the training run's: they go into a run nested under it."""
    root, env, _ = own_copy
    trained = mlflow_runs(root)[0]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["kid_subset_size"] = 40
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(root, env, "repro")
    assert "Running stage 'evaluate'" in out.stdout and "Running stage 'train'" not in out.stdout
    runs = {r.info.run_id: r for r in mlflow_runs(root)}
    assert len(runs) == 2
    child = next(r for r in runs.values() if r.info.run_id != trained.info.run_id)
    assert child.data.tags["mlflow.parentRunId"] == trained.info.run_id and child.data.params["evaluate.kid_subset_size"] == "40"
    assert child.info.run_name.startswith("evaluate of baseline") and "kid_subset_size=40" in child.info.run_name
    assert runs[trained.info.run_id].data.metrics == trained.data.metrics  # untouched
    assert json.loads((root / ".ganflow/mlflow_run.json").read_text())["mlflow_run_id"] == child.info.run_id
    diff = json.loads(dvc(root, env, "metrics", "diff", "--json").stdout)  # against HEAD's committed metrics
    assert "kid_classifier" in diff["metrics/eval.json"]


def test_dvc_exp_run_temp_logs_a_named_run_with_the_whole_history(own_copy):
    root, env, _ = own_copy
    from mlflow import MlflowClient

    before = {r.info.run_id for r in mlflow_runs(root)}
    dvc(root, env, "exp", "run", "--temp", "-n", "longer", "-S", "train.steps=30")
    new = [r for r in mlflow_runs(root) if r.info.run_id not in before]
    assert len(new) == 1
    exp_run = new[0]
    assert exp_run.info.run_name == "longer" and exp_run.data.tags["dvc.exp_name"] == "longer"
    assert exp_run.data.params["train.steps"] == "30" and "train.steps: 20 -> 30" in exp_run.data.tags["ganflow.params_diff"]
    assert "fid_classifier" in exp_run.data.metrics
    # it resumed from the baseline's checkpoint at step 20, and still holds the steps before it
    assert exp_run.data.tags["ganflow.resumed_from_step"] == "20"
    assert [m.step for m in MlflowClient().get_metric_history(exp_run.info.run_id, "loss_D")] == [5, 10, 15, 20, 25, 30]
    grids = {int(a.path.split("+step+")[1].split("+")[0]) for a in MlflowClient().list_artifacts(exp_run.info.run_id, "images")
             if "train_grid+step+" in a.path}
    assert min(grids) == 0 and max(grids) == 30  # the grids from before the resume, copied (issue 21)


def test_experiments_that_differ_in_sample_params_get_their_own_runs_and_scores(own_copy):
    root, env, _ = own_copy
    trained = mlflow_runs(root)[0]
    for n in (64, 96):
        dvc(root, env, "exp", "run", "--temp", "-S", f"sample.n={n}")
    new = [r for r in mlflow_runs(root) if r.info.run_id != trained.info.run_id]
    assert sorted(int(r.data.metrics["n_samples"]) for r in new) == [64, 96]
    assert all(r.data.tags["mlflow.parentRunId"] == trained.info.run_id for r in new)
    assert len({r.data.metrics["fid_classifier"] for r in [trained, *new]}) == 3  # nobody's numbers overwritten
    assert mlflow_runs(root)[0].data.metrics == trained.data.metrics


def test_nothing_to_train_makes_no_run_and_no_model_version(own_copy):
    root, env, _ = own_copy
    from mlflow import MlflowClient

    before = {r.info.run_id for r in mlflow_runs(root)}
    out = dvc(root, env, "exp", "run", "--temp", "-S", "train.sample_every=5")  # a logging-only change
    assert "nothing left to train" in out.stderr + out.stdout
    assert {r.info.run_id for r in mlflow_runs(root)} == before
    assert len(MlflowClient().search_model_versions("name='ganflow-generator'")) == 1


def test_a_generator_no_run_of_the_store_trained_is_scored_into_a_named_run_of_its_own(own_copy):
    """A teammate's clone: models/generator.pt (pulled from the remote) was trained against another machine's store."""
    root, env, _ = own_copy
    import torch

    gen = torch.load(root / "models/generator.pt", weights_only=True)
    torch.save({**gen, "teammate": torch.zeros(1)}, root / "models/generator.pt")  # other bytes: no run is tagged with them
    r = sh(sys.executable, "stages/evaluate.py", "samples", "data/prepared", "models/evaluator.pt", "models/generator.pt",
           "metrics/eval.json", "metrics/per_class.json", "metrics/nearest_pairs.png", cwd=root, env=env)
    assert "Traceback" not in r.stderr and "no finished run of" in r.stderr
    runs = mlflow_runs(root)
    assert len(runs) == 2
    new = next(run for run in runs if "ganflow.generator_sha256" not in run.data.tags)
    assert new.info.run_name.startswith("evaluate of generator ") and "ganflow.train_run_id" not in new.data.tags
    assert "no finished training run of this generator" in new.data.tags["mlflow.note.content"]
