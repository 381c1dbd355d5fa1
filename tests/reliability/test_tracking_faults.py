"""Tracking can never stop, hang or lose training: a store that dies, stalls, locks, is garbage or is
not MLflow at all costs at most one line (at start) or one warning (mid-run), never a checkpoint,
never a metric. Real MLflow servers and sqlite stores, on loopback only."""

import http.server
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from conftest import run_stage, stage_workspace
from ganflow import GanflowError, tracking
from ganflow.config import TrackingConfig

INJECT = Path(__file__).parent / "inject"
TRAIN_OUTS = ["g.pt", "best.pt", "ckpt.pt", "run.json", "log.tsv", "fid.tsv", "grid.png"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """A real MLflow server on loopback, in its own process group; returns once /health answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
         "--artifacts-destination", str(tmp_path / "art"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    import requests

    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("mlflow server did not start")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def fake_server(handler_cls) -> tuple[Server, str]:
    srv = Server(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


class Always200(http.server.BaseHTTPRequestHandler):
    """Answers 200 'OK' to everything: reachable, but not MLflow."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    do_POST = do_GET

    def log_message(self, *a):
        pass


class HalfAlive(Always200):
    """/health answers; every other request hangs."""

    def do_GET(self):
        if self.path.rstrip("/") == "/health":
            return super().do_GET()
        time.sleep(3600)

    do_POST = do_GET


@pytest.fixture(scope="module")
def ws(tmp_path_factory, mnist):
    return stage_workspace(tmp_path_factory.mktemp("ws"), mnist,
                           {"train": {"steps": 60, "log_every": 5, "checkpoint_every": 20, "eval_every": 0}})


def params_with(ws: Path, tmp_path: Path, **tracking_cfg) -> str:
    p = yaml.safe_load((ws / "params.yaml").read_text())
    p["tracking"].update(tracking_cfg)
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(p))
    return str(f)


def train(ws, tmp_path, params, env=None, **kw):
    return run_stage("train", "--params", params, str(ws / "prepared"), str(ws / "evaluator.pt"),
                     *[str(tmp_path / n) for n in TRAIN_OUTS], cwd=tmp_path, env={"DVC_ROOT": str(tmp_path), **(env or {})}, **kw)


@pytest.mark.slow
@pytest.mark.stage
def test_a_server_killed_mid_run_costs_one_warning_and_nothing_else(ws, tmp_path, monkeypatch):
    port = free_port()
    server = mlflow_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    t0 = time.time()
    r = train(ws, tmp_path, params_with(ws, tmp_path, uri=uri), env={
        "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(INJECT), "GANFLOW_TEST_SIGKILL_GROUP_AT": f"{server.pid}:12"})
    server.wait(timeout=10)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.time() - t0 < 120  # no minutes of HTTP retries
    warnings = [ln for ln in r.stderr.splitlines() if "unusable" in ln]
    assert len(warnings) == 1 and "training goes on" in warnings[0], r.stderr[-3000:]
    import torch

    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 60  # every checkpoint written
    run_id = yaml.safe_load((tmp_path / "run.json").read_text())["run_id"]
    assert (tmp_path / ".ganflow" / "spool" / run_id / "items.jsonl").exists()

    # the server comes back: the next stage that tracks replays the spool into the run
    server = mlflow_server(tmp_path, port)
    try:
        monkeypatch.setenv("DVC_ROOT", str(tmp_path))
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        t = tracking.Tracker(TrackingConfig(uri=uri))
        t.start(run_id=run_id)
        t.end()
        client = MlflowClient(uri)
        assert [m.step for m in client.get_metric_history(run_id, "loss_D")] == list(range(5, 61, 5))
        assert "replayed" in client.get_run(run_id).data.tags[tracking.TAG_GAP]
        assert not (tmp_path / ".ganflow" / "spool" / run_id).exists()
    finally:
        os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.stage
def test_a_half_alive_server_is_one_line_or_a_fallback_never_a_hang(ws, tmp_path, monkeypatch):
    srv, uri = fake_server(HalfAlive)
    fast = {"MLFLOW_TRACKING_URI": "", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    t0 = time.time()
    r = train(ws, tmp_path, params_with(ws, tmp_path, uri=uri), env=fast)
    assert time.time() - t0 < 60
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines[-1].startswith(f"error: tracking.uri {uri}: not a usable MLflow store ("), r.stderr[-2000:]
    assert not (tmp_path / "ckpt.pt").exists()
    r = train(ws, tmp_path, params_with(ws, tmp_path, uri=uri, fallback_to_local=True), env=fast)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "mlflow.db").exists()
    srv.shutdown()


@pytest.mark.stage
def test_a_server_that_is_not_mlflow_falls_back_when_asked(ws, tmp_path):
    srv, uri = fake_server(Always200)
    r = train(ws, tmp_path, params_with(ws, tmp_path, uri=uri), env={"MLFLOW_TRACKING_URI": ""})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len([ln for ln in lines if ln.startswith("error:")]) == 1
    assert lines[-1].startswith(f"error: tracking.uri {uri}: not a usable MLflow store"), r.stderr[-2000:]
    r = train(ws, tmp_path, params_with(ws, tmp_path, uri=uri, fallback_to_local=True), env={"MLFLOW_TRACKING_URI": ""})
    assert r.returncode == 0 and "logging to the local store instead" in r.stderr, r.stderr[-2000:]
    srv.shutdown()


@pytest.mark.parametrize("damage", ["garbage", "directory"])
@pytest.mark.stage
def test_a_broken_local_store_at_start_is_one_line_naming_it(ws, tmp_path, damage):
    db = tmp_path / "mlflow.db"
    if damage == "garbage":
        db.write_bytes(os.urandom(50_000))
    else:
        db.mkdir()
    r = train(ws, tmp_path, params_with(ws, tmp_path), env={"MLFLOW_TRACKING_URI": ""})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"error: tracking store sqlite:///{db}: not a usable MLflow store ("), lines[0]
    assert not (tmp_path / "ckpt.pt").exists()


@pytest.mark.stage
def test_a_locked_store_never_blocks_the_training_loop(mnist, tmp_path, monkeypatch):
    """Another process holds an exclusive lock on the sqlite store while training runs: the loop does
    not wait for it, and every metric arrives once the lock is gone."""
    from ganflow import accel
    from ganflow.config import parse_params
    from ganflow.training import Hooks, Trainer
    from conftest import paths

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    t = tracking.Tracker(TrackingConfig())
    t.start()
    run_id = t.run_id
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Timer(8.0, lambda: holder.execute("COMMIT"))
    released.start()
    accel.seed_everything(0, accel.select_device("cpu"))
    trainer = Trainer(parse_params({"train": {"steps": 20, "batch_size": 16, "width": 8, "z_dim": 16, "ema": 0.0,
                                              "log_every": 5, "checkpoint_every": 10, "device": "cpu"}}), mnist, "x")
    t0 = time.time()
    trainer.run(paths(tmp_path), Hooks(on_metrics=t.log_metrics))
    assert time.time() - t0 < 6.0  # done while the store was still locked
    t.end()
    released.join()
    hist = MlflowClient(tracking.local_uri()).get_metric_history(run_id, "loss_D")
    assert [m.step for m in hist] == [5, 10, 15, 20]


@pytest.mark.stage
def test_a_run_killed_before_its_first_checkpoint_is_marked_killed(ws, tmp_path):
    env = {"MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(INJECT), "GANFLOW_TEST_KILL": "log.tsv:1"}
    r = train(ws, tmp_path, params_with(ws, tmp_path), env=env, new_session=True)
    assert r.returncode == -signal.SIGKILL and not (tmp_path / "ckpt.pt").exists()
    r = train(ws, tmp_path, params_with(ws, tmp_path), env={"MLFLOW_TRACKING_URI": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    mlflow.set_tracking_uri(tracking.sqlite_uri(tmp_path / "mlflow.db"))
    runs = mlflow.search_runs(experiment_names=["ganflow"], output_format="list", order_by=["start_time ASC"])
    assert [run.info.status for run in runs] == ["KILLED", "FINISHED"]


@pytest.mark.stage
def test_a_moved_project_keeps_its_artifacts_in_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    first_run = "from ganflow import tracking, config; t = tracking.Tracker(config.TrackingConfig()); t.start(); t.end()"
    subprocess.run([sys.executable, "-c", first_run], env={**os.environ, "DVC_ROOT": str(old)}, check=True, capture_output=True)
    old.rename(new)  # the user moves the project between two runs
    monkeypatch.setenv("DVC_ROOT", str(new))
    (new / "note.txt").write_text("artifact")
    t = tracking.Tracker(TrackingConfig())
    t.start()
    t.log_artifact(new / "note.txt")
    t.end()
    assert not old.exists()
    assert [p.read_text() for p in (new / "mlruns").rglob("note.txt")] == ["artifact"]


@pytest.mark.parametrize("name", ["q?x=1", "%41", "with space#1"])
def test_odd_project_paths_keep_the_store_in_the_project(tmp_path, monkeypatch, name):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    root = tmp_path / name
    root.mkdir()
    monkeypatch.setenv("DVC_ROOT", str(root))
    t = tracking.Tracker(TrackingConfig())
    t.start()
    t.log_metrics({"m": 1.0}, step=1)
    t.end()
    assert (root / "mlflow.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written beside it
    assert MlflowClient(tracking.local_uri()).get_metric_history(t.run_id, "m")[0].value == 1.0


def test_a_store_that_fails_mid_run_spools_and_replays(tmp_path, monkeypatch):
    """In-process: the worker's calls start failing (a dead store); nothing raises, the calls are kept
    on disk, and the next start replays them into the run with a gap tag."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    t = tracking.Tracker(TrackingConfig())
    t.start()
    t.log_metrics({"loss": 1.0}, step=1)
    t._flush_quietly()
    real_send = t._send
    monkeypatch.setattr(t, "_send", lambda item: (_ for _ in ()).throw(ConnectionError("store gone")))
    for step in (2, 3):
        t.log_metrics({"loss": float(step)}, step=step)
    t.log_image(__import__("numpy").zeros((4, 4, 3), "uint8"), "grid", 3)
    t._flush_quietly()
    assert t.down and len(tracking.Spool(t.run_id).items()) == 3
    monkeypatch.setattr(t, "_send", real_send)
    t.end()  # the store answers again: replayed at the end of the stage
    client = MlflowClient(tracking.local_uri())
    assert [m.step for m in client.get_metric_history(t.run_id, "loss")] == [1, 2, 3]
    assert "3 logging calls (steps 2-3)" in client.get_run(t.run_id).data.tags[tracking.TAG_GAP]


def test_a_store_under_a_file_is_a_ganflow_error(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'afile' / 'x.db'}")
    with pytest.raises(GanflowError, match=f"tracking store sqlite:///{tmp_path / 'afile' / 'x.db'}: not a usable MLflow store"):
        tracking.Tracker(TrackingConfig())
