"""MLflow, in one place. Every other module talks to a Tracker; `tracking.enabled: false` makes
it a no-op. sqlite writes are retried with backoff, so parallel experiments never lose a metric
to "database is locked"."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from ganflow import GanflowError
from ganflow.config import TrackingConfig

log = logging.getLogger("ganflow.tracking")
T = TypeVar("T")

MODEL_NAME = "generator"
TAG_DVC_EXP = "dvc.exp_name"
TAG_DVC_BASELINE = "dvc.baseline_rev"
TAG_RESUMED_FROM = "ganflow.resumed_from_run"
TAG_RESUMED_STEP = "ganflow.resumed_from_step"


def project_root() -> Path:
    """The real project root, also under `dvc exp run --temp/--queue` (which runs in .dvc/tmp/exps/…)."""
    root = Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def resolve_uri(cfg: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"sqlite:///{project_root() / 'mlflow.db'}"


def _retry(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Run fn, retrying sqlite lock errors with jittered exponential backoff."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as err:  # MlflowException / sqlalchemy OperationalError wrap the sqlite error
            if "locked" not in str(err).lower() or i == attempts - 1:
                raise
            delay = min(8.0, 0.1 * 2**i) * (0.5 + random.random())
            log.warning("%s: database is locked, retrying in %.1fs", what, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class Tracker:
    """A thin MLflow wrapper around one run. All methods do nothing when tracking is disabled."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.run_id: str | None = None
        self.uri: str | None = None
        if not self.enabled:
            return
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        self.mlflow = mlflow
        self.uri = resolve_uri(cfg)
        mlflow.set_tracking_uri(self.uri)
        self._check_reachable()

    def _check_reachable(self) -> None:
        """Fail fast on a server that does not answer, before any training starts."""
        if not self.uri.startswith(("http://", "https://")):
            return
        import requests

        try:
            requests.get(self.uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except Exception as err:
            if not self.cfg.fallback_to_local:
                raise GanflowError(
                    f"tracking.uri {self.uri}: MLflow server unreachable ({type(err).__name__}); "
                    "start it, fix the URI, or set tracking.fallback_to_local: true"
                ) from None
            self.uri = f"sqlite:///{project_root() / 'mlflow.db'}"
            log.warning("MLflow server unreachable (%s): logging to the local store %s", type(err).__name__, self.uri)
            self.mlflow.set_tracking_uri(self.uri)

    # -- run lifecycle -----------------------------------------------------------------------
    def start(self, run_id: str | None = None, tags: dict[str, str] | None = None) -> None:
        """Start a new run in tracking.experiment, or reopen `run_id`."""
        if not self.enabled:
            return
        mlflow = self.mlflow
        if run_id is None:
            exp = _retry(self._experiment, "set_experiment")
            tags = {**_dvc_tags(), **(tags or {})}
            run = _retry(lambda: mlflow.start_run(experiment_id=exp.experiment_id, tags=tags), "start_run")
        else:
            run = _retry(lambda: mlflow.start_run(run_id=run_id), "start_run")
        self.run_id = run.info.run_id

    def _experiment(self):
        """tracking.experiment, created on first use. With a local sqlite store its artifacts go to
        <project root>/mlruns: MLflow would put them under the current folder, which for
        `dvc exp run --temp/--queue` is a temp copy that DVC deletes."""
        mlflow = self.mlflow
        if mlflow.get_experiment_by_name(self.cfg.experiment) is None and self.uri.startswith("sqlite:"):
            try:
                mlflow.create_experiment(self.cfg.experiment, artifact_location=(project_root() / "mlruns").as_uri())
            except Exception as err:  # created meanwhile by a parallel experiment
                if "already exists" not in str(err):
                    raise
        return mlflow.set_experiment(self.cfg.experiment)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            _retry(lambda: self.mlflow.end_run(status=status), "end_run")

    def mark(self, run_id: str, status: str) -> None:
        """Set another run's status (an interrupted attempt that is still RUNNING -> KILLED)."""
        if not self.enabled:
            return
        client = self.mlflow.MlflowClient()
        try:
            run = client.get_run(run_id)
        except Exception:
            return
        if run.info.status == "RUNNING":
            _retry(lambda: client.set_terminated(run_id, status), "set_terminated")

    # -- logging -----------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        """Log params; a key already logged with another value (params are immutable in MLflow)
        is recorded as the tag `param_override.<key>` instead of failing."""
        if not self.enabled:
            return
        existing = _retry(lambda: self.mlflow.get_run(self.run_id), "get_run").data.params
        new = {k: str(v) for k, v in params.items() if k not in existing}
        changed = {k: str(v) for k, v in params.items() if k in existing and existing[k] != str(v)}
        if new:
            _retry(lambda: self.mlflow.log_params(new), "log_params")
        if changed:
            log.info("params changed since this run was logged, recorded as tags: %s", ", ".join(sorted(changed)))
            _retry(lambda: self.mlflow.set_tags({f"param_override.{k}": v for k, v in changed.items()}), "set_tags")

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            _retry(lambda: self.mlflow.set_tags(tags), "set_tags")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.enabled:
            _retry(lambda: self.mlflow.log_metrics(metrics, step=step), "log_metrics")

    def log_image(self, image_hwc: np.ndarray, key: str, step: int) -> None:
        if self.enabled:
            _retry(lambda: self.mlflow.log_image(image_hwc, key=key, step=step, synchronous=True), "log_image")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            _retry(lambda: self.mlflow.log_artifact(str(path), artifact_path), "log_artifact")

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Rows of one table (same keys in each) as an MLflow table artifact, shown as a table in the UI."""
        if self.enabled and rows:
            columns = {k: [r.get(k) for r in rows] for k in rows[0]}
            _retry(lambda: self.mlflow.log_table(data=columns, artifact_file=artifact_file), "log_table")

    def log_model(self, model: Any, input_example: np.ndarray) -> str | None:
        """Log the generator (torch.export format) and register it; return the model URI."""
        if not self.enabled:
            return None
        import torch

        reqs = [f"torch=={torch.__version__.split('+')[0]}"]
        info = _retry(
            lambda: self.mlflow.pytorch.log_model(
                model,
                name=MODEL_NAME,
                input_example=input_example,
                pip_requirements=reqs,
                registered_model_name=self.cfg.registered_model,
            ),
            "log_model",
        )
        return info.model_uri

    def write_handle(self, path: str | Path) -> None:
        """Record which run this stage logged to, for the later stages (models/run.json)."""
        from ganflow.io import write_json

        write_json(path, {"run_id": self.run_id, "tracking_uri": self.uri})


def read_handle(path: str | Path) -> str | None:
    try:
        return json.loads(Path(path).read_text()).get("run_id")
    except (OSError, ValueError) as err:
        raise GanflowError(f"{path}: unreadable run handle ({err})") from None


def _dvc_tags() -> dict[str, str]:
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags[TAG_DVC_EXP] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags[TAG_DVC_BASELINE] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags
