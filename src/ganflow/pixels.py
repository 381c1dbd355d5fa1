"""The one pixel convention: images are stored as uint8 in [0, 255] and seen by the nets as
floats in [-1, 1]. These two functions are the only places that convert between them."""

from __future__ import annotations

import torch


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (a new tensor)."""
    if x.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 pixels, got {x.dtype}")
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded and clamped."""
    return x.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
