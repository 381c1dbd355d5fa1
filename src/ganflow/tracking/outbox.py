"""A run's logging calls on their way to the store, so that the training loop never waits on it:
a bounded queue drained by one worker thread; once the store fails, one warning, and every later
call goes to a spool on disk (<project>/.ganflow/spool/<run id>/: one JSON line per call, images as
.npy), replayed into the run when the store is back (then the run carries the tag
`ganflow.tracking_gap` saying what arrived late)."""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ganflow.tracking.names import TAG_GAP
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
        """Keep one call on disk."""
        item = dict(item)
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

    def replay(self) -> str:
        """Log every spooled call into the run, tag the run with the gap, remove the spool; return the gap."""
        items = self.items()
        steps = [i["step"] for i in items if i.get("step") is not None]
        for item in items:
            if "image_file" in item:
                item["image"] = np.load(self.dir / item["image_file"], allow_pickle=False)
            self.send(item)
        span = f" (steps {min(steps)}-{max(steps)})" if steps else ""
        gap = (f"{len(items)} logging calls{span} were kept locally while the store was unusable and "
               f"replayed at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        retry(lambda: self.client.set_tag(self.run_id, TAG_GAP, gap), "set_tag")
        shutil.rmtree(self.dir, ignore_errors=True)
        return gap

    @staticmethod
    def replay_pending(client) -> None:
        """Replay every run's spool that an earlier stage left (its store was down then)."""
        root = spool_root()
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            if not d.is_dir():
                continue
            try:
                gap = Outbox(client, d.name).replay()
                log.warning("run %s: %s", d.name, gap)
            except Exception as err:  # that run's store is still unusable, or the run is gone
                log.warning("could not replay the spooled tracking calls of run %s yet (%s)", d.name, first_line(err))
