"""Seed -> images. Image i of a run with seed s depends on (s, i) only, bit for bit:
- its latent comes from its own RNG seeded with (s, i);
- the net runs in eval mode (no batch statistics);
- the net always runs on aligned blocks of BLOCK latents (images k·BLOCK … k·BLOCK+BLOCK-1), because
  matrix kernels round differently for different batch shapes: a batch of 500 and a batch of 7 gave
  pixels that differed by one level. The batch size only sets how many blocks are held at once."""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ganflow import GanflowError, clusters, progress
from ganflow.io import atomic_dir, atomic_path, png_bytes, to_pil
from ganflow.io import grid as make_grid
from ganflow.pixels import to_uint8

BLOCK = 64


def latent(seed: int, index: int, z_dim: int) -> torch.Tensor:
    # numpy's SeedSequence takes the pair (seed, index) whole; torch's CPU generator would keep only
    # the low 32 bits of a combined seed, so seeds s and s + 2**32 would give the same images
    return torch.from_numpy(np.random.default_rng([seed, index]).standard_normal(z_dim, dtype=np.float32))


def latents(seed: int, start: int, stop: int, z_dim: int) -> torch.Tensor:
    return torch.stack([latent(seed, i, z_dim) for i in range(start, stop)])


def labels(G: torch.nn.Module, classes: list[int] | None, start: int, stop: int, seed: int = 0) -> torch.Tensor | None:
    """Class of images start..stop-1 of G (`drawn_classes` with G's class count and cluster shares)."""
    return drawn_classes(G.cfg.n_classes, getattr(G, "class_shares", None), classes, start, stop, seed)


def drawn_classes(n: int, shares: list[float] | None, classes: list[int] | None, start: int, stop: int, seed: int = 0) -> torch.Tensor | None:
    """Class of images start..stop-1 of a generator of n classes: image i draws classes[i % len(classes)]
    (all classes when None). A self-conditioned G (train.clusters: its clusters' `shares`) draws its clusters
    in their shares of the data when classes is None."""
    if not n:
        if classes:
            raise GanflowError("sample.classes is set, but the generator is not class-conditional (train.conditional)")
        return None
    if shares is not None and not classes:
        return clusters.draw(shares, seed, start, stop)
    classes = classes or list(range(n))
    if max(classes) >= n:
        raise GanflowError(f"sample.classes has class {max(classes)}, but the generator knows {n} classes (0-{n - 1})")
    return torch.tensor([classes[i % len(classes)] for i in range(start, stop)])


@torch.no_grad()
def generate(
    G: torch.nn.Module, seed: int, start: int, stop: int, device: torch.device | str = "cpu", classes: list[int] | None = None
) -> torch.Tensor:
    """uint8 images start..stop-1 of the run with `seed` (N×C×H×W, on the CPU)."""
    first = start - start % BLOCK
    out = []
    for b in range(first, stop, BLOCK):
        z = latents(seed, b, b + BLOCK, G.cfg.z_dim).to(device)
        y = labels(G, classes, b, b + BLOCK, seed)
        out.append(to_uint8(G(z, None if y is None else y.to(device))).cpu())
    return torch.cat(out)[start - first : stop - first]


@torch.no_grad()
def class_grid(G: torch.nn.Module, seed: int, device="cpu", classes: list[int] | None = None, per_row: int = 10) -> torch.Tensor:
    """Conditional G: one row per class (at most 10), the same latents 0..per_row-1 in every row.
    Unconditional or self-conditioned G (unless classes are asked for): the first 100 samples."""
    if not G.cfg.n_classes or (getattr(G, "class_shares", None) is not None and not classes):
        return generate(G, seed, 0, 100, device)
    rows = (classes or list(range(G.cfg.n_classes)))[:10]
    z = latents(seed, 0, per_row, G.cfg.z_dim).repeat(len(rows), 1).to(device)
    y = torch.tensor(rows).repeat_interleave(per_row).to(device)
    return to_uint8(G(z, y)).cpu()


def grid_columns(n: int) -> int:
    """Columns of a full, square-ish grid of n images: the smallest divisor of n that is at least √n
    (64 -> 8 × 8, 60 -> 10 × 6, 7 -> one row of 7), so no row is left partly empty."""
    return next(c for c in range(max(1, int(np.ceil(np.sqrt(n)))), n + 1) if n % c == 0)


def batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges of about batch_size images, aligned to BLOCK so no block is computed twice."""
    step = max(BLOCK, batch_size - batch_size % BLOCK)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def check_disk(G: torch.nn.Module, out_dir: Path, n: int) -> None:
    """Refuse before writing anything when n PNGs would not fit (an upper estimate: raw pixels + PNG overhead)."""
    need = n * (G.cfg.channels * G.cfg.resolution**2 + 100)
    parent = next(p for p in (out_dir.resolve(), *out_dir.resolve().parents) if p.exists())
    free = shutil.disk_usage(parent).free
    if need > free:
        raise GanflowError(f"sample.n {n:,}: up to {need / 1e9:.2f} GB of PNGs, but only {free / 1e9:.2f} GB free at {parent}")


def write_samples(
    G: torch.nn.Module,
    out_dir: str | Path,
    n: int,
    seed: int,
    batch_size: int,
    device="cpu",
    classes: list[int] | None = None,
    workers: int = 2,
    grid: str | Path | None = None,
) -> float:
    """Write n PNGs (000000.png …) into out_dir, and with `grid` a PNG of `class_grid` there, streaming:
    one batch in memory at a time, PNG encoding spread over `workers` threads (PIL's encoder releases
    the GIL). The folder and the grid change together or not at all. Return seconds per 1,000 images."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    def save(item):
        i, img = item
        to_pil(img).save(tmp / f"{i:06d}.png", compress_level=1)

    check_disk(G, Path(out_dir), n)
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp, (atomic_path(grid) if grid else nullcontext()) as tmp_grid, \
            ThreadPoolExecutor(max_workers=workers) as pool, \
            progress.bar(n, "sample", "img") as bar:
        for start, stop in batches(n, batch_size):
            images = generate(G, seed, start, stop, device, classes)
            list(pool.map(save, zip(range(start, stop), images)))  # wait: bounds memory to one batch
            bar.update(stop - start)
        if grid:
            tmp_grid.write_bytes(png_bytes(make_grid(class_grid(G, seed, device, classes), nrow=10)))
    return (time.perf_counter() - t0) / n * 1000


class PngFolder(torch.utils.data.Dataset):
    """The PNGs of a samples folder (*.png, any case), in name order, read lazily as uint8 C×H×W tensors.

    Only regular files are read (a FIFO named x.png would block forever); anything else in the folder
    is counted and reported once. Every 8-bit mode (P, LA, RGBA, 1, ...) is converted to the prepared
    data's L or RGB, as prepare converts its images (a palette PNG is scored by its colours, not its
    indices). A file that does not decode, has more than 8 bits per channel, or whose C×H×W differs
    from `shape` (default: the first file's) stops the reading with an error naming it; its size is
    checked before its pixels are decoded, so a decompression bomb is refused unread."""

    def __init__(self, folder: str | Path, shape: tuple[int, int, int] | None = None):
        import logging

        entries = sorted(p for p in Path(folder).iterdir() if not p.name.startswith(".")) if Path(folder).is_dir() else []
        self.paths = [p for p in entries if p.suffix.lower() == ".png" and p.is_file()]
        if not self.paths:
            raise GanflowError(f"{folder}: no PNG samples in it")
        keep = set(self.paths)  # once: a set built per entry made listing 50,000 files take minutes
        skipped = [p.name for p in entries if p not in keep]
        if skipped:
            logging.getLogger("ganflow.sampling").warning(
                "%s: skipped %d entr%s that %s not a regular PNG file (%s)", folder, len(skipped),
                "y" if len(skipped) == 1 else "ies", "is" if len(skipped) == 1 else "are", ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
        self.shape = tuple(shape) if shape else None
        self.shape = tuple(self[0].shape)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        import warnings

        from PIL import Image

        path = self.paths[i]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F") or len(im.getbands()) > 4:
                        raise GanflowError(f"{path}: {im.mode} pixels (more than 8 bits), expected 8-bit")
                    size = (im.height, im.width)
                    if self.shape and size != self.shape[1:]:
                        raise GanflowError(f"{path}: {im.height}×{im.width} pixels, expected "
                                           f"{'×'.join(map(str, self.shape[1:]))} like the other samples and the prepared data")
                    grey = self.shape[0] == 1 if self.shape else im.mode in ("1", "L", "LA", "La")
                    a = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            # PIL: truncated, not a PNG, bad chunk, more pixels than its bomb limit
            raise GanflowError(f"{path}: unreadable PNG ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
        return torch.from_numpy(a[None].copy() if a.ndim == 2 else a.transpose(2, 0, 1).copy())
