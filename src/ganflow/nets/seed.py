"""`seed`: the original design. A dense generator (noise -> 128 -> 128 -> image, leaky ReLU)
and a convolutional discriminator (64 then 128 filters, 5×5, stride 2, then a dense output)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ganflow.nets import ARCHS, NetConfig, check_shape, d_norms, sn


class DenseGenerator(nn.Module):
    def __init__(self, cfg: NetConfig, hidden: int = 128):
        super().__init__()
        self.cfg = cfg
        c, r = cfg.channels, cfg.resolution
        self.net = nn.Sequential(
            nn.Linear(cfg.z_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, c * r * r), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_shape(z, [None, self.cfg.z_dim], "seed G input z")
        return self.net(z).view(-1, self.cfg.channels, self.cfg.resolution, self.cfg.resolution)


class ConvDiscriminator(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        side = math.ceil(math.ceil(cfg.resolution / 2) / 2)  # after two stride-2 convs with padding 2
        s, bn = d_norms(cfg)
        self.net = nn.Sequential(
            sn(nn.Conv2d(cfg.channels, 64, 5, 2, 2), s), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(64, 128, 5, 2, 2), s), *([nn.BatchNorm2d(128)] if bn else []), nn.LeakyReLU(0.2),
            nn.Flatten(), sn(nn.Linear(128 * side * side, 1), s),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        r = self.cfg.resolution
        check_shape(x, [None, self.cfg.channels, r, r], "seed D input")
        return self.net(x).squeeze(1)


@ARCHS.register("seed")
def build(cfg: NetConfig) -> tuple[nn.Module, nn.Module]:
    if cfg.n_classes:
        raise ValueError("arch seed (the original design) is unconditional")
    return DenseGenerator(cfg), ConvDiscriminator(cfg)


build.takes_classes = False
