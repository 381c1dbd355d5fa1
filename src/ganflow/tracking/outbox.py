"""A run's logging calls on their way to the store, so that the training loop never waits on it:
a bounded queue drained by one worker thread; once the store fails, one warning, and every later
call goes to a spool on disk (<project>/.ganflow/spool/<run id>/: one JSON line per call, images as
.npy), replayed into the run when the store is back (then the run carries the tag
`ganflow.tracking_gap` saying what arrived late)."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ganflow.tracking.names import MODEL_NAME, TAG_GAP
from ganflow.tracking.store import first_line, project_root, retry

log = logging.getLogger("ganflow.tracking")

QUEUE_SIZE = 1000  # pending logging calls; past this they go to the spool, never block the loop
FLUSH_SECONDS = 60.0  # the most the end of a stage waits for pending calls


def spool_root() -> Path:
    return project_root() / ".ganflow" / "spool"


class Outbox:
    """The calls of run `run_id` (metrics, images, tags) waiting for the store behind `client`."""

    def __init__(self, client, run_id: str, uri: str = ""):
        self.client, self.run_id, self.uri = client, run_id, uri
        self.dir = spool_root() / run_id
        self.down: str | None = None  # why the store became unusable
        self.dropped: str | None = None  # why the spool cannot be written (its calls are lost)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._worker: threading.Thread | None = None

    # -- the way in: never blocks, never raises because of the store -----------------------------
    def start(self) -> None:
        self._worker = threading.Thread(target=self._work, name="ganflow-tracking", daemon=True)
        self._worker.start()

    def submit(self, item: dict[str, Any]) -> None:
        item = {**item, "ts": int(time.time() * 1000)}
        if self.down:
            self.spool(item)
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # the store stalls: keep the call on disk rather than wait
            self.store_down("it stopped answering (logging queue full)")
            self.spool(item)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.down:
                    self.spool(item)
                    continue
                try:
                    self.send(item)
                except Exception as err:
                    self.store_down(first_line(err))
                    self.spool(item)
            finally:
                self._queue.task_done()

    def send(self, item: dict[str, Any]) -> None:
        """One logging call (metrics, an image, tags) into the run."""
        from mlflow.entities import Metric, RunTag

        client, run_id = self.client, self.run_id
        if item["kind"] == "metrics":
            ms = [Metric(k, float(v), item["ts"], item["step"] or 0) for k, v in item["metrics"].items()]
            retry(lambda: client.log_batch(run_id, metrics=ms), "log_metrics")
        elif item["kind"] == "image":
            retry(lambda: client.log_image(run_id, item["image"], key=item["key"], step=item["step"]), "log_image")
        elif item["kind"] == "tags":
            retry(lambda: client.log_batch(run_id, tags=[RunTag(k, v) for k, v in item["tags"].items()]), "set_tags")
        elif item["kind"] == "model":  # the files MLflow's log_model uploads, then the registered version
            retry(lambda: client.log_artifacts(run_id, str(self.dir / item["model_dir"]), MODEL_NAME), "log_model")
            if item.get("registered_model"):
                self._register(item["registered_model"])
        elif item["kind"] == "model_version":
            name = item["registered_model"]
            for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
                for k, val in item["tags"].items():
                    client.set_model_version_tag(name, v.version, k, val)
                client.update_model_version(name, v.version, description=item["description"])
        elif item["kind"] == "end" and client.get_run(run_id).info.status == "RUNNING":  # the run's stage closed it
            retry(lambda: client.set_terminated(run_id, item["status"]), "end_run")

    def _register(self, name: str) -> None:
        """A version of registered model `name` from the run's logged generator (once)."""
        client, run_id = self.client, self.run_id
        if client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
            return
        try:
            client.create_registered_model(name)
        except Exception as err:
            if getattr(err, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_NAME}"
        client.create_model_version(name, source=source, run_id=run_id)

    def store_down(self, why: str) -> None:
        if not self.down:
            self.down = why
            log.warning("tracking store %s unusable (%s): training goes on; its metrics are kept in %s and "
                        "replayed when the store is back", self.uri, why, self.dir)

    def flush(self) -> None:
        """Let the worker send what is queued (at most FLUSH_SECONDS; the rest is spooled), then go on
        with a fresh worker: a synchronous call after this keeps the order of calls."""
        if self.close() and not self.down:
            self.start()

    def close(self) -> bool:
        """Wait (boundedly) for the queued calls and stop the worker; False when there was none."""
        if self._worker is None:
            return False
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        if not done.wait(FLUSH_SECONDS):
            self.store_down(f"pending calls did not finish within {FLUSH_SECONDS:.0f} s")
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self.spool(item)
                self._queue.task_done()
            return True
        self._queue.put(None)
        self._worker.join(timeout=5)
        self._worker = None
        return True

    # -- the spool ----------------------------------------------------------------------------
    def spool(self, item: dict[str, Any]) -> None:
        """Keep one call on disk; when that fails too (a read-only or full disk), warn once and drop
        the run's tracking from here on: it never stops the training."""
        if self.dropped:
            return
        item = dict(item)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if "image" in item:
                name = f"image-{time.time_ns()}.npy"
                np.save(self.dir / name, item.pop("image"), allow_pickle=False)
                item["image_file"] = name
            with open(self.dir / "items.jsonl", "a") as f:
                f.write(json.dumps(item) + "\n")
        except OSError as err:
            self.dropped = first_line(err)
            log.warning("tracking calls cannot be kept in %s either (%s): the tracking of run %s is dropped from "
                        "here on; training goes on", self.dir, self.dropped, self.run_id)

    def items(self) -> list[dict[str, Any]]:
        return self._read()[0]

    def _read(self) -> tuple[list[dict[str, Any]], int]:
        """(the spooled calls, how many lines could not be read: cut short by a kill)."""
        path = self.dir / "items.jsonl"
        if not path.exists():
            return [], 0
        items, unreadable = [], 0
        for line in path.read_text(errors="replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                unreadable += 1
                continue
            if isinstance(item, dict) and "kind" in item:
                items.append(item)
            else:
                unreadable += 1
        return items, unreadable

    def _load(self, item: dict[str, Any]) -> dict[str, Any]:
        """A spooled call ready to send: its image read back, only from this spool's own folder."""
        for key in ("image_file", "model_dir"):
            name = item.get(key, "-")
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise ValueError(f"names a file outside the spool ({name!r})")
        if "image_file" not in item:
            return item
        return {**item, "image": np.load(self.dir / item["image_file"], allow_pickle=False)}

    def run_state(self) -> str:
        """ok | missing (the store answers but lacks the run) | down."""
        try:
            self.client.get_run(self.run_id)
            return "ok"
        except Exception as err:
            return "missing" if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" else "down"

    def replay(self) -> str:
        """Log every spooled call into the run, tag the run with the gap, remove the spool; return the
        gap. A call the store refuses (a bad item) is dropped with a warning and the others still go;
        when the store itself fails, the calls not yet sent stay spooled (none is sent twice) and this raises."""
        items, unreadable = self._read()
        if unreadable:
            log.warning("run %s: %d spooled line(s) in %s could not be read (cut short by a kill?) and are dropped",
                        self.run_id, unreadable, self.dir / "items.jsonl")
        steps = [i["step"] for i in items if isinstance(i.get("step"), int)]
        refused = 0
        for n, item in enumerate(items):
            try:
                self.send(self._load(item))
            except Exception as err:
                if self.run_state() != "ok":
                    self._keep(items[n:])
                    raise
                refused += 1
                log.warning("run %s: a spooled %s call was refused and is dropped (%s)", self.run_id, item.get("kind"), first_line(err))
        span = f" (steps {min(steps)}-{max(steps)})" if steps else ""
        gap = (f"{len(items)} logging calls{span} were kept locally while the store was unusable and "
               f"replayed at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        if refused or unreadable:
            gap += f"; {refused} refused by the store and {unreadable} unreadable were dropped"
        if self.dropped:
            gap += f"; later calls were lost (the spool could not be written: {self.dropped})"
        retry(lambda: self.client.set_tag(self.run_id, TAG_GAP, gap), "set_tag")
        shutil.rmtree(self.dir, ignore_errors=True)
        return gap

    def _keep(self, items: list[dict[str, Any]]) -> None:
        """Rewrite the spool with only `items` (those not sent yet)."""
        try:
            tmp = self.dir / "items.jsonl.tmp"
            tmp.write_text("".join(json.dumps(i) + "\n" for i in items))
            tmp.replace(self.dir / "items.jsonl")
        except OSError:
            pass

    @staticmethod
    def replay_pending(client, uri: str = "") -> None:
        """Replay every run's spool that an earlier stage left (its store was down then). A spool whose
        run this store lacks (another store's) is kept, and said so once."""
        root = spool_root()
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            if not d.is_dir():
                continue
            box = Outbox(client, d.name, uri)
            try:
                gap = box.replay()
                log.warning("run %s: %s", d.name, gap)
            except Exception as err:  # that run's store is still unusable, or the run is not in it
                if box.run_state() != "missing":
                    log.warning("could not replay the spooled tracking calls of run %s yet (%s)", d.name, first_line(err))
                elif not (d / "not-in-store").exists():
                    log.warning("run %s is not in %s: its spooled calls stay in %s, replayed when a stage tracks to "
                                "the store that has it (said once)", d.name, uri, d)
                    with contextlib.suppress(OSError):
                        (d / "not-in-store").touch()
