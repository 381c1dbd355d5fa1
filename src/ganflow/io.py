"""Atomic file writes (temp file + os.replace) and image grids.

A killed process leaves either the old file or the new one, never half of one; its temp files
(`.<name>.<pid>.<random>.tmp`, beside the target, ignored by git) are removed by the next write of that
target once their writer is gone (two experiments may write one shared cache file at the same time).
Files get the permissions any other tool would give them (0666 / 0777 less the umask), and a
failed write (disk full, file too large, read-only) is one GanflowError naming the file.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image
from torchvision.utils import make_grid

from ganflow import GanflowError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def _remove_stale(path: Path) -> None:
    """Temp files and folders that a killed writer of `path` left beside it; a live writer's stay."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid = stale.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _temp_beside(path: Path, make: Callable[..., Any]) -> Path:
    """A new temp file or folder (`make`: mkstemp or mkdtemp) beside `path`, named for this process."""
    with _write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        made = make(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    if isinstance(made, tuple):  # mkstemp: (fd, name)
        os.close(made[0])
        made = made[1]
    return Path(made)


@contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """An OSError while writing `path` (ENOSPC, EFBIG, EROFS, EACCES ...) -> one line naming it."""
    try:
        yield
    except OSError as err:
        raise GanflowError(f"{path}: cannot write ({err.strerror or err})") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    tmp = _temp_beside(path, tempfile.mkstemp)
    try:
        with _write_errors(path):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    """`obj` as JSON, atomically. A NaN or infinite float (a score that could not be computed) is written as
    null, with a warning naming its key: a bare NaN is not JSON, and `dvc metrics show` could not read the file."""
    bad: list[str] = []

    def finite(o: Any, key: str) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            bad.append(key)
            return None
        if isinstance(o, dict):
            return {k: finite(v, f"{key}.{k}" if key else str(k)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [finite(v, f"{key}[{i}]") for i, v in enumerate(o)]
        return o

    obj = finite(obj, "")
    if bad:
        logging.getLogger("ganflow.io").warning("%s: %s not finite, written as null", path, ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def torch_save(obj: Any, path: str | Path) -> None:
    """torch.save, atomically, of `obj` with its strings interned: pickle writes a string it has seen again
    as a reference to it by identity, so the same contents built otherwise (a resumed run's state, read back
    from disk) would give other bytes."""
    buf = io.BytesIO()
    torch.save(_interned(obj), buf)
    write_bytes(path, buf.getvalue())


def _interned(obj: Any) -> Any:
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):  # OrderedDict state dicts keep their type and _metadata (module versions)
        out = (OrderedDict if isinstance(obj, OrderedDict) else dict)((_interned(k), _interned(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = _interned(obj._metadata)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_interned(v) for v in obj)
    return obj


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it takes the place of `path`."""
    path = Path(path)
    tmp = _temp_beside(path, tempfile.mkdtemp)
    try:
        with _write_errors(path):
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            old = path.with_name(f".{path.name}.old.tmp")
            shutil.rmtree(old, ignore_errors=True)
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """uint8 N×C×H×W -> one uint8 C×H×W grid with a 2-pixel black border."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"grid expects uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
    return make_grid(images, nrow=nrow, padding=2, pad_value=0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 C×H×W (C = 1 or 3) -> PIL image."""
    arr = image.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def png_bytes(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int) -> torch.Tensor:
    g = grid(images.cpu(), nrow)
    write_bytes(path, png_bytes(g))
    return g
