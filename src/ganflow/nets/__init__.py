"""Generators and discriminators, registered by architecture name: a new architecture is a new
module in this package, named after it, that decorates its builder with `@ARCHS.register(name)`
(config.arch_names() reads the names from the module names, so `ganflow check` needs no torch).

A builder takes a NetConfig and returns (G, D):
  G(z: N×z_dim [, y: N]) -> N×C×H×W in [-1, 1]
  D(x: N×C×H×W [, y: N]) -> N logits
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ganflow.registry import Registry


@dataclass(frozen=True)
class NetConfig:
    resolution: int  # 28 | 32 | 64 | 128
    channels: int  # 1 | 3
    z_dim: int
    width: int  # base channel width (of G, and of D unless d_width is set)
    d_norm: str = "spectral"  # D's normalisation: spectral | batch | none
    n_classes: int = 0  # > 0: class-conditional G and D
    d_width: int = 0  # D's base channel width (0: width)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def disc_width(self) -> int:
        return self.d_width or self.width

    def __post_init__(self):
        ints = {"resolution": self.resolution, "channels": self.channels, "z_dim": self.z_dim, "width": self.width,
                "n_classes": self.n_classes, "d_width": self.d_width}
        for name, v in ints.items():
            zero_ok = name in ("n_classes", "d_width")
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if zero_ok else 1):
                raise ValueError(f"net {name} must be a {'non-negative' if zero_ok else 'positive'} integer, got {v!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"net channels must be 1 or 3, got {self.channels}")
        up_plan(self.resolution)
        d_norms(self)


# every module of this package registers its architecture here when the registry is first used
ARCHS: Registry[Callable[[NetConfig], tuple[nn.Module, nn.Module]]] = Registry("architecture", discover=__name__)


def build(arch: str, cfg: NetConfig) -> tuple[nn.Module, nn.Module]:
    return ARCHS.get(arch)(cfg)


def takes_classes(arch: str) -> bool:
    """Whether the architecture builds class-conditional nets (n_classes > 0)."""
    return getattr(ARCHS.get(arch), "takes_classes", True)


def parameter_count(arch: str, cfg: NetConfig) -> int:
    """G's parameter count, found without allocating any memory (built on the meta device)."""
    with torch.device("meta"):
        G, _ = build(arch, cfg)
    return sum(p.numel() for p in G.parameters())


def d_norms(cfg: NetConfig) -> tuple[bool, bool]:
    """(spectral norm on D's layers?, batch norm in D's hidden layers?) from cfg.d_norm."""
    if cfg.d_norm not in ("spectral", "batch", "none"):
        raise ValueError(f"d_norm must be spectral, batch or none, got {cfg.d_norm!r}")
    return cfg.d_norm == "spectral", cfg.d_norm == "batch"


def sn(module: nn.Module, enabled: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(module) if enabled else module


def check_shape(x: torch.Tensor, shape: list[int | None], what: str) -> None:
    """Raise if `x` is not of `shape` (None matches any size)."""
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "×".join("N" if s is None else str(s) for s in shape)
        raise ValueError(f"{what}: expected {want}, got {'×'.join(map(str, x.shape))}")


class CondBatchNorm(nn.Module):
    """Batch norm whose scale and shift come from the class (conditional BN, de Vries et al. 2017);
    plain affine batch norm when n_classes is 0. Works on N×C and N×C×H×W."""

    def __init__(self, features: int, n_classes: int):
        super().__init__()
        self.n_classes = n_classes
        self.bn = nn.BatchNorm2d(features, affine=n_classes == 0)
        if n_classes:
            self.embed = nn.Embedding(n_classes, 2 * features)
            nn.init.ones_(self.embed.weight[:, :features])
            nn.init.zeros_(self.embed.weight[:, features:])

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        flat = x.dim() == 2
        h = self.bn(x[:, :, None, None] if flat else x)
        if self.n_classes:
            if y is None:
                raise ValueError("a class-conditional generator needs class labels y")
            # in h's dtype: a float32 scale would promote a bf16-autocast G's activations to float32 (slower
            # steps); mul and add, as bf16's addcmul is 3x slower on a CPU (bench/step_levers.py)
            gamma, beta = self.embed(y).to(h.dtype)[:, :, None, None].chunk(2, 1)
            h = gamma * h + beta
        return h.flatten(1) if flat else h


def is_nhwc(t: torch.Tensor) -> bool:
    """Whether a 4-d tensor is laid out channels-last (NHWC), and not NCHW too (as a one-channel one is)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


# Under train.channels_last every activation must meet its gradient in its own layout: an elementwise backward
# (ReLU's, LeakyReLU's) over an NHWC activation and an NCHW gradient runs ~18x slower on a CPU. The two places
# where one net's layouts would differ: a reshaped stem (NCHW), and a head that flattens or sums an NHWC map
# (its gradient comes back NCHW, or broadcast). Both mended, NHWC runs the bf16 step of the labelled default
# 1.29x and of clustered StackedMNIST 1.36x faster than NCHW (1.03x and 0.99x before) on an Intel Xeon with
# AMX (bench/layout.py, docs/performance.md).
def like_weight(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """h, in NHWC when the layer it feeds has NHWC weights (a net moved to channels_last)."""
    return h.contiguous(memory_format=torch.channels_last) if is_nhwc(weight) else h


class _NHWCGrad(torch.autograd.Function):
    """The identity, whose backward hands its gradient on in NHWC (differentiable again, for R1)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous(memory_format=torch.channels_last)


def nhwc_grad(h: torch.Tensor) -> torch.Tensor:
    """h itself; if h is NHWC, its gradient comes back NHWC too, whatever the ops after it hand back."""
    return _NHWCGrad.apply(h) if h.requires_grad and is_nhwc(h) else h


class Projection(nn.Module):
    """Projection discriminator head (Miyato & Koyama 2018): linear(h) + <embed(y), pool(h)>.
    h is N×F, or an N×C×H×W feature map: the linear term then reads it flattened (F = C·H·W) and the
    class term its sum over positions (C wide), as in the paper: a class is one direction in channel
    space, not a template per position."""

    def __init__(self, features: int, n_classes: int, spectral_norm: bool, channels: int | None = None):
        super().__init__()
        self.linear = sn(nn.Linear(features, 1), spectral_norm)
        self.embed = sn(nn.Embedding(n_classes, channels or features), spectral_norm) if n_classes else None

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = nhwc_grad(h)
        out = self.linear(h.flatten(1)).squeeze(1)
        if self.embed is not None:
            if y is None:
                raise ValueError("a class-conditional discriminator needs class labels y")
            out = out + (self.embed(y) * (h.sum((2, 3)) if h.dim() == 4 else h)).sum(1)
        return out


def up_plan(resolution: int) -> tuple[int, int]:
    """(base side, number of ×2 upsamplings) so that base·2^k == resolution (config.UP_PLANS, torch-free, is
    the same table: tests/test_config.py checks the G sizes it gives against these nets)."""
    plans = {28: (7, 2), 32: (4, 3), 64: (4, 4), 128: (4, 5)}
    if resolution not in plans:
        raise ValueError(f"resolution must be one of {sorted(plans)}, got {resolution}")
    return plans[resolution]
