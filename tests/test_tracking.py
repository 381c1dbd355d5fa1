import mlflow
import pytest

from conftest import closed_port
from ganflow import GanflowError, tracking
from ganflow.tracking import store
from ganflow.config import TrackingConfig


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
