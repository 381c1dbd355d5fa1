"""Generator files (models/generator.pt): loading them, and the generator as MLflow serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ganflow import GanflowError, checkpoint
from ganflow.nets import NetConfig, build, parameter_count


MAX_PARAMETERS = 1 << 28  # 1 GiB of float32 weights: far above any generator ganflow trains


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """-> (generator in eval mode, the file's dict). A file whose net config is invalid, names an
    unknown architecture, asks for an absurd size (checked before anything is allocated) or whose
    weights do not fit that net is one GanflowError naming the file."""
    obj = checkpoint.load(path, checkpoint.GENERATOR_FORMAT, map_location="cpu")
    try:
        arch, net = obj["arch"], NetConfig(**obj["net"])
        size = parameter_count(arch, net)
        if size > MAX_PARAMETERS:
            raise ValueError(f"its net ({arch}, width {net.width}) would have {size:,} parameters, over {MAX_PARAMETERS:,}")
        G, _ = build(arch, net)
        G.load_state_dict(obj["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GanflowError(f"{path}: not a usable generator ({why.strip(chr(34))})") from None
    return G.to(device).eval(), obj


class SingleInput(nn.Module):
    """The generator behind one tensor: N×z_dim latents, plus for a class-conditional generator a
    last column holding the class index. Output: N×C×H×W in [-1, 1]."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G

    def forward(self, zy: torch.Tensor) -> torch.Tensor:
        if self.G.cfg.n_classes:
            return self.G(zy[:, :-1], zy[:, -1].long())
        return self.G(zy)


def serving_model(generator: dict[str, Any]) -> tuple[nn.Module, np.ndarray]:
    """A generator file's dict (generator.pt) -> (CPU model in eval mode behind one input, an input example)."""
    net = NetConfig(**generator["net"])
    G, _ = build(generator["arch"], net)
    G.load_state_dict({k: v.cpu() for k, v in generator["state_dict"].items()})
    example = np.random.default_rng(0).standard_normal((2, net.z_dim), dtype=np.float32)
    if net.n_classes:
        example = np.concatenate([example, np.array([[0.0], [1.0]], dtype=np.float32)], axis=1)
    return SingleInput(G).eval(), example
