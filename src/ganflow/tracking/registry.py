"""The model registry: log and register the generator of a training run, describe its version, and
move the `champion` alias to the best version at equal protocol (`ganflow champion`: across all). Each call is skipped (one warning) while
the store is down, never raising; the generator and its description are then kept in the run's spool
and logged and registered when the store is back."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ganflow.tracking.names import CHAMPION, MODEL_NAME, TAG_METRIC, TAG_PROTOCOL, TAG_STATUS
from ganflow.tracking.run import Tracker
from ganflow.tracking.store import first_line

log = logging.getLogger("ganflow.tracking")


def log_model(tracker: Tracker, model: Any, input_example: np.ndarray, metadata: dict[str, Any] | None = None) -> str | None:
    """Log the generator (torch.export format) into the tracker's run and register it under
    tracking.registered_model; return the model URI. `metadata` (z_dim, n_classes) is what
    `ganflow sample --model` needs to feed it."""
    import torch

    reqs = [f"torch=={torch.__version__.split('+')[0]}"]
    tracker.flush()
    info = tracker.call(
        lambda: tracker.mlflow.pytorch.log_model(
            model, name=MODEL_NAME, input_example=input_example, pip_requirements=reqs,
            registered_model_name=tracker.cfg.registered_model, metadata=metadata,
        ),
        "log_model",
    )
    if info is None and tracker.down:
        _spool_model(tracker, lambda path: tracker.mlflow.pytorch.save_model(
            model, path, input_example=input_example, pip_requirements=reqs, metadata=metadata))
    return info.model_uri if info else None


def _spool_model(tracker: Tracker, save) -> None:
    """Keep the model (saved by MLflow, the same files log_model uploads) in the run's spool."""
    box, name = tracker.outbox, f"model-{time.time_ns()}"
    try:
        box.dir.mkdir(parents=True, exist_ok=True)
        save(str(box.dir / name))
    except Exception as err:
        log.warning("the generator could not be kept until the store is back (%s): it is not logged", first_line(err))
        return
    box.spool({"kind": "model", "model_dir": name, "registered_model": tracker.cfg.registered_model})
    log.warning("the generator is kept in %s: logged and registered when the store is back", box.dir)


def annotate(tracker: Tracker, tags: dict[str, str], description: str) -> None:
    """Tag the model version the tracker's run registered, and describe its contract."""
    name, client, run_id = tracker.cfg.registered_model, getattr(tracker, "client", None), tracker.run_id

    def annotate_it() -> bool:
        for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
            for k, val in tags.items():
                client.set_model_version_tag(name, v.version, k, str(val))
            client.update_model_version(name, v.version, description=description)
        return True

    if name and tracker.call(annotate_it, "tag model version") is None and tracker.down:
        tracker.outbox.spool({"kind": "model_version", "registered_model": name, "tags": {k: str(v) for k, v in tags.items()},
                              "description": description})


def promote(tracker: Tracker, train_run_id: str | None, scores: dict[str, float], metric: str, protocol: str,
            n_key: str = "n_samples") -> str | None:
    """Score the version that `train_run_id` registered (its own training run's evaluation: the only
    caller that may write these tags); move the `champion` alias to it only when its `metric` beats the
    champion's under the same protocol hash (lower is better). Returns its new status."""
    name = tracker.cfg.registered_model
    if not (tracker.enabled and name and train_run_id) or tracker.down:
        return None
    client = tracker.client

    def decide() -> str | None:
        versions = client.search_model_versions(f"name='{name}' and run_id='{train_run_id}'")
        if not versions:
            return None
        v = versions[0]
        for k, val in {metric: repr(scores[metric]), n_key: repr(scores[n_key]), TAG_PROTOCOL: protocol,
                       TAG_METRIC: metric}.items():
            client.set_model_version_tag(name, v.version, k, val)
        champ = _champion(client, name)
        better = champ is None or champ.version == v.version or (
            champ.tags.get(TAG_PROTOCOL) == protocol and metric in champ.tags
            and scores[metric] < float(champ.tags[metric]))
        status = CHAMPION if better else "candidate"
        if better:
            client.set_registered_model_alias(name, CHAMPION, v.version)
            if champ is not None and champ.version != v.version:
                client.set_model_version_tag(name, champ.version, TAG_STATUS, "candidate")
        client.set_model_version_tag(name, v.version, TAG_STATUS, status)
        return status

    return tracker.call(decide, "promote model version")


def _champion(client: Any, name: str) -> Any:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except Exception:
        return None


@dataclass
class Standing:
    """One model version as `ganflow champion` shows it."""

    version: str
    run_id: str
    protocol: str
    n: str
    metric: str
    score: float | None
    alias: str


def standings(client: Any, name: str) -> list[Standing]:
    """Every version of registered model `name`, newest first, with the scores its own evaluation tagged."""
    champ = _champion(client, name)
    rows = []
    for v in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version)):
        metric = v.tags.get(TAG_METRIC, "")
        score = v.tags.get(metric) if metric else None
        rows.append(Standing(str(v.version), v.run_id or "", v.tags.get(TAG_PROTOCOL, ""), v.tags.get("n_samples", ""),
                             metric, float(score) if score else None,
                             CHAMPION if champ is not None and champ.version == v.version else ""))
    return rows


def best(rows: list[Standing], protocol: str | None = None) -> Standing | None:
    """The version with the lowest score under `protocol` (default: the newest scored version's protocol,
    the one evaluate uses now); None when no version was scored under it."""
    scored = [r for r in rows if r.score is not None and r.protocol]
    if protocol is None and scored:
        protocol = scored[0].protocol
    same = [r for r in scored if r.protocol == protocol]
    return min(same, key=lambda r: r.score) if same else None


def crown(client: Any, name: str, winner: Standing, rows: list[Standing]) -> None:
    """Move the `champion` alias to `winner`; every other version is a candidate."""
    client.set_registered_model_alias(name, CHAMPION, winner.version)
    for r in rows:
        client.set_model_version_tag(name, r.version, TAG_STATUS, CHAMPION if r is winner else "candidate")


def contract(arch: str, net: Any) -> str:
    """The registered generator's input/output contract, as its model version description (`net`: the
    generator's z_dim, n_classes, channels, resolution)."""
    cond = (f", plus a last column holding the class index 0..{net.n_classes - 1} (a class-conditional G)"
            if net.n_classes else "")
    return (f"ganflow generator ({arch}). Input: one float32 tensor N×{net.z_dim + bool(net.n_classes)}: "
            f"z ~ N(0, 1) of size z_dim={net.z_dim}{cond}. Output: N×{net.channels}×{net.resolution}×{net.resolution} "
            "float32 images in [-1, 1]; pixels = round((x + 1) · 127.5). Load: mlflow.pytorch.load_model(uri).")


def version_labels(client: Any, name: str | None) -> dict[str, str]:
    """run id -> "v<version>" (with " champion" for the alias holder), for `ganflow runs`; {} without a registry."""
    if not name:
        return {}
    try:
        rows = standings(client, name)
    except Exception:  # no such registered model yet
        return {}
    return {r.run_id: f"v{r.version}" + (f" {r.alias}" if r.alias else "") for r in rows}
