"""Where a run comes from, read from git and DVC (not MLflow): a readable run name and the tags that
say which commit, which params changed against it, whether the code differs, which DVC experiment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ganflow.tracking.names import TAG_BASELINE_COMMIT, TAG_DIRTY, TAG_DVC_BASELINE, TAG_DVC_EXP, TAG_NOTE, TAG_PARAMS_DIFF


def dvc_tags() -> dict[str, str]:
    """The DVC experiment's name and baseline, when the stage runs under `dvc exp run`."""
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags[TAG_DVC_EXP] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags[TAG_DVC_BASELINE] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def git(*args: str) -> str | None:
    """git's output, or None when git fails or is missing."""
    import subprocess

    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def params_diff(flat: dict[str, Any], params_file: str | Path) -> dict[str, tuple[Any, Any]]:
    """Params that differ from the committed params file (HEAD): key -> (committed, now)."""
    import yaml

    from ganflow.config import flatten, read_yaml

    committed = git("show", f"HEAD:{Path(params_file).as_posix()}")
    if committed is None:
        return {}
    try:
        old = read_yaml(committed) or {}
    except yaml.YAMLError:
        return {}
    old_flat = flatten(old) if isinstance(old, dict) else {}
    return {k: (old_flat.get(k), v) for k, v in flat.items() if old_flat.get(k) != v}


def provenance(flat: dict[str, Any], params_file: str | Path, extra: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(a readable run name, tags) for a new run: the DVC experiment's name, else what changed against
    the committed params; the baseline commit, the diff of params, and whether the code differs from it."""
    diff = params_diff(flat, params_file)
    head = (git("rev-parse", "--short", "HEAD") or "").strip()
    changed = ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, (_, v) in sorted(diff.items()))
    name = os.environ.get("DVC_EXP_NAME") or changed[:90] or (f"baseline {head}" if head else "baseline")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "stages", "dvc.yaml", "pyproject.toml")
    tags = {
        TAG_BASELINE_COMMIT: (git("rev-parse", "HEAD") or "").strip() or "unknown",
        TAG_PARAMS_DIFF: "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(diff.items())) or "none",
        TAG_DIRTY: "unknown" if dirty is None else str(bool(dirty.strip())).lower(),
        **(extra or {}),
    }
    what = f"DVC experiment `{os.environ['DVC_EXP_NAME']}`" if os.environ.get("DVC_EXP_NAME") else "`dvc repro`"
    tags[TAG_NOTE] = (f"{what} on commit {head or 'unknown'}; params changed against it: "
                      f"{tags[TAG_PARAMS_DIFF]}; code changed against it: {tags[TAG_DIRTY]}.")
    return name, tags


def dvc_md5(path: str | Path) -> str | None:
    """The md5 DVC records for a dep in dvc.lock (a file's content md5; a folder's `<md5>.dir`, the md5 of
    its manifest), computed by DVC's own hashing (dvc-data's `build`, as `dvc commit` runs it; a dry run
    stores nothing). None when the path is missing."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    if not fs.exists(str(path)):
        return None
    path = fs.abspath(str(path))
    _, _, obj = build(HashFileDB(fs, path), path, fs, "md5", dry_run=True)  # the object store: unused in a dry run
    return obj.hash_info.value


STAGE_INPUTS_NOTE = ("The md5 of each dep of this stage, as the stage saw them while it ran (DVC's own hashing: a file's "
                     "md5, a folder's .dir manifest md5): comparable with the deps of this stage in the dvc.lock DVC "
                     "commits for the experiment. A dvc.lock logged from inside a stage is one stage stale (DVC writes it "
                     "after the stage), so the run's before_this_stage/dvc.lock is right for the earlier stages only.")


def stage_inputs(stage: str, dvc_yaml: str | Path = "dvc.yaml") -> dict[str, Any]:
    """What `stage` reads, hashed now: {"stage", "note", "deps": {path: md5}} (deps as dvc.yaml lists them)."""
    import yaml

    try:
        deps = yaml.safe_load(Path(dvc_yaml).read_text())["stages"][stage].get("deps") or []
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        deps = []
    return {"stage": stage, "note": STAGE_INPUTS_NOTE, "deps": {str(d): dvc_md5(d) for d in deps}}
