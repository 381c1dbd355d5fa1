"""MLflow, in one place. Every other module talks to a Tracker; `tracking.enabled: false` makes
it a no-op.

Tracking can never stop, hang or lose training:
- at start (before any work) every failure of the store is one line naming it, or, with
  `tracking.fallback_to_local`, a switch to the local sqlite store (also for a server that answers
  but is not MLflow); HTTP calls have bounded timeouts and retries;
- metrics and images go through a bounded queue to a worker thread, so the training loop never
  waits on the store; sqlite "database is locked" is retried with backoff;
- once the store fails mid-run, one warning is printed and everything else goes to a local spool
  (<project>/.ganflow/spool/<run id>/), replayed into its run when the store is back: at the end of
  the stage, or at the start of the next stage that tracks; the run then carries the tag
  `ganflow.tracking_gap` saying what arrived late.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import shutil
import threading
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import numpy as np

from ganflow import GanflowError

if TYPE_CHECKING:
    from ganflow.config import TrackingConfig

log = logging.getLogger("ganflow.tracking")
T = TypeVar("T")

MODEL_NAME = "generator"
TAG_DVC_EXP = "dvc.exp_name"
TAG_DVC_BASELINE = "dvc.baseline_rev"
TAG_RESUMED_FROM = "ganflow.resumed_from_run"
TAG_RESUMED_STEP = "ganflow.resumed_from_step"
TAG_GAP = "ganflow.tracking_gap"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
TAG_NOTE = "mlflow.note.content"  # the run's description in the UI
TAG_PARENT = "mlflow.parentRunId"
TAG_BASELINE_COMMIT = "ganflow.baseline_commit"
TAG_PARAMS_DIFF = "ganflow.params_diff"
TAG_DIRTY = "ganflow.code_dirty"
TAG_DATA = "ganflow.data_sha256"
TAG_EVALUATOR = "ganflow.evaluator_sha256"
TAG_STATUS = "ganflow.status"  # of a model version: champion | candidate
CHAMPION = "champion"

# bounded HTTP behaviour for remote stores (MLflow's defaults retry for minutes); env vars override
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
QUEUE_SIZE = 1000  # pending logging calls; past this they go to the spool, never block the loop
FLUSH_SECONDS = 60.0  # the most the end of a stage waits for pending calls


def project_root() -> Path:
    """The real project root, also under `dvc exp run --temp/--queue` (which runs in .dvc/tmp/exps/…)."""
    root = Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def sqlite_uri(path: Path) -> str:
    """An sqlite URI for any path: the characters a URI gives meaning to (`%`, `?`, `#`) are escaped."""
    return "sqlite:///" + str(path).replace("%", "%25").replace("?", "%3F").replace("#", "%23")


@contextmanager
def _no_stray_folder(uri: str) -> Iterator[None]:
    """MLflow creates an sqlite store's parent folder from the escaped URI text (a folder literally
    named `q%3Fx=1` beside `q?x=1`): remove it again when it is new and empty."""
    stray = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") and "%" in uri else None
    new = [p for p in (stray, *stray.parents) if not p.exists()] if stray else []
    try:
        yield
    finally:
        for p in new:
            try:
                p.rmdir()
            except OSError:
                break


def local_uri() -> str:
    return sqlite_uri(project_root() / "mlflow.db")


def resolve_uri(cfg: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or local_uri()


def _check_sqlite_file(uri: str) -> None:
    """Refuse an sqlite store that is not a database at once (MLflow would retry for minutes)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(urllib.parse.unquote(uri.removeprefix("sqlite:///")))
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a file")
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise ValueError(f"{path} is not an sqlite database")


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


def _retry(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Run fn, retrying sqlite lock errors with jittered exponential backoff (about 30 s in all)."""
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


class Spool:
    """Logging calls kept on disk while the store is unusable: one JSON line each, images as .npy."""

    def __init__(self, run_id: str):
        self.dir = project_root() / ".ganflow" / "spool" / run_id
        self.run_id = run_id

    def add(self, item: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if "image" in item:
            name = f"image-{time.time_ns()}.npy"
            np.save(self.dir / name, item.pop("image"), allow_pickle=False)
            item["image_file"] = name
        with open(self.dir / "items.jsonl", "a") as f:
            f.write(json.dumps(item) + "\n")

    def items(self) -> list[dict[str, Any]]:
        path = self.dir / "items.jsonl"
        if not path.exists():
            return []
        items = []
        for line in path.read_text().splitlines():
            try:
                items.append(json.loads(line))
            except ValueError:  # a line cut short by a kill
                continue
        return items

    def replay(self, client) -> str:
        """Log every kept item into the run; return a description of the gap, and remove the spool."""
        items = self.items()
        steps = [i["step"] for i in items if i.get("step") is not None]
        for item in items:
            if "image_file" in item:
                item["image"] = np.load(self.dir / item["image_file"], allow_pickle=False)
            _send(client, self.run_id, item)
        span = f" (steps {min(steps)}-{max(steps)})" if steps else ""
        gap = (f"{len(items)} logging calls{span} were kept locally while the store was unusable and "
               f"replayed at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        _retry(lambda: client.set_tag(self.run_id, TAG_GAP, gap), "set_tag")
        shutil.rmtree(self.dir, ignore_errors=True)
        return gap

    @staticmethod
    def pending() -> list[Spool]:
        root = project_root() / ".ganflow" / "spool"
        return [Spool(p.name) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []


class Tracker:
    """A thin MLflow wrapper around one run. All methods do nothing when tracking is disabled; after
    start, none of them raises because of the store."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.run_id: str | None = None
        self.uri: str | None = None
        self.down: str | None = None  # why the store became unusable mid-run
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._worker: threading.Thread | None = None
        self._marker: Path | None = None
        if not self.enabled:
            return
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        import mlflow

        # MLflow sets its own loggers to INFO on import (migrations, system-metrics chatter): warnings only
        logging.getLogger("mlflow").setLevel(max(logging.WARNING, logging.getLogger("mlflow").getEffectiveLevel()))
        self.mlflow = mlflow
        self.uri = resolve_uri(cfg)
        try:
            self._connect(self.uri)
        except Exception as err:
            if not (_is_remote(self.uri) and cfg.fallback_to_local):
                raise GanflowError(self._start_error(err)) from None
            log.warning("tracking store %s unusable (%s): logging to the local store instead", self.uri, _first_line(err))
            self.uri = local_uri()
            try:
                self._connect(self.uri)
            except Exception as err2:
                raise GanflowError(self._start_error(err2)) from None

    def _start_error(self, err: BaseException) -> str:
        if isinstance(err, GanflowError):
            return str(err)
        where = f"tracking.uri {self.uri}" if _is_remote(self.uri) else f"tracking store {self.uri}"
        hint = "start it, fix the URI, or set tracking.fallback_to_local: true" if _is_remote(self.uri) else \
            "move the file away (a new one is made) or set tracking.uri / tracking.enabled: false"
        import requests

        if isinstance(err, requests.exceptions.ConnectionError):  # from the /health probe: nothing listens
            return f"{where}: MLflow server unreachable ({type(err).__name__}); {hint}"
        return f"{where}: not a usable MLflow store ({_first_line(err)}); {hint}"

    def _connect(self, uri: str) -> None:
        """Prove the store works before any training: a real call, not just a reachable port."""
        from mlflow import MlflowClient

        if _is_remote(uri):
            import requests

            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        _check_sqlite_file(uri)
        with _no_stray_folder(uri):
            self.mlflow.set_tracking_uri(uri)
            self.client = MlflowClient(uri)
            self.experiment_id = _retry(self._experiment, "set_experiment").experiment_id
        if uri == local_uri():
            self._follow_moved_project()

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
        exp = mlflow.set_experiment(self.cfg.experiment)
        if exp.tags.get(TAG_EXPERIMENT_KIND) != "custom_model_development":  # the UI's model-training layout
            self.client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, "custom_model_development")
        return exp

    def _follow_moved_project(self) -> None:
        """A project moved with `mv` keeps its mlflow.db, whose experiments still name the old path's
        mlruns/: point them (and their runs) at this project's mlruns/, instead of writing there."""
        import sqlite3

        here = (project_root() / "mlruns").as_uri()
        db = project_root() / "mlflow.db"
        with sqlite3.connect(db, timeout=30) as con:
            rows = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
            for exp_id, location in rows:
                old = location or ""
                if not old.startswith("file://") or not old.endswith("/mlruns") or old == here:
                    continue
                if Path(urllib.parse.urlparse(old).path).exists():
                    continue  # another project's store, shared on purpose
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (here, exp_id))
                con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?) WHERE experiment_id = ?",
                            (old, here, exp_id))
                log.warning("the project moved: MLflow artifacts of experiment %s now go to %s (were %s)", exp_id, here, old)

    # -- run lifecycle -----------------------------------------------------------------------
    def start(self, run_id: str | None = None, tags: dict[str, str] | None = None, attempt: Path | None = None,
              name: str | None = None) -> None:
        """Start a new run named `name` in tracking.experiment (system metrics on), or reopen `run_id`;
        replay any spooled calls. `attempt`: a file naming this stage's run while it is open, so the
        next attempt can mark a run killed before its first checkpoint as KILLED."""
        if not self.enabled:
            return
        mlflow = self.mlflow
        try:
            if run_id is None:
                tags = {**_dvc_tags(), **(tags or {})}
                run = _retry(lambda: mlflow.start_run(experiment_id=self.experiment_id, run_name=name, tags=tags,
                                                      log_system_metrics=True), "start_run")
            else:
                if self.status(run_id) is None:
                    log.warning("run %s is not in %s: logging to a new run", run_id, self.uri)
                    return self.start(tags=tags, attempt=attempt, name=name)
                run = _retry(lambda: mlflow.start_run(run_id=run_id, log_system_metrics=True), "start_run")
        except Exception as err:
            raise GanflowError(self._start_error(err)) from None
        self.run_id = run.info.run_id
        if attempt is not None:
            self._mark_killed_attempt(attempt)
        self._replay_pending()
        self._worker = threading.Thread(target=self._work, name="ganflow-tracking", daemon=True)
        self._worker.start()

    def _mark_killed_attempt(self, attempt: Path) -> None:
        try:
            previous = json.loads(attempt.read_text()).get("run_id")
        except (OSError, ValueError):
            previous = None
        if previous and previous != self.run_id:
            self.mark(previous, "KILLED")
        attempt.parent.mkdir(parents=True, exist_ok=True)
        attempt.write_text(json.dumps({"run_id": self.run_id}) + "\n")
        self._marker = attempt

    def _replay_pending(self) -> None:
        for spool in Spool.pending():
            try:
                gap = spool.replay(self.client)
                log.warning("run %s: %s", spool.run_id, gap)
            except Exception as err:  # that run's store is still unusable, or the run is gone
                log.warning("could not replay the spooled tracking calls of run %s yet (%s)", spool.run_id, _first_line(err))

    def end(self, status: str = "FINISHED") -> None:
        """Wait (boundedly) for pending calls, replay any spool, close the run. Never raises."""
        if not (self.enabled and self.run_id):
            return
        self._flush()
        if self.down:
            try:
                gap = Spool(self.run_id).replay(self.client)
                log.warning("tracking store back: %s", gap)
                self.down = None
            except Exception:
                log.info("tracking store %s has not come back: the run's calls stay in %s and are replayed by "
                         "the next stage that tracks", self.uri, Spool(self.run_id).dir)
                return
        try:
            _retry(lambda: self.mlflow.end_run(status=status), "end_run")
        except Exception as err:
            log.warning("could not close MLflow run %s (%s)", self.run_id, _first_line(err))
            return
        if self._marker is not None:
            self._marker.unlink(missing_ok=True)

    def status(self, run_id: str | None) -> str | None:
        """A run's status (RUNNING, FINISHED, KILLED, ...), or None when there is no such run to be read."""
        if not (self.enabled and run_id):
            return None
        try:
            return self.client.get_run(run_id).info.status
        except Exception:
            return None

    def run_data(self, run_id: str):
        """(params, metrics, tags) of a run, or None when it cannot be read."""
        try:
            data = self.client.get_run(run_id).data
            return data.params, data.metrics, data.tags
        except Exception:
            return None

    def mark(self, run_id: str, status: str) -> None:
        """Set another run's status (an interrupted attempt that is still RUNNING -> KILLED)."""
        if not self.enabled:
            return
        try:
            if self.client.get_run(run_id).info.status == "RUNNING":
                _retry(lambda: self.client.set_terminated(run_id, status), "set_terminated")
        except Exception:
            return

    # -- the worker: every call that may come from the training loop -----------------------
    def _submit(self, item: dict[str, Any]) -> None:
        if not (self.enabled and self.run_id):
            return
        item = {**item, "ts": int(time.time() * 1000)}
        if self.down:
            Spool(self.run_id).add(item)
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # the store stalls: keep the call on disk rather than wait
            self._store_down("it stopped answering (logging queue full)")
            Spool(self.run_id).add(item)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.down:
                    Spool(self.run_id).add(item)
                    continue
                try:
                    self._send(item)
                except Exception as err:
                    self._store_down(_first_line(err))
                    Spool(self.run_id).add(item)
            finally:
                self._queue.task_done()

    def _send(self, item: dict[str, Any]) -> None:
        _send(self.client, self.run_id, item)

    def _store_down(self, why: str) -> None:
        if not self.down:
            self.down = why
            log.warning("tracking store %s unusable (%s): training goes on; its metrics are kept in %s and "
                        "replayed when the store is back", self.uri, why, Spool(self.run_id).dir)

    def _flush(self) -> None:
        """Let the worker finish what is queued, for at most FLUSH_SECONDS; spool the rest."""
        if self._worker is None:
            return
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        if not done.wait(FLUSH_SECONDS):
            self._store_down(f"pending calls did not finish within {FLUSH_SECONDS:.0f} s")
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    Spool(self.run_id).add(item)
                self._queue.task_done()
            return
        self._queue.put(None)
        self._worker.join(timeout=5)
        self._worker = None

    # -- logging -----------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._submit({"kind": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step})

    def log_image(self, image_hwc: np.ndarray, key: str, step: int) -> None:
        self._submit({"kind": "image", "image": np.ascontiguousarray(image_hwc), "key": key, "step": step})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._submit({"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def _call(self, fn: Callable[[], T], what: str) -> T | None:
        """A call outside the loop (params, artifacts, model): skipped with a warning when the store is
        down, never raising."""
        if not (self.enabled and self.run_id):
            return None
        if self.down:
            log.info("%s skipped: the tracking store is down", what)
            return None
        try:
            return _retry(fn, what)
        except Exception as err:
            self._store_down(_first_line(err))
            log.warning("%s skipped: %s", what, _first_line(err))
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

        self._call(log_them, "log_params")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(lambda: self.mlflow.log_artifact(str(path), artifact_path), "log_artifact")

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Rows of one table (same keys in each) as an MLflow table artifact, shown as a table in the UI."""
        if rows:
            columns = {k: [r.get(k) for r in rows] for k in rows[0]}
            self._call(lambda: self.mlflow.log_table(data=columns, artifact_file=artifact_file), "log_table")

    def log_model(self, model: Any, input_example: np.ndarray, metadata: dict[str, Any] | None = None) -> str | None:
        """Log the generator (torch.export format) and register it; return the model URI. `metadata`
        (z_dim, n_classes) is what `ganflow sample --model` needs to feed it."""
        import torch

        reqs = [f"torch=={torch.__version__.split('+')[0]}"]
        self._flush_quietly()
        info = self._call(
            lambda: self.mlflow.pytorch.log_model(
                model, name=MODEL_NAME, input_example=input_example, pip_requirements=reqs,
                registered_model_name=self.cfg.registered_model, metadata=metadata,
            ),
            "log_model",
        )
        return info.model_uri if info else None

    def _flush_quietly(self) -> None:
        """Drain the queue before a synchronous call (keeps the order of calls), restarting the worker."""
        if self._worker is not None:
            self._flush()
            if self._worker is None and not self.down:
                self._worker = threading.Thread(target=self._work, name="ganflow-tracking", daemon=True)
                self._worker.start()

    def log_history(self, rows: list[list[float]], columns: tuple[str, ...]) -> None:
        """Rows of (step, value, ...) that an earlier attempt trained (a resumed run's past), as metrics."""
        for row in rows:
            self.log_metrics(dict(zip(columns[1:], row[1:])), step=int(row[0]))

    def log_dataset(self, images: np.ndarray, meta: dict[str, Any]) -> None:
        """The prepared data as the run's input, with its content digest (the UI's Datasets column)."""

        def log_it() -> None:
            from mlflow.data import from_numpy

            ds = from_numpy(images[:1], source="data/prepared", name=meta.get("source", "prepared"), digest=meta["sha256"][:16])
            self.mlflow.log_input(ds, context="training", tags={"count": str(meta["count"]), "sha256": meta["sha256"]})

        self._call(log_it, "log_input")

    def annotate_model(self, tags: dict[str, str], description: str) -> None:
        """Tag the model version this run registered, and describe its contract."""
        name = self.cfg.registered_model

        def annotate() -> None:
            for v in self.client.search_model_versions(f"name='{name}' and run_id='{self.run_id}'"):
                for k, val in tags.items():
                    self.client.set_model_version_tag(name, v.version, k, str(val))
                self.client.update_model_version(name, v.version, description=description)

        if name:
            self._call(annotate, "tag model version")

    def promote(self, train_run_id: str, scores: dict[str, float], metric: str, n_key: str) -> str | None:
        """Score the version that `train_run_id` registered; move the `champion` alias to it only when
        its `metric` beats the champion's at equal N (lower is better). Returns its new status."""
        name = self.cfg.registered_model
        if not (self.enabled and name and train_run_id) or self.down:
            return None

        def decide() -> str | None:
            versions = self.client.search_model_versions(f"name='{name}' and run_id='{train_run_id}'")
            if not versions:
                return None
            v = versions[0]
            for k in (metric, n_key):
                self.client.set_model_version_tag(name, v.version, k, repr(scores[k]))
            try:
                champ = self.client.get_model_version_by_alias(name, CHAMPION)
            except Exception:
                champ = None
            better = champ is None or champ.version == v.version or (
                champ.tags.get(n_key) == repr(scores[n_key]) and metric in champ.tags
                and scores[metric] < float(champ.tags[metric]))
            status = CHAMPION if better else "candidate"
            if better:
                self.client.set_registered_model_alias(name, CHAMPION, v.version)
                if champ is not None and champ.version != v.version:
                    self.client.set_model_version_tag(name, champ.version, TAG_STATUS, "candidate")
            self.client.set_model_version_tag(name, v.version, TAG_STATUS, status)
            return status

        return self._call(decide, "promote model version")

    def write_handle(self, path: str | Path, run_id: str | None = None) -> None:
        """Record which run trained the model, for the later stages (models/run.json). The store is
        named only when it is a server: a path of this machine never goes into a DVC-tracked file."""
        from ganflow.io import write_json

        store = self.uri if self.uri and _is_remote(self.uri) else "local"
        write_json(path, {"run_id": run_id or self.run_id, "store": store})


def read_handle(path: str | Path) -> str | None:
    try:
        return json.loads(Path(path).read_text()).get("run_id")
    except (OSError, ValueError) as err:
        raise GanflowError(f"{path}: unreadable run handle ({err})") from None


def _send(client, run_id: str, item: dict[str, Any]) -> None:
    """One queued or spooled logging call (metrics, an image, tags) into a run."""
    from mlflow.entities import Metric, RunTag

    if item["kind"] == "metrics":
        ms = [Metric(k, float(v), item["ts"], item["step"] or 0) for k, v in item["metrics"].items()]
        _retry(lambda: client.log_batch(run_id, metrics=ms), "log_metrics")
    elif item["kind"] == "image":
        _retry(lambda: client.log_image(run_id, item["image"], key=item["key"], step=item["step"]), "log_image")
    elif item["kind"] == "tags":
        _retry(lambda: client.log_batch(run_id, tags=[RunTag(k, v) for k, v in item["tags"].items()]), "set_tags")


def _dvc_tags() -> dict[str, str]:
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags[TAG_DVC_EXP] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags[TAG_DVC_BASELINE] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def _git(*args: str) -> str | None:
    import subprocess

    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def params_diff(flat: dict[str, Any], params_file: str | Path) -> dict[str, tuple[Any, Any]]:
    """Params that differ from the committed params file (HEAD): key -> (committed, now)."""
    import yaml

    from ganflow.config import _Yaml12Loader, flatten

    committed = _git("show", f"HEAD:{Path(params_file).as_posix()}")
    if committed is None:
        return {}
    try:
        old = yaml.load(committed, Loader=_Yaml12Loader) or {}
    except yaml.YAMLError:
        return {}
    old_flat = flatten(old) if isinstance(old, dict) else {}
    return {k: (old_flat.get(k), v) for k, v in flat.items() if old_flat.get(k) != v}


def provenance(flat: dict[str, Any], params_file: str | Path, extra: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(a readable run name, tags) for a new run: the DVC experiment's name, else what changed against
    the committed params; the baseline commit, the diff of params, and whether the code differs from it."""
    diff = params_diff(flat, params_file)
    head = (_git("rev-parse", "--short", "HEAD") or "").strip()
    changed = ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, (_, v) in sorted(diff.items()))
    name = os.environ.get("DVC_EXP_NAME") or changed[:90] or (f"baseline {head}" if head else "baseline")
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "src", "stages", "dvc.yaml", "pyproject.toml")
    tags = {
        TAG_BASELINE_COMMIT: (_git("rev-parse", "HEAD") or "").strip() or "unknown",
        TAG_PARAMS_DIFF: "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(diff.items())) or "none",
        TAG_DIRTY: "unknown" if dirty is None else str(bool(dirty.strip())).lower(),
        **(extra or {}),
    }
    what = f"DVC experiment `{os.environ['DVC_EXP_NAME']}`" if os.environ.get("DVC_EXP_NAME") else "`dvc repro`"
    tags[TAG_NOTE] = (f"{what} on commit {head or 'unknown'}; params changed against it: "
                      f"{tags[TAG_PARAMS_DIFF]}; code changed against it: {tags[TAG_DIRTY]}.")
    return name, tags
