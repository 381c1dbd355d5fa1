"""A real team tracking server: `mlflow server` over PostgreSQL with proxied artifacts (MLflow's production
layout, tools/team_server.py, what `make server` starts), and the test-sized pipeline logging to it over HTTP
from two clones; the server going away mid-run and coming back."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project, dvc, make_project

pytestmark = pytest.mark.slow
INJECT_DIR = Path(__file__).parent / "reliability" / "inject"


def _tools():
    spec = importlib.util.spec_from_file_location("team_server", ROOT / "tools" / "team_server.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def server():
    """PostgreSQL in a temp data folder on a free port, and `mlflow server` over it on another; both stopped after."""
    ts = _tools()
    try:
        import psycopg  # noqa: F401 - SQLAlchemy's postgresql+psycopg:// driver (the test extra installs it)

        ts.pg_bin()
    except (ImportError, ts.ServerError) as err:
        pytest.skip(f"no PostgreSQL-backed MLflow server here: {err} (.ci/run installs both)")
    root = Path(tempfile.mkdtemp(prefix="ganflow-team-server-"))
    os.chmod(root, 0o755)  # PostgreSQL runs as the postgres user when the tests run as root
    pg = ts.Postgres(root / "pg")
    srv = None
    try:
        pg.start()
        srv = ts.MlflowServer(pg.uri, root / "artifacts", log=root / "mlflow.log").start()
        yield srv
    finally:
        if srv:
            srv.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def clone(server, tmp_path_factory):
    """The test-sized pipeline (`dvc repro`) of one clone, logging to the team server (tracking.uri)."""
    root = tmp_path_factory.mktemp("team") / "clone-a"
    env = make_project(root, {"tracking": {"uri": server.url}})
    dvc(root, env, "repro")
    return root, env


def client(server):
    from mlflow import MlflowClient

    return MlflowClient(server.url)


def run_id(root: Path) -> str:
    """The run that trained the clone's model (the one evaluate found by its generator's sha256)."""
    return json.loads((root / ".ganflow" / "mlflow_run.json").read_text())["mlflow_train_run_id"]


def test_runs_metrics_images_model_and_champion_arrive_over_http(server, clone):
    root, _ = clone
    c = client(server)
    run = c.get_run(run_id(root))
    assert run.info.status == "FINISHED" and run.data.params["train.steps"] == "20"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "loss_D")] == [5, 10, 15, 20]
    assert "fid_classifier" in run.data.metrics
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the client never writes the store's disk
    images = [a.path for a in c.list_artifacts(run.info.run_id, "images")]
    assert any("train_grid+step+20" in p for p in images), images
    stored = {p.name for p in (server.artifacts).rglob("*") if p.is_file()}
    assert "params.yaml" in stored and any(n.endswith(".png") for n in stored)  # on the server's side
    champion = c.get_model_version_by_alias("ganflow-generator", "champion")
    assert champion.run_id == run.info.run_id


def test_ganflow_runs_sample_and_load_model_against_the_server(server, clone, tmp_path):
    root, env = clone
    cli = [sys.executable, "-m", "ganflow.cli"]
    env = {**env, "PYTHONPATH": str(root / "src")}
    r = subprocess.run([*cli, "runs", "--params", "params.yaml"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and run_id(root)[:12] in r.stdout, r.stderr[-2000:]
    grid = tmp_path / "grid.png"
    r = subprocess.run([*cli, "sample", "--model", "models:/ganflow-generator@champion", "-n", "16", "--out", str(grid),
                        "--params", "params.yaml"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and grid.stat().st_size > 0, r.stderr[-2000:]

    import mlflow
    import numpy as np
    import torch

    mlflow.set_tracking_uri(server.url)
    model = mlflow.pytorch.load_model("models:/ganflow-generator@champion")
    z = torch.from_numpy(np.zeros((2, 16 + 1), np.float32))  # z_dim 16 and the class column (conditional G)
    assert tuple(model(z).shape) == (2, 1, 28, 28)


def test_a_second_clone_gets_its_own_runs_and_survives_the_server_going_away_mid_run(server, clone, tmp_path):
    first, env = clone
    root = tmp_path / "clone-b"
    env = copy_project(first, root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr_g"] = 0.0008  # another experiment: train, sample and evaluate run again (not the evaluator)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the server is killed after training step 8 of 20; training goes on and spools what it cannot send
    killing = {**env, "PYTHONPATH": os.pathsep.join((str(INJECT_DIR), str(root / "src"))),
               "GANFLOW_TEST_SIGKILL_GROUP_AT": f"{server.proc.pid}:8"}
    r = dvc(root, killing, "repro", "train")
    assert [ln for ln in r.stderr.splitlines() if "unusable" in ln and "training goes on" in ln], r.stderr[-3000:]
    (spool,) = (root / ".ganflow" / "spool").iterdir()  # the second clone's run: its calls wait there for the server
    second = spool.name
    assert second != run_id(first)

    server.start()  # back (the same database and artifacts): the next stage that tracks replays the spool over HTTP
    dvc(root, env, "repro")
    assert run_id(root) == second  # evaluate found it by its generator
    c = client(server)
    assert [m.step for m in c.get_metric_history(second, "loss_D")] == [5, 10, 15, 20]
    assert "replayed" in c.get_run(second).data.tags["ganflow.tracking_gap"]
    assert not (root / ".ganflow" / "spool" / second).exists()
    # each clone has its own runs in the one experiment; the first clone's run is untouched
    runs = {r.info.run_id: r for r in c.search_runs([c.get_run(second).info.experiment_id])}
    assert {run_id(first), second} <= runs.keys()
    assert runs[run_id(first)].data.params["train.lr_g"] != runs[second].data.params["train.lr_g"] == "0.0008"
