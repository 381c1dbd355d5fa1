"""Issue 21, registry truth: a version's tags are its own training run's evaluation at that run's own
sample/evaluate params; evaluations under other params, or from another clone, get runs of their own,
named and described; the champion is decided at equal protocol (also by `ganflow champion`)."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import ROOT
from ganflow import metrics, tracking
from ganflow.cli import main
from ganflow.config import TrackingConfig, flatten, parse_params
from ganflow.evaluation import Report
from ganflow.tracking import policy

MODEL = "ganflow-generator"


def trained(tmp_path: Path, name: str, n: int = 400) -> Path:
    """A finished training run of this project, with a registered version and its params (sample.n = n);
    returns the generator file it is tagged with."""
    t = tracking.Tracker(TrackingConfig())
    t.start(name=name, tags={tracking.TAG_PROJECT: str(tracking.project_root())})
    t.log_params(flatten(parse_params({"sample": {"n": n}})))
    client = MlflowClient()
    if not client.search_registered_models(f"name='{MODEL}'"):
        client.create_registered_model(MODEL)
    client.create_model_version(MODEL, source=f"runs:/{t.run_id}/generator", run_id=t.run_id)
    generator = tmp_path / f"{name}.pt"
    generator.write_text(f"the generator {name} trained")
    t.set_tags({tracking.TAG_GENERATOR: metrics.file_sha256(generator)})  # as the train stage tags it: evaluate finds it so
    t.end()
    return generator


def evaluate(generator: Path, fid: float, n: int = 400, protocol: str = "p400") -> dict:
    report = Report({"fid_classifier": fid, "n_samples": n, "protocol": protocol},
                    {"n_samples": n, "data_sha256": "d" * 16, "classifier_weights_sha256": "e" * 16}, [], None)
    return policy.evaluate_run(tracking.Tracker(TrackingConfig()), parse_params({"sample": {"n": n}}), generator, report, [])


def version(run_id: str):
    client = MlflowClient()
    return client.get_model_version(MODEL, client.search_model_versions(f"name='{MODEL}' and run_id='{run_id}'")[0].version)


def test_an_evaluation_at_other_params_leaves_the_version_alone_and_names_its_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    generator = trained(tmp_path, "baseline")
    own = evaluate(generator, 231.18)
    train_run = own["mlflow_train_run_id"]
    assert own["mlflow_run_id"] == train_run  # its own evaluation: into the training run
    before = version(train_run)
    assert before.tags["fid_classifier"] == "231.18" and before.tags["protocol"] == "p400"
    assert before.aliases == [tracking.CHAMPION]
    own_tags = MlflowClient().get_run(train_run).data.tags
    assert own_tags[tracking.TAG_EVAL_DATA] == "d" * 16 and tracking.TAG_EVALUATOR not in own_tags  # the train stage's, kept

    other = evaluate(generator, 231.16, n=200, protocol="p200")  # `dvc exp run -S sample.n=200`
    assert other["mlflow_run_id"] != train_run
    assert version(train_run).tags == before.tags  # untouched
    run = MlflowClient().get_run(other["mlflow_run_id"])
    tags = run.data.tags
    assert run.info.run_name == "evaluate of baseline · n=200"
    assert tags[tracking.TAG_PARENT] == train_run and tags[tracking.TAG_TRAIN_RUN] == train_run
    assert "sample.n: 400 -> 200" in tags[tracking.TAG_NOTE]
    assert tags[tracking.TAG_EVAL_DATA] == "d" * 16 and tags[tracking.TAG_EVALUATOR] == "e" * 16
    assert run.data.metrics["n_samples"] == 200 and MlflowClient().get_run(train_run).data.metrics["n_samples"] == 400


def test_another_clone_never_writes_into_the_training_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    generator = trained(tmp_path, "colleague")
    train_run = evaluate(generator, 100.0)["mlflow_train_run_id"]
    before, history = version(train_run).tags, MlflowClient().get_metric_history(train_run, "fid_classifier")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "my-clone"))  # a teammate's clone, the same store
    mine = evaluate(generator, 100.5)  # same params: a forced re-evaluation
    assert mine["mlflow_run_id"] != train_run
    assert MlflowClient().get_metric_history(train_run, "fid_classifier") == history  # no second point
    assert version(train_run).tags == before
    run = MlflowClient().get_run(mine["mlflow_run_id"])
    assert run.info.run_name == "evaluate of colleague" and "another clone" in run.data.tags[tracking.TAG_NOTE]
    assert run.data.tags[tracking.TAG_TRAIN_RUN] == train_run


def test_a_run_the_store_lacks_gets_a_named_fallback_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "small-n")
    trained(tmp_path, "another generator")
    pulled = tmp_path / "pulled.pt"  # a generator from the DVC remote, trained against another store
    pulled.write_text("a teammate's generator")
    run_id = evaluate(pulled, 50.0)["mlflow_run_id"]
    run = MlflowClient().get_run(run_id)
    assert run.info.run_name == "small-n" and tracking.TAG_TRAIN_RUN not in run.data.tags
    assert "no finished training run of this generator" in run.data.tags[tracking.TAG_NOTE]
    assert tracking.TAG_PARENT not in run.data.tags


def test_champion_is_decided_at_equal_protocol_and_re_decided_by_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = []
    for name, fid, protocol in [("a", 200.0, "p1"), ("b", 100.0, "p2"), ("c", 150.0, "p1")]:
        generator = trained(tmp_path, name)
        runs.append(evaluate(generator, fid, protocol=protocol)["mlflow_train_run_id"])
    client = MlflowClient()
    assert client.get_model_version_by_alias(MODEL, tracking.CHAMPION).run_id == runs[2]  # c beats a under p1
    assert version(runs[1]).tags[tracking.TAG_STATUS] == "candidate"  # b: another protocol, not compared

    params = str(ROOT / "params.yaml")
    main(["champion", "--params", params, "--protocol", "p2"])  # a dry run
    out = capsys.readouterr().out
    assert "dry run" in out and client.get_model_version_by_alias(MODEL, tracking.CHAMPION).run_id == runs[2]
    table = [line.split() for line in out.splitlines()]
    assert table[0][:5] == ["version", "run", "protocol", "n", "fid_classifier"]
    assert {row[1] for row in table[1:4]} == {r[:12] for r in runs}
    main(["champion", "--params", params, "--protocol", "p2", "--apply"])
    assert client.get_model_version_by_alias(MODEL, tracking.CHAMPION).run_id == runs[1]
    assert version(runs[2]).tags[tracking.TAG_STATUS] == "candidate"
    main(["champion", "--params", params, "--apply"])  # default: the newest scored version's protocol (p1)
    assert client.get_model_version_by_alias(MODEL, tracking.CHAMPION).run_id == runs[2]


def test_a_resumed_run_gets_the_grids_logged_before_the_resume(tmp_path, monkeypatch):
    """Issue 21: the images the interrupted run logged by step (up to the resume) are copied into the new run."""
    import numpy as np

    from ganflow.tracking.run import image_step

    monkeypatch.chdir(tmp_path)
    first = tracking.Tracker(TrackingConfig())
    first.start(name="killed")
    for step in (0, 10, 20, 30):  # killed after step 30, resumed from the checkpoint at step 20
        first.log_image(np.full((8, 8, 3), step, np.uint8), "train_grid", step)
    first.end("KILLED")
    second = tracking.Tracker(TrackingConfig())
    second.start(name="resumed")
    assert second.copy_step_images(first.run_id, 20) == 6  # each step: the PNG and MLflow's compressed copy
    second.end()
    client = MlflowClient()
    steps = sorted({image_step(a.path) for a in client.list_artifacts(second.run_id, "images")})
    assert steps == [0, 10, 20]
    assert client.get_run(second.run_id).data.tags[tracking.TAG_LOGGED_IMAGES] == "True"
    png = next(a.path for a in client.list_artifacts(second.run_id, "images") if "+step+10+" in a.path and a.path.endswith(".png"))
    from PIL import Image

    assert np.array(Image.open(client.download_artifacts(second.run_id, png, str(tmp_path)))).max() == 10
    other = tracking.Tracker(TrackingConfig())
    other.start()
    assert other.copy_step_images("0" * 32, 20) == 0  # a run this store lacks: nothing, no error
    other.end()


def test_runs_shows_the_dvc_experiment_and_the_version(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "wider")  # Tracker.start tags it, as under `dvc exp run`
    generator = trained(tmp_path, "wider")
    monkeypatch.delenv("DVC_EXP_NAME")
    train_run = evaluate(generator, 10.0)["mlflow_train_run_id"]
    nested = evaluate(generator, 11.0, n=200)["mlflow_run_id"]
    main(["runs", "--params", str(ROOT / "params.yaml")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:7] == ["run", "id", "name", "dvc", "exp", "version", "status"]
    row = next(line for line in out if line.startswith(train_run[:12]))
    assert "wider" in row and "v1 champion" in row
    assert "(of v1)" in next(line for line in out if line.startswith(nested[:12]))


@pytest.mark.dvc
def test_stage_inputs_hash_deps_as_dvc_does(tmp_path, monkeypatch):
    """stage_inputs.json (logged by evaluate in place of a stale dvc.lock) holds DVC's own md5s."""
    import os

    import yaml

    from conftest import dvc
    from ganflow.tracking.provenance import dvc_md5, stage_inputs

    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "a.txt").write_text("a\n")
    (tmp_path / "folder" / "sub" / "b.bin").write_bytes(bytes(range(256)))
    (tmp_path / "one.txt").write_text("one\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {"cmd": "true", "deps": ["folder", "one.txt"]}}}))
    env = dict(os.environ)
    dvc(tmp_path, env, "init", "--no-scm")
    dvc(tmp_path, env, "repro")
    locked = {d["path"]: d["md5"] for d in yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]["s"]["deps"]}
    monkeypatch.chdir(tmp_path)
    assert stage_inputs("s")["deps"] == locked and locked["folder"].endswith(".dir")
    assert dvc_md5("missing") is None and not (tmp_path / "missing").exists()  # a dep not made yet; nothing written


def test_a_new_protocol_scores_into_a_run_of_its_own(tmp_path, monkeypatch):
    """New evaluation code or evaluator, same params: the training run and its version keep their scores."""
    monkeypatch.chdir(tmp_path)
    generator = trained(tmp_path, "base")
    train_run = evaluate(generator, 20.0, protocol="old")["mlflow_train_run_id"]
    assert evaluate(generator, 20.0, protocol="old")["mlflow_run_id"] == train_run  # `dvc repro -f`: the same evaluation
    before = version(train_run).tags
    again = evaluate(generator, 25.0, protocol="new")["mlflow_run_id"]
    assert again != train_run and version(train_run).tags == before
    assert "protocol changed" in MlflowClient().get_run(again).data.tags[tracking.TAG_NOTE]


def test_logging_the_dataset_prints_no_mlflow_source_warning(tmp_path, monkeypatch):
    import warnings

    import numpy as np

    monkeypatch.chdir(tmp_path)
    t = tracking.Tracker(TrackingConfig())
    t.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.log_dataset(np.zeros((2, 1, 8, 8), np.uint8), {"source": "mnist", "sha256": "a" * 64, "count": 2})
    t.end()
    assert not [w for w in caught if "interpreted in multiple ways" in str(w.message)]
    assert [d.dataset.digest for d in MlflowClient().get_run(t.run_id).inputs.dataset_inputs] == ["a" * 16]


def test_scores_of_the_best_generator_leave_the_version_of_the_last_one_alone(tmp_path, monkeypatch):
    """sample.checkpoint best samples generator_best.pt, but the training run registered the last generator:
    those scores are not the version's, so they get a run of their own and move no alias."""
    monkeypatch.chdir(tmp_path)
    generator = trained(tmp_path, "picky")
    report = Report({"fid_classifier": 1.0, "n_samples": 400, "protocol": "p400"}, {"n_samples": 400}, [], None)
    params = parse_params({"sample": {"n": 400, "checkpoint": "best"}})
    out = policy.evaluate_run(tracking.Tracker(TrackingConfig()), params, generator, report, [])
    train_run = out["mlflow_train_run_id"]
    assert out["mlflow_run_id"] != train_run and "fid_classifier" not in version(train_run).tags
    assert "sample.checkpoint: best" in MlflowClient().get_run(out["mlflow_run_id"]).data.tags[tracking.TAG_NOTE]


def test_an_experiment_finds_its_own_training_run_among_byte_equal_generators(tmp_path, monkeypatch):
    """Two DVC experiments can train the same generator bytes; each one's evaluate scores its own run (the newest
    run of the project otherwise)."""
    monkeypatch.chdir(tmp_path)
    runs = {}
    for name in ("first", "second"):
        monkeypatch.setenv("DVC_EXP_NAME", name)  # Tracker.start tags it, as under `dvc exp run`
        generator = trained(tmp_path, "same")  # the same bytes both times
        runs[name] = tracking.Tracker(TrackingConfig()).find_run(tracking.TAG_GENERATOR, metrics.file_sha256(generator)).info.run_id
    assert runs["first"] != runs["second"]
    monkeypatch.setenv("DVC_EXP_NAME", "first")
    assert evaluate(generator, 5.0)["mlflow_train_run_id"] == runs["first"]
    monkeypatch.delenv("DVC_EXP_NAME")
    assert evaluate(generator, 5.0)["mlflow_train_run_id"] == runs["second"]  # `dvc repro`: the newest
