"""Tracking can never stop, hang or lose training: a store that dies, stalls, locks, is garbage or is
not MLflow at all costs at most one line (at start) or one warning (mid-run), never a checkpoint,
never a metric. Real MLflow servers and sqlite stores, on loopback only."""

import getpass
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
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from conftest import ROOT, run_stage, stage_workspace
from ganflow import GanflowError, metrics, tracking
from ganflow.config import TrackingConfig
from ganflow.outputs import TRAIN_FILE_NAMES, TrainPaths

INJECT = Path(__file__).parent / "inject"
INJECT_PATH = f"{INJECT}{os.pathsep}{ROOT / 'src'}"  # its sitecustomize imports ganflow: this checkout's


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


def written(folder: Path) -> TrainPaths:
    """The train stage's outputs in `folder`, the generator and checkpoint written (a policy test's training)."""
    paths = TrainPaths.under(folder)
    paths.generator.write_bytes(b"generator")
    paths.checkpoint.write_bytes(b"checkpoint at step 20")
    return paths


def params_with(ws: Path, tmp_path: Path, **tracking_cfg) -> str:
    p = yaml.safe_load((ws / "params.yaml").read_text())
    p["tracking"].update(tracking_cfg)
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(p))
    return str(f)


def train(ws, tmp_path, params, env=None, **kw):
    return run_stage("train", "--params", params, str(ws / "prepared"), str(ws / "evaluator.pt"),
                     *[str(tmp_path / n) for n in TRAIN_FILE_NAMES], cwd=tmp_path, env={"DVC_ROOT": str(tmp_path), **(env or {})}, **kw)


@pytest.mark.slow
@pytest.mark.stage
def test_a_server_killed_mid_run_costs_one_warning_and_nothing_else(ws, tmp_path, monkeypatch):
    port = free_port()
    server = mlflow_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    t0 = time.time()
    r = train(ws, tmp_path, params_with(ws, tmp_path, uri=uri), env={
        "MLFLOW_TRACKING_URI": "", "PYTHONPATH": INJECT_PATH, "GANFLOW_TEST_SIGKILL_GROUP_AT": f"{server.pid}:12"})
    server.wait(timeout=10)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.time() - t0 < 120  # no minutes of HTTP retries
    warnings = [ln for ln in r.stderr.splitlines() if "unusable" in ln]
    assert len(warnings) == 1 and "training goes on" in warnings[0], r.stderr[-3000:]
    import torch

    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 60  # every checkpoint written
    (spool,) = (tmp_path / ".ganflow" / "spool").iterdir()  # the run's calls, kept while the store was down
    run_id = spool.name
    assert (spool / "items.jsonl").exists()

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
    assert not (tmp_path / "checkpoint.pt").exists()
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
    assert not (tmp_path / "checkpoint.pt").exists()


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
    env = {"MLFLOW_TRACKING_URI": "", "PYTHONPATH": INJECT_PATH, "GANFLOW_TEST_KILL": "train_log.tsv:1"}
    r = train(ws, tmp_path, params_with(ws, tmp_path), env=env, new_session=True)
    assert r.returncode == -signal.SIGKILL and not (tmp_path / "checkpoint.pt").exists()
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


def test_a_parallel_experiment_that_tags_the_experiment_first_is_no_error(tmp_path, monkeypatch):
    """Experiments queued in parallel on a new store all find the experiment untagged; the slower insert of the
    same tag fails on sqlite's UNIQUE constraint (the full suite hit it once). That is no error; any other
    failure to tag still is, in one line."""
    import sqlalchemy.exc

    from ganflow.tracking.names import TAG_EXPERIMENT_KIND

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    real = MlflowClient.set_experiment_tag

    def raced(self, *args):
        real(self, *args)  # the other experiment's insert lands first ...
        raise sqlalchemy.exc.IntegrityError("INSERT INTO experiment_tags", {}, Exception(
            "UNIQUE constraint failed: experiment_tags.key, experiment_tags.experiment_id"))  # ... and this one fails

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", raced)
    t = tracking.Tracker(TrackingConfig(experiment="raced"))
    t.start()
    t.end()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_experiment_by_name("raced").tags[TAG_EXPERIMENT_KIND] == "custom_model_development"
    assert [r.info.status for r in client.search_runs([client.get_experiment_by_name("raced").experiment_id])] == ["FINISHED"]

    def failed(self, *args):
        raise sqlalchemy.exc.OperationalError("INSERT INTO experiment_tags", {}, Exception("disk I/O error"))

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", failed)
    with pytest.raises(GanflowError, match="not a usable MLflow store .*disk I/O error"):
        tracking.Tracker(TrackingConfig(experiment="untagged")).start()


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
    assert MlflowClient(tracking.local_uri()).get_metric_history(t.run_id, "m")[0].value == 1.0


STRAY_SCRIPT = """
import sys
from pathlib import Path
from mlflow import MlflowClient
from ganflow import tracking
from ganflow.config import TrackingConfig
t = tracking.Tracker(TrackingConfig())
t.start()
t.log_metrics({"m": 1.0}, step=1)
t.end()
MlflowClient(t.uri).search_registered_models()  # the model registry opens the store once more
print(sorted(p.name for p in Path(sys.argv[1]).iterdir()))
"""


@pytest.mark.stage
def test_no_escaped_folder_is_left_beside_a_project_with_odd_characters(tmp_path):
    """MLflow makes `q%3Fx=1%2541 %23s` (the store's escaped URI text) beside `q?x=1%41 #s` each time it
    opens the store, the model registry included; ganflow removes it when the process ends."""
    root = tmp_path / "q?x=1%41 #s"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"DVC_ROOT": str(root)}
    out = subprocess.run([sys.executable, "-c", STRAY_SCRIPT, str(tmp_path)], cwd=root, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == repr(["q%3Fx=1%2541 %23s", root.name])  # MLflow made it while the process ran
    assert sorted(p.name for p in tmp_path.iterdir()) == [root.name]  # and it is gone after
    assert (root / "mlflow.db").is_file()


def test_a_store_that_fails_mid_run_spools_and_replays(tmp_path, monkeypatch):
    """In-process: the worker's calls start failing (a dead store); nothing raises, the calls are kept
    on disk, and the next start replays them into the run with a gap tag."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    t = tracking.Tracker(TrackingConfig())
    t.start()
    t.log_metrics({"loss": 1.0}, step=1)
    t.flush()
    real_send = t.outbox.send
    monkeypatch.setattr(t.outbox, "send", lambda item: (_ for _ in ()).throw(ConnectionError("store gone")))
    for step in (2, 3):
        t.log_metrics({"loss": float(step)}, step=step)
    t.log_image(__import__("numpy").zeros((4, 4, 3), "uint8"), "grid", 3)
    t.flush()
    assert t.down and len(t.outbox.items()) == 3
    monkeypatch.setattr(t.outbox, "send", real_send)
    t.end()  # the store answers again: replayed at the end of the stage
    client = MlflowClient(tracking.local_uri())
    assert [m.step for m in client.get_metric_history(t.run_id, "loss")] == [1, 2, 3]
    assert "3 logging calls (steps 2-3)" in client.get_run(t.run_id).data.tags[tracking.TAG_GAP]


def test_a_store_under_a_file_is_a_ganflow_error(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'afile' / 'x.db'}")
    with pytest.raises(GanflowError, match=f"tracking store sqlite:///{tmp_path / 'afile' / 'x.db'}: not a usable MLflow store"):
        tracking.Tracker(TrackingConfig())


def test_a_store_down_with_an_unwritable_spool_never_stops_training(mnist, tmp_path, monkeypatch, caplog):
    """Issue 20 C1: the store fails mid-run and the spool cannot be written either (here `.ganflow/spool`
    is a file: as a read-only or full disk, for root too). One warning, the tracking is dropped, and the
    training finishes: no exception in the loop's thread or in the worker's."""
    from ganflow.config import parse_params
    from ganflow.tracking.policy import LoopHooks
    from ganflow.training import Trainer
    from conftest import paths

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))
    t = tracking.Tracker(TrackingConfig())
    t.start()
    (tmp_path / ".ganflow").mkdir(exist_ok=True)
    (tmp_path / ".ganflow" / "spool").write_text("a file where the spool's folder would go")
    monkeypatch.setattr(t.outbox, "send", lambda item: (_ for _ in ()).throw(ConnectionError("store gone")))
    trainer = Trainer(parse_params({"train": {"steps": 20, "batch_size": 16, "width": 8, "z_dim": 16, "ema": 0.0,
                                              "log_every": 2, "sample_every": 5, "checkpoint_every": 10,
                                              "device": "cpu"}}), mnist, "x")
    summary = trainer.run(paths(tmp_path), LoopHooks(t))
    t.log_metrics(summary)  # the store is down: straight to the (unwritable) spool, in this thread
    t.end()
    assert trainer.state.step == 20 and not thread_errors and t.outbox.dropped
    gap = MlflowClient(tracking.local_uri()).get_run(t.run_id).data.tags[tracking.TAG_GAP]  # the store came back
    assert "later calls were lost (the spool could not be written" in gap
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and "training goes on" in dropped[0].getMessage()


@pytest.mark.parametrize("whose", ["own", "another experiment", "another project", "another user"])
def test_an_attempt_file_marks_only_this_projects_own_runs_killed(mnist, tmp_path, monkeypatch, whose):
    """Issue 20 S7: .ganflow/train-run.json names the run an earlier attempt left open; the next attempt
    closes it as KILLED only when it is this project's (same experiment, project root and user). A
    teammate's running run named there (a copied file) is left running."""
    from types import SimpleNamespace

    from ganflow.config import Params
    from ganflow.tracking import names, policy

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    t = tracking.Tracker(TrackingConfig())
    client = MlflowClient(tracking.local_uri())
    experiment = client.create_experiment("theirs") if whose == "another experiment" else t.store.experiment_id
    tags = {names.TAG_PROJECT: "/elsewhere" if whose == "another project" else str(tracking.project_root()),
            names.TAG_USER: "someone-else" if whose == "another user" else getpass.getuser()}
    other = client.create_run(experiment, tags=tags).info.run_id  # RUNNING: an attempt killed before its first checkpoint
    (tmp_path / ".ganflow").mkdir()
    (tmp_path / ".ganflow" / "train-run.json").write_text(f'{{"run_id": "{other}"}}')
    (tmp_path / "params.yaml").write_text("")
    trainer = SimpleNamespace(resumed_step=None, state=SimpleNamespace(step=0))
    params = Params(tracking=TrackingConfig())
    inputs = policy.TrainInputs(params, "params.yaml", tmp_path / "params.yaml", mnist.images[:2], "sha", "mnist")
    policy.train_run(t, trainer, lambda hooks: {"loss": 1.0}, [], inputs, written(tmp_path), main=False)
    assert client.get_run(other).info.status == ("KILLED" if whose == "own" else "RUNNING")
    assert client.get_run(t.run_id).info.status == "FINISHED"


def test_a_run_that_finished_while_the_store_was_down_is_finished_never_killed(tmp_path, monkeypatch):
    """Issue 20 S6: the store fails mid-run and is still down when the stage ends, so the run cannot be
    closed. The next attempt (nothing left to train) replays the spool first: the run ends FINISHED with
    its metrics, is not marked KILLED, and no second run is made."""
    from types import SimpleNamespace

    from ganflow.config import Params, TrainConfig
    from ganflow.tracking import policy

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("")
    params = Params(train=TrainConfig(steps=20), tracking=TrackingConfig())
    first = tracking.Tracker(TrackingConfig())

    def train_while_the_store_dies(hooks):
        monkeypatch.setattr(first.outbox, "send", lambda item: (_ for _ in ()).throw(ConnectionError("store gone")))
        monkeypatch.setattr(first.outbox, "run_state", lambda: "down")
        hooks.on_metrics({"loss_D": 1.0}, 20)
        return {"train_img_per_s": 1.0}

    trainer = SimpleNamespace(resumed_step=None, state=SimpleNamespace(step=0))
    args = (policy.TrainInputs(params, "params.yaml", tmp_path / "params.yaml", np.zeros((2, 1, 28, 28), "uint8"), "sha", "mnist"),
            written(tmp_path))
    policy.train_run(first, trainer, train_while_the_store_dies, [], *args, main=False)
    client = MlflowClient(tracking.local_uri())
    assert client.get_run(first.run_id).info.status == "RUNNING"  # the store was down at the end

    again = SimpleNamespace(resumed_step=20, state=SimpleNamespace(step=20))  # its checkpoint: found by its sha256
    second = tracking.Tracker(TrackingConfig())
    assert policy.train_run(second, again, lambda hooks: {}, [], *args, main=True) is None  # nothing left to train
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first.run_id, "loss_D")] == [20]
    assert second.run_id is None and len(client.search_runs([first.store.experiment_id])) == 1


def test_spool_hygiene(tmp_path, monkeypatch, caplog):
    """Issue 20 S11: a spooled call the store refuses is dropped (the good ones are sent once, never
    again); an item naming a file outside its spool is refused; a line cut short is reported; a spool
    whose run the store lacks is kept and said so once, not at every stage."""
    from ganflow.tracking.outbox import Outbox

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    t = tracking.Tracker(TrackingConfig())
    t.start()
    t.end()
    np.save(tmp_path / "secret.npy", np.zeros((4, 4, 3), "uint8"))
    box = Outbox(t.client, t.run_id)
    box.spool({"kind": "metrics", "metrics": {"m": 1.0}, "step": 1, "ts": 0})
    box.spool({"kind": "metrics", "metrics": {"a/../b": 2.0}, "step": 2, "ts": 0})  # MLflow refuses the name
    box.spool({"kind": "image", "image_file": "../../secret.npy", "key": "leak", "step": 2, "ts": 0})
    box.spool({"kind": "metrics", "metrics": {"m": 3.0}, "step": 3, "ts": 0})
    with open(box.dir / "items.jsonl", "a") as f:
        f.write('{"kind": "metrics", "metr')  # a kill mid-write
    caplog.set_level("INFO")
    for _ in range(2):  # two later stages
        Outbox.replay_pending(t.client, t.uri)
    assert [m.step for m in t.client.get_metric_history(t.run_id, "m")] == [1, 3]
    assert t.client.list_artifacts(t.run_id) == []  # the outside file was not uploaded
    assert not box.dir.exists()
    said = [r.getMessage() for r in caplog.records]
    assert len([s for s in said if "refused and is dropped" in s]) == 2
    assert len([s for s in said if "outside the spool" in s]) == 1
    assert len([s for s in said if "1 spooled line(s)" in s]) == 1
    assert "2 refused by the store and 1 unreadable" in t.client.get_run(t.run_id).data.tags[tracking.TAG_GAP]

    ghost = Outbox(t.client, "0" * 32)  # a spool of a run that is in another store
    ghost.spool({"kind": "metrics", "metrics": {"m": 1.0}, "step": 1, "ts": 0})
    caplog.clear()
    for _ in range(3):
        Outbox.replay_pending(t.client, t.uri)
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1 and ghost.dir.exists()


@pytest.mark.stage
def test_a_copied_project_logs_its_artifacts_into_its_own_mlruns(tmp_path, monkeypatch):
    """Issue 20 S10: a project copied with `cp -a` (its mlflow.db names the original's mlruns/) logs
    into its own mlruns/, so deleting the original loses nothing of the copy's."""
    import shutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    first_run = "from ganflow import tracking, config; t = tracking.Tracker(config.TrackingConfig()); t.start(); t.end()"
    subprocess.run([sys.executable, "-c", first_run], env={**os.environ, "DVC_ROOT": str(old)}, check=True, capture_output=True)
    shutil.copytree(old, new, symlinks=True)  # cp -a
    monkeypatch.setenv("DVC_ROOT", str(new))
    (new / "note.txt").write_text("the copy's artifact")
    t = tracking.Tracker(TrackingConfig())
    t.start()
    t.log_artifact(new / "note.txt")
    t.end()
    shutil.rmtree(old)  # the user deletes the original
    assert [p.read_text() for p in (new / "mlruns").rglob("note.txt")] == ["the copy's artifact"]
    assert MlflowClient(tracking.local_uri()).get_run(t.run_id).info.artifact_uri.startswith((new / "mlruns").as_uri())


def test_a_model_logged_while_the_store_is_down_arrives_registered_when_it_is_back(mnist, tmp_path, monkeypatch):
    """Issue 20 S6: the store fails before the end of training; the generator (and its version's tags
    and description) wait in the spool and are logged and registered when the store is back, in a form
    `ganflow sample --model models:/…` reads."""
    from ganflow.cli import main
    from ganflow.config import parse_params
    from ganflow.tracking import registry
    from ganflow.training import Trainer
    from conftest import paths

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    trainer = Trainer(parse_params({"train": {"steps": 1, "batch_size": 16, "width": 8, "z_dim": 16, "device": "cpu"}}), mnist, "x")
    trainer.run(paths(tmp_path))
    t = tracking.Tracker(TrackingConfig())
    t.start()
    real_send = t.outbox.send
    monkeypatch.setattr(t.outbox, "send", lambda item: (_ for _ in ()).throw(ConnectionError("store gone")))
    t.log_metrics({"loss_D": 1.0}, step=1)
    t.flush()
    assert t.down
    model, example = trainer.export_generator()
    assert registry.log_model(t, model, example, metadata={"z_dim": 16, "n_classes": trainer.net_cfg.n_classes}) is None
    registry.annotate(t, {"run_name": "r"}, "the contract")
    monkeypatch.setattr(t.outbox, "send", real_send)
    t.end()  # the store is back
    client = MlflowClient(tracking.local_uri())
    [version] = client.search_model_versions(f"name='ganflow-generator' and run_id='{t.run_id}'")
    assert version.tags["run_name"] == "r" and version.description == "the contract"
    assert client.get_run(t.run_id).info.status == "FINISHED"
    main(["sample", "--model", f"models:/ganflow-generator/{version.version}", "-n", "10", "--out", str(tmp_path / "g.png")])
    assert (tmp_path / "g.png").stat().st_size > 0


def test_a_checkpoint_whose_run_is_in_another_store_is_logged_here_once(tmp_path, monkeypatch):
    """Issue 20 S8: nothing is left to train, but the run that trained the checkpoint is not in this
    store: the first re-run logs it into a new run here; later re-runs (an evaluate.batch_size change)
    reuse that run instead of making (and registering) another identical one each time."""
    from types import SimpleNamespace

    from ganflow.config import Params, TrainConfig
    from ganflow.tracking import policy

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("")
    params = Params(train=TrainConfig(steps=20), tracking=TrackingConfig())
    args = (policy.TrainInputs(params, "params.yaml", tmp_path / "params.yaml", np.zeros((2, 1, 28, 28), "uint8"), "sha", "mnist"),
            written(tmp_path))
    made = []
    for attempt in range(3):  # the checkpoint's run is in the store it was trained with: none here is tagged with it
        trainer = SimpleNamespace(resumed_step=20, state=SimpleNamespace(step=20))
        t = tracking.Tracker(TrackingConfig())
        policy.train_run(t, trainer, lambda hooks: {}, [], *args, main=False)
        if t.run_id:
            made.append(t.run_id)
    client = MlflowClient(tracking.local_uri())
    assert len(made) == 1 and len(client.search_runs([t.store.experiment_id])) == 1
    assert client.get_run(made[0]).data.tags[tracking.TAG_CHECKPOINT] == metrics.file_sha256(tmp_path / "checkpoint.pt")
