"""`Tracker`: one MLflow run of a stage: start it (or reopen one), log to it, end it. Every method
does nothing when tracking is disabled; after the store was proven at construction, none of them
raises because of the store (calls from the training loop go through the Outbox)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from ganflow import GanflowError
from ganflow.tracking.names import TAG_DVC_EXP, TAG_LOGGED_IMAGES, TAG_PROJECT
from ganflow.tracking.provenance import dvc_tags
from ganflow.tracking.outbox import Outbox
from ganflow.tracking.store import Store, connect, first_line, project_root, quiet_mlflow, retry

if TYPE_CHECKING:
    from ganflow.config import TrackingConfig

log = logging.getLogger("ganflow.tracking")
T = TypeVar("T")


class Tracker:
    def __init__(self, cfg: TrackingConfig, enabled: bool = True):
        """Connect to the store tracking.* names (one GanflowError line when it is unusable).
        enabled=False: a no-op tracker (the other ranks of a multi-process run)."""
        self.cfg = cfg
        self.enabled = cfg.enabled and enabled
        self.run_id: str | None = None
        self.uri: str | None = None
        self.outbox: Outbox | None = None
        if not self.enabled:
            return
        self.mlflow = quiet_mlflow()
        self.store: Store = connect(cfg)
        self.uri, self.client = self.store.uri, self.store.client

    @property
    def down(self) -> str | None:
        """Why the store became unusable mid-run (None while it works)."""
        return self.outbox.down if self.outbox else None

    # -- run lifecycle -----------------------------------------------------------------------
    def start(self, run_id: str | None = None, tags: dict[str, str] | None = None, name: str | None = None) -> None:
        """Start a new run named `name` in tracking.experiment (system metrics on), or reopen `run_id`
        (a new run when the store lacks it); replay any spooled calls."""
        if not self.enabled:
            return
        mlflow = self.mlflow
        try:
            if run_id is None:
                tags = {**dvc_tags(), **(tags or {})}
                run = retry(lambda: mlflow.start_run(experiment_id=self.store.experiment_id, run_name=name, tags=tags,
                                                     log_system_metrics=True), "start_run")
            else:
                if self.status(run_id) is None:
                    log.warning("run %s is not in %s: logging to a new run", run_id, self.uri)
                    return self.start(tags=tags, name=name)
                run = retry(lambda: mlflow.start_run(run_id=run_id, log_system_metrics=True), "start_run")
        except Exception as err:
            raise GanflowError(self.store.start_error(err)) from None
        self.run_id = run.info.run_id
        self.replay_spools()
        self.outbox = Outbox(self.client, self.run_id, self.uri)
        self.outbox.start()

    def end(self, status: str = "FINISHED") -> bool:
        """Wait (boundedly) for pending calls, replay any spool, close the run. Never raises; True
        when the run was closed. When the store is down, the closing is spooled too: the next stage
        that tracks closes the run with this status (a finished run is never left RUNNING, to be
        taken for a killed one)."""
        if not (self.enabled and self.run_id and self.outbox):
            return False
        self.outbox.close()
        if self.outbox.down:
            try:
                gap = self.outbox.replay()
                log.warning("tracking store back: %s", gap)
                self.outbox.down = None
            except Exception:
                self.outbox.spool({"kind": "end", "status": status})
                log.info("tracking store %s has not come back: the run's calls stay in %s and are replayed by "
                         "the next stage that tracks", self.uri, self.outbox.dir)
                return False
        try:
            retry(lambda: self.mlflow.end_run(status=status), "end_run")
        except Exception as err:
            self.outbox.store_down(first_line(err))
            self.outbox.spool({"kind": "end", "status": status})
            log.warning("could not close MLflow run %s (%s): closed by the next stage that tracks", self.run_id, first_line(err))
            return False
        return True

    def replay_spools(self) -> None:
        """Replay what earlier stages spooled while their store was down (their calls, their closing)."""
        if self.enabled:
            Outbox.replay_pending(self.client, self.uri)

    def status(self, run_id: str | None) -> str | None:
        """A run's status (RUNNING, FINISHED, KILLED, ...), or None when there is no such run to be read."""
        run = self.get_run(run_id)
        return run.info.status if run else None

    def get_run(self, run_id: str | None):
        """The MLflow run `run_id`, or None when there is none to be read."""
        if not (self.enabled and run_id):
            return None
        try:
            return self.client.get_run(run_id)
        except Exception:
            return None

    def find_run(self, tag: str, value: str):
        """The newest FINISHED run of tracking.experiment tagged `tag` = `value` (the MLflow Run, as the
        search returned it), this project's own first (a clone finds the run it made; a teammate's
        clone, the shared store's run that made the file) and, under `dvc exp run`, this experiment's own
        first (two experiments can train byte-equal generators), or None when there is none to be read."""
        if not (self.enabled and value):
            return None
        try:
            runs = self.client.search_runs([self.store.experiment_id], f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
                                           order_by=["attributes.start_time DESC"], max_results=100)
        except Exception as err:
            log.warning("could not search %s for the run tagged %s (%s)", self.uri, tag, first_line(err))
            return None
        here, exp = str(project_root()), os.environ.get("DVC_EXP_NAME")
        # newest first within each rank: this experiment's run of this project, this project's, any
        ranked = sorted(runs, key=lambda r: (r.data.tags.get(TAG_PROJECT) != here,
                                             bool(exp) and r.data.tags.get(TAG_DVC_EXP) != exp))
        return ranked[0] if ranked else None

    def mark(self, run_id: str, status: str) -> None:
        """Set another run's status (an interrupted attempt that is still RUNNING -> KILLED)."""
        run = self.get_run(run_id)
        if run is not None and run.info.status == "RUNNING":
            try:
                retry(lambda: self.client.set_terminated(run_id, status), "set_terminated")
            except Exception:
                return

    # -- calls the training loop makes: queued, never waited on ------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._submit({"kind": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step})

    def log_image(self, image_hwc: np.ndarray, key: str, step: int) -> None:
        self._submit({"kind": "image", "image": np.ascontiguousarray(image_hwc), "key": key, "step": step})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._submit({"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_history(self, rows: list[list[float]], columns: tuple[str, ...]) -> None:
        """Rows of (step, value, ...) that an earlier attempt trained (a resumed run's past), as metrics."""
        for row in rows:
            self.log_metrics(dict(zip(columns[1:], row[1:])), step=int(row[0]))

    def _submit(self, item: dict[str, Any]) -> None:
        if self.enabled and self.run_id and self.outbox:
            self.outbox.submit(item)

    # -- calls outside the loop: synchronous, skipped while the store is down -----------------
    def flush(self) -> None:
        """Let the queued calls reach the store first (for a synchronous call that must come after them)."""
        if self.outbox:
            self.outbox.flush()

    def call(self, fn: Callable[[], T], what: str) -> T | None:
        """Run fn against the store now; skipped with a warning when the store is down, never raising."""
        if not (self.enabled and self.run_id and self.outbox):
            return None
        if self.outbox.down:
            log.info("%s skipped: the tracking store is down", what)
            return None
        try:
            return retry(fn, what)
        except Exception as err:
            self.outbox.store_down(first_line(err))
            log.warning("%s skipped: %s", what, first_line(err))
            return None

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params; a key already logged with another value (params are immutable in MLflow)
        is recorded as the tag `param_override.<key>` instead of failing."""

        def log_them() -> None:
            existing = self.client.get_run(self.run_id).data.params
            new = {k: str(v) for k, v in params.items() if k not in existing}
            changed = {k: str(v) for k, v in params.items() if k in existing and existing[k] != str(v)}
            if new:
                self.mlflow.log_params(new)
            if changed:
                log.info("params changed since this run was logged, recorded as tags: %s", ", ".join(sorted(changed)))
                self.mlflow.set_tags({f"param_override.{k}": v for k, v in changed.items()})

        self.call(log_them, "log_params")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.call(lambda: self.mlflow.log_artifact(str(path), artifact_path), "log_artifact")

    def log_dict(self, obj: dict[str, Any], artifact_file: str) -> None:
        self.call(lambda: self.mlflow.log_dict(obj, artifact_file), "log_dict")

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Rows of one table (same keys in each) as an MLflow table artifact, shown as a table in the UI."""
        if rows:
            columns = {k: [r.get(k) for r in rows] for k in rows[0]}
            self.call(lambda: self.mlflow.log_table(data=columns, artifact_file=artifact_file), "log_table")

    def log_dataset(self, images: np.ndarray, meta: dict[str, Any]) -> None:
        """The prepared data as the run's input, with its content digest (the UI's Datasets column)."""

        def log_it() -> None:
            import warnings

            from mlflow.data import from_numpy

            with warnings.catch_warnings():  # MLflow's 2-line UserWarning on every train stage, about a local path
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
                ds = from_numpy(images[:1], source="data/prepared", name=meta.get("source", "prepared"), digest=meta["sha256"][:16])
            self.mlflow.log_input(ds, context="training", tags={"count": str(meta["count"]), "sha256": meta["sha256"]})

        self.call(log_it, "log_input")

    def copy_step_images(self, run_id: str, up_to_step: int) -> int:
        """Copy the images run `run_id` logged by step (MLflow keeps them under its artifacts' images/,
        the step in the file name) up to `up_to_step` into this run, so that a resumed run's image
        slider starts at step 0. Returns how many files were copied (0 when that run is not in this store)."""

        def copy() -> int:
            import shutil
            import tempfile

            try:
                listed = self.client.list_artifacts(run_id, "images")
            except Exception:
                return 0
            keep = [a.path for a in listed if not a.is_dir and (image_step(a.path) or 0) <= up_to_step]
            if not keep:
                return 0
            with tempfile.TemporaryDirectory() as tmp:
                for path in keep:
                    got = self.client.download_artifacts(run_id, path, tmp + "/dl")
                    shutil.move(got, Path(tmp) / Path(path).name)
                shutil.rmtree(Path(tmp) / "dl", ignore_errors=True)
                self.client.log_artifacts(self.run_id, tmp, "images")
            self.client.set_tag(self.run_id, TAG_LOGGED_IMAGES, "True")
            return len(keep)

        return self.call(copy, "copy step images") or 0


def image_step(path: str) -> int | None:
    """The step in the name MLflow gives an image logged by step (`key+step+N+timestamp+...`, `%` in older MLflow)."""
    for sep in ("+", "%"):
        part = f"{sep}step{sep}"
        if part in path:
            try:
                return int(path.split(part, 1)[1].split(sep, 1)[0])
            except ValueError:
                return None
    return None
