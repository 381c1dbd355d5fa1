import logging
import os
import sqlite3

import mlflow
import pytest

from conftest import closed_port
from ganflow import GanflowError, tracking
from ganflow.config import TrackingConfig
from ganflow.tracking import store


def test_default_uri_is_the_project_db_also_under_dvc_exp_temp_dirs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "proj"))
    assert tracking.resolve_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'proj' / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12"))
    assert tracking.resolve_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'proj' / 'mlflow.db'}"
    assert tracking.resolve_uri(TrackingConfig(uri="sqlite:////x/y.db")) == "sqlite:////x/y.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////env.db")
    assert tracking.resolve_uri(TrackingConfig(uri="sqlite:////x/y.db")) == "sqlite:////env.db"


def test_disabled_tracker_does_nothing(tmp_path):
    t = tracking.Tracker(TrackingConfig(enabled=False))
    t.start()
    t.log_params({"a": 1})
    t.log_metrics({"m": 1.0}, step=1)
    t.end()
    assert t.run_id is None and not (tmp_path / "mlflow.db").exists()


def test_params_logged_twice_with_new_values_become_override_tags():
    t = tracking.Tracker(TrackingConfig(experiment="t"))
    t.start()
    t.log_params({"evaluate.batch_size": 100, "train.lr_g": 0.1})
    t.log_params({"evaluate.batch_size": 50, "sample.n": 10})  # would raise in plain MLflow
    t.end()
    run = mlflow.get_run(t.run_id)
    assert run.data.params == {"evaluate.batch_size": "100", "train.lr_g": "0.1", "sample.n": "10"}
    assert run.data.tags["param_override.evaluate.batch_size"] == "50"


def test_locked_database_is_retried(monkeypatch):
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert store.retry(flaky, "test") == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        store.retry(lambda: (_ for _ in ()).throw(ValueError("other")), "test")


def test_unreachable_server_fails_fast_unless_fallback_chosen(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(GanflowError, match=f"tracking.uri {uri}: MLflow server unreachable"):
        tracking.Tracker(TrackingConfig(uri=uri))
    t = tracking.Tracker(TrackingConfig(uri=uri, fallback_to_local=True))
    assert t.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_log_table_shows_rows_as_an_mlflow_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = tracking.Tracker(TrackingConfig(experiment="t"))
    t.start()
    t.log_table([{"class": 0, "coverage": 0.5}, {"class": 1, "coverage": 0.25}], "per_class.json")
    t.end()
    table = mlflow.load_table("per_class.json", run_ids=[t.run_id])
    assert table["coverage"].tolist() == [0.5, 0.25]


def test_mlflow_schema_has_the_columns_a_moved_project_rewrites(tmp_path):
    """store.follow_moved_project edits MLflow's sqlite schema directly (MLflow has no API to change an
    experiment's artifact location): this fails loudly when an MLflow upgrade renames what it edits."""
    tracking.Tracker(TrackingConfig())  # creates and migrates the store at MLFLOW_TRACKING_URI
    with sqlite3.connect(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")) as con:
        for table, columns in store.MOVED_PROJECT_COLUMNS.items():
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            assert set(columns) <= have, f"MLflow's {table} table lost {set(columns) - have}: fix store.follow_moved_project"


def test_another_programs_sqlite_file_is_refused_not_filled(tmp_path, monkeypatch):
    """Issue 20: a non-empty sqlite database that is not MLflow's, at the store path, is one error line;
    MLflow's tables are not added to it."""
    db = tmp_path / "notes.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE notes (text TEXT)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.sqlite_uri(db))
    with pytest.raises(GanflowError, match=f"{db} is another program's sqlite database \\(tables: notes\\)"):
        tracking.Tracker(TrackingConfig())
    with sqlite3.connect(db) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["notes"]


def test_a_deleted_experiment_is_one_line_saying_how_to_restore_it():
    """Issue 20: MLflow's "Cannot set a deleted experiment" came with the hint to move the store away."""
    t = tracking.Tracker(TrackingConfig(experiment="gone"))
    mlflow.MlflowClient(t.uri).delete_experiment(t.store.experiment_id)
    with pytest.raises(GanflowError) as err:
        tracking.Tracker(TrackingConfig(experiment="gone"))
    assert str(err.value) == (f"tracking.experiment 'gone' (id {t.store.experiment_id}) is deleted in {t.uri}: restore it "
                              f"(mlflow experiments restore -x {t.store.experiment_id}) or set another tracking.experiment")


def test_a_read_only_store_names_the_database_error_not_its_wrapper(monkeypatch):
    """Issue 20: SQLAlchemy and MLflow wrap the database's error ("raised as a result of Query-invoked
    autoflush"): the start error names the root cause."""
    tracking.Tracker(TrackingConfig())  # a real store at MLFLOW_TRACKING_URI
    path = os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///file:{path}?mode=ro&uri=true")  # read-only, for root too
    with pytest.raises(GanflowError, match=r"\(OperationalError: attempt to write a readonly database\)"):
        tracking.Tracker(TrackingConfig(experiment="new"))


@pytest.mark.stage
def test_an_unreachable_server_behind_an_mlflow_call_is_one_whole_line():
    """Issue 20: an MLflow API call to a dead server failed with a 300-character cut of urllib3's text
    (ending at `host='12);`): the line now names the refused connection."""
    uri = f"http://127.0.0.1:{closed_port()}"
    store.quiet_mlflow()
    with pytest.raises(Exception) as err:
        mlflow.MlflowClient(uri).get_experiment_by_name("x")
    line = store.start_error(uri, err.value)
    assert line.startswith(f"tracking.uri {uri}: MLflow server unreachable (ConnectionRefusedError: ") and "host=" not in line


@pytest.mark.stage
def test_a_locked_store_costs_no_mlflow_traceback(tmp_path, caplog):
    """Issue 20: MLflow logs a traceback for every sqlite error (a locked or read-only store), ~200 lines
    a stage; the exception reaches ganflow, which says it once. None of MLflow's ERROR records is emitted."""
    t = tracking.Tracker(TrackingConfig())
    t.start()
    holder = sqlite3.connect(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"), isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    caplog.set_level("INFO")
    try:
        with pytest.raises(Exception, match="locked"):
            t.client.set_tag(t.run_id, "k", "v")
    finally:
        holder.execute("COMMIT")
    assert not [r for r in caplog.records if r.name.startswith("mlflow") and r.levelno >= logging.ERROR]
    t.end()
