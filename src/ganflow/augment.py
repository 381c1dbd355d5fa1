"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to every image D sees,
real and fake alike, so D cannot memorise a small data set. Policies: color, translation, cutout.
Randomness comes from torch's global RNG, which checkpoints save and restore."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ganflow.registry import Registry

# its names are also declared torch-free in config.AUGMENT_NAMES (a test checks the two agree)
AUGMENTS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("augmentation")


def _uniform(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * (hi - lo) + lo


@AUGMENTS.register("color")
def color(x: torch.Tensor) -> torch.Tensor:
    x = x + _uniform(x, -0.5, 0.5)  # brightness
    if x.shape[1] > 1:  # saturation (no-op on grayscale)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * _uniform(x, 0.0, 2.0) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)  # contrast
    return (x - m) * _uniform(x, 0.5, 1.5) + m


@AUGMENTS.register("translation")
def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio·size pixels, filling with 0, as the paper does."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    iy = (torch.arange(h, device=x.device).view(1, h, 1) + dy + sh).expand(n, h, w)
    ix = (torch.arange(w, device=x.device).view(1, 1, w) + dx + sw).expand(n, h, w)
    padded = F.pad(x, [sw, sw, sh, sh], value=0.0)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, iy, ix].permute(0, 3, 1, 2)


@AUGMENTS.register("cutout")
def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of side ratio·size at a random place in each image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys - cy).abs() <= ch // 2) & ((xs - cx).abs() <= cw // 2)
    return torch.where(inside.unsqueeze(1), torch.zeros_like(x), x)


def wrap(D: Callable, policies: list[str]) -> Callable:
    """D(x, y) that sees every input through the policies, in order (D itself when there are none)."""
    if not policies:
        return D
    fns = [AUGMENTS.get(p) for p in policies]

    def augmented(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        for fn in fns:
            x = fn(x)
        return D(x, y)

    return augmented
