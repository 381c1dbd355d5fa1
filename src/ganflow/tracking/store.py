"""The MLflow tracking store: which one (URIs), proving it works before any training (connect, with
the fallback to the local store), retries of a locked sqlite file, the experiment, and a project
that was moved or copied with its mlflow.db. Also the read-only look-ups of the `ganflow` commands."""

from __future__ import annotations

import atexit
import logging
import os
import random
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ganflow import GanflowError
from ganflow.tracking.names import TAG_EXPERIMENT_KIND

if TYPE_CHECKING:
    from ganflow.config import TrackingConfig

log = logging.getLogger("ganflow.tracking")
T = TypeVar("T")

# bounded HTTP behaviour for remote stores (MLflow's defaults retry for minutes); env vars override
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# the columns of MLflow's sqlite schema that follow_moved_project rewrites (tests/test_tracking.py pins them)
MOVED_PROJECT_COLUMNS = {"experiments": ("experiment_id", "artifact_location"), "runs": ("experiment_id", "artifact_uri")}


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


def local_uri() -> str:
    return sqlite_uri(project_root() / "mlflow.db")


def resolve_uri(cfg: TrackingConfig) -> str:
    """The store this process tracks to (and the stray folders MLflow may make for it are removed at exit)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or local_uri()
    _remove_stray_folders_at_exit(uri)
    return uri


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of err's chain: MLflow and SQLAlchemy wrap the database's or the network's
    error in text that hides it ("raised as a result of Query-invoked autoflush", "API request to … failed")."""
    seen = {id(err)}
    while (nxt := err.__cause__ or (None if err.__suppress_context__ else err.__context__)) and id(nxt) not in seen:
        seen.add(id(nxt))
        err = nxt
    return err


def first_line(err: BaseException) -> str:
    """err's root cause in one line: its type and first line, object reprs dropped, cut at a word."""
    err = root_cause(err)
    text = re.sub(r"<[^<>]* at 0x[0-9a-f]+>:? ?", "", str(err)).strip()
    line = text.splitlines()[0] if text else ""
    if len(line) > 200:
        line = line[:200].rsplit(" ", 1)[0] + " …"
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def retry(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
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


def quiet_mlflow() -> Any:
    """Import mlflow with ganflow's settings: no telemetry, bounded HTTP retries, its loggers at WARNING
    (MLflow sets them to INFO on import: migrations, system-metrics chatter)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    import mlflow

    logging.getLogger("mlflow").setLevel(max(logging.WARNING, logging.getLogger("mlflow").getEffectiveLevel()))
    # its traceback for every sqlite error (a locked or read-only store: ~200 lines a stage) comes with
    # an exception that reaches ganflow, which says it in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    return mlflow


def _sqlite_path(uri: str) -> Path | None:
    return Path(urllib.parse.unquote(uri.removeprefix("sqlite:///"))) if uri.startswith("sqlite:///") else None


def _check_sqlite_file(uri: str) -> None:
    """Refuse an sqlite store that is not a database at once (MLflow would retry for minutes)."""
    path = _sqlite_path(uri)
    if path is None:
        return
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a file")
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise ValueError(f"{path} is not an sqlite database")
        tables = _tables(path)
        if tables and not {"alembic_version", "experiments"} & tables:  # MLflow would add its 65 tables to it
            raise ValueError(f"{path} is another program's sqlite database (tables: {', '.join(sorted(tables)[:5])})")


def _tables(path: Path) -> set[str]:
    """The tables of an sqlite file, read-only (empty when it cannot be read now, e.g. locked)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error:
        return set()


_STRAY: set[Path] = set()  # folders MLflow may create from an escaped sqlite URI, removed at exit


def _remove_stray_folders_at_exit(uri: str) -> None:
    """MLflow makes an sqlite store's parent folder from the URI text, escapes and all, each time it opens
    the store (every client, the model registry too): a folder literally named `q%3Fx=1` beside `q?x=1`.
    Note those that do not exist yet; at exit remove them again if they are still empty."""
    if not (uri.startswith("sqlite:///") and "%" in uri):
        return
    stray = Path(uri.removeprefix("sqlite:///")).parent
    _STRAY.update(p for p in (stray, *stray.parents) if not p.exists())


@atexit.register
def _remove_stray_folders() -> None:
    for p in sorted(_STRAY, key=lambda p: len(p.parts), reverse=True):  # the deepest first
        try:
            p.rmdir()
        except OSError:  # not there, or not empty: not ours to remove
            pass


@dataclass
class Store:
    """A tracking store proven usable: its URI, a client, and the id of tracking.experiment in it."""

    uri: str
    client: Any
    experiment_id: str

    def start_error(self, err: BaseException) -> str:
        return start_error(self.uri, err)


def start_error(uri: str, err: BaseException) -> str:
    """The one line a stage prints when the store fails before any work."""
    if isinstance(err, GanflowError):
        return str(err)
    where = f"tracking.uri {uri}" if is_remote(uri) else f"tracking store {uri}"
    hint = "start it, fix the URI, or set tracking.fallback_to_local: true" if is_remote(uri) else \
        "move the file away (a new one is made) or set tracking.uri / tracking.enabled: false"
    import requests

    # refused, reset or no such host; a server that accepts and never answers (a timeout) is reachable
    unreachable = isinstance(err, requests.exceptions.ConnectionError) or isinstance(root_cause(err), (ConnectionError, socket.gaierror))
    if is_remote(uri) and unreachable:  # the /health probe, or an API call MLflow wraps: nothing listens
        return f"{where}: MLflow server unreachable ({first_line(err)}); {hint}"
    return f"{where}: not a usable MLflow store ({first_line(err)}); {hint}"


def connect(cfg: TrackingConfig) -> Store:
    """The store tracking.* names, proven by a real call (not just a reachable port); with
    tracking.fallback_to_local an unusable server is replaced by the local store. GanflowError otherwise."""
    uri = resolve_uri(cfg)
    try:
        return _connect(uri, cfg.experiment)
    except Exception as err:
        if not (is_remote(uri) and cfg.fallback_to_local):
            raise GanflowError(start_error(uri, err)) from None
        log.warning("tracking store %s unusable (%s): logging to the local store instead", uri, first_line(err))
    uri = local_uri()
    _remove_stray_folders_at_exit(uri)
    try:
        return _connect(uri, cfg.experiment)
    except Exception as err:
        raise GanflowError(start_error(uri, err)) from None


def _connect(uri: str, experiment: str) -> Store:
    mlflow = quiet_mlflow()
    if is_remote(uri):
        import requests

        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    _check_sqlite_file(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp_id = retry(lambda: _experiment(mlflow, client, uri, experiment), "set_experiment").experiment_id
    if uri == local_uri():
        follow_moved_project()
    return Store(uri, client, exp_id)


def _experiment(mlflow, client, uri: str, name: str):
    """The experiment `name`, created on first use. With a local sqlite store its artifacts go to
    <project root>/mlruns: MLflow would put them under the current folder, which for
    `dvc exp run --temp/--queue` is a temp copy that DVC deletes."""
    found = mlflow.get_experiment_by_name(name)
    if found is None and uri.startswith("sqlite:"):
        try:
            mlflow.create_experiment(name, artifact_location=(project_root() / "mlruns").as_uri())
        except Exception as err:  # created meanwhile by a parallel experiment
            if "already exists" not in str(err):
                raise
    elif found is not None and found.lifecycle_stage != "active":  # MLflow: "Cannot set a deleted experiment"
        raise GanflowError(f"tracking.experiment {name!r} (id {found.experiment_id}) is deleted in {uri}: restore it "
                           f"(mlflow experiments restore -x {found.experiment_id}) or set another tracking.experiment")
    exp = mlflow.set_experiment(name)
    if exp.tags.get(TAG_EXPERIMENT_KIND) != "custom_model_development":  # the UI's model-training layout
        try:
            client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, "custom_model_development")
        except Exception:  # a parallel experiment set it first (the sqlite store's second insert of the key fails)
            if client.get_experiment(exp.experiment_id).tags.get(TAG_EXPERIMENT_KIND) != "custom_model_development":
                raise
    return exp


def follow_moved_project() -> None:
    """A project moved with `mv` or copied with `cp -a` keeps its mlflow.db, whose experiments still
    name the old path's mlruns/: point them (and their runs) at this project's mlruns/, instead of
    writing there (into another project's folder, lost with it). Left alone: a location whose project
    holds this very mlflow.db (the same store reached by another path).

    MLflow has no API to change an experiment's artifact location, so this is SQL on its schema: the
    columns in MOVED_PROJECT_COLUMNS, checked here (a schema without them is left alone, with a
    warning) and pinned by tests/test_tracking.py against the installed MLflow."""
    import sqlite3

    here = (project_root() / "mlruns").as_uri()
    db = project_root() / "mlflow.db"
    with sqlite3.connect(db, timeout=30) as con:
        for table, columns in MOVED_PROJECT_COLUMNS.items():
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            if not set(columns) <= have:
                log.warning("%s: MLflow's schema has no %s.%s: a moved project's artifacts are not followed",
                            db, table, "/".join(sorted(set(columns) - have)))
                return
        rows = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        for exp_id, location in rows:
            old = location or ""
            if not old.startswith("file://") or not old.endswith("/mlruns") or old == here:
                continue
            other_db = Path(urllib.parse.unquote(urllib.parse.urlparse(old).path)).parent / "mlflow.db"
            if other_db.exists() and other_db.samefile(db):
                continue  # this store, reached by another path (a symlink)
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (here, exp_id))
            con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?) WHERE experiment_id = ?",
                        (old, here, exp_id))
            log.warning("the project moved or was copied: MLflow artifacts of experiment %s now go to %s (were %s)",
                        exp_id, here, old)


# -- read-only look-ups for the `ganflow` commands ---------------------------------------------
def search_runs(cfg: TrackingConfig, limit: int) -> tuple[str, list]:
    """(the store's URI, the newest `limit` runs of tracking.experiment, newest first)."""
    uri = resolve_uri(cfg)
    mlflow = quiet_mlflow()
    mlflow.set_tracking_uri(uri)
    try:
        return uri, mlflow.search_runs(experiment_names=[cfg.experiment], output_format="list",
                                       order_by=["start_time DESC"], max_results=limit)
    except Exception as err:
        raise GanflowError(f"tracking store {uri}: cannot list runs ({type(err).__name__})") from None


def find_experiment(cfg: TrackingConfig) -> tuple[str, str | None]:
    """(the store's URI, the id of tracking.experiment in it, or None when it has none yet)."""
    uri = resolve_uri(cfg)
    mlflow = quiet_mlflow()
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.get_experiment_by_name(cfg.experiment)
    except Exception as err:
        raise GanflowError(f"tracking store {uri}: cannot read it ({type(err).__name__})") from None
    return uri, exp.experiment_id if exp else None


def read_client(cfg: TrackingConfig) -> tuple[str, Any]:
    """(the store's URI, an MlflowClient of it), for the `ganflow` commands that read or move the registry."""
    uri = resolve_uri(cfg)
    mlflow = quiet_mlflow()
    return uri, mlflow.MlflowClient(uri)
