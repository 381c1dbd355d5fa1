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
