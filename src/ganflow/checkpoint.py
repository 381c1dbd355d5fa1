"""Checkpoints: plain dicts of tensors and config, written atomically, loaded with weights_only=True."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ganflow import GanflowError
from ganflow.io import torch_save

FORMAT = "ganflow-checkpoint-v1"
GENERATOR_FORMAT = "ganflow-generator-v1"


def save(obj: dict, path: str | Path) -> None:
    torch_save(obj, path)


def load(path: str | Path, expect_format: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ganflow file safely; any other file, truncated file or pickle payload is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise GanflowError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise GanflowError(f"{path}: unreadable or truncated (not a PyTorch zip file)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        why = next((ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln), "not plain tensors and config")
        raise GanflowError(f"{path}: refused by weights_only loading ({why})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GanflowError(f"{path}: unreadable or truncated ({first})") from None
    if not isinstance(obj, dict) or obj.get("format") != expect_format:
        raise GanflowError(f"{path}: not a {expect_format} file (written by another program or version)")
    return obj
