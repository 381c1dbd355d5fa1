"""`sngan`: ResNet generator and discriminator of Miyato et al. 2018 (spectral norm on every
layer of D, meant for the hinge loss), resolution-generic. Class-conditional when n_classes > 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganflow.nets import ARCHS, CondBatchNorm, NetConfig, Projection, check_shape, like_weight, nhwc_grad, sn, up_plan


class UpBlock(nn.Module):
    # BN-ReLU-upsample-conv3-BN-ReLU-conv3, plus an upsampled 1×1 shortcut
    def __init__(self, cin: int, cout: int, n_classes: int):
        super().__init__()
        self.bn1, self.bn2 = CondBatchNorm(cin, n_classes), CondBatchNorm(cout, n_classes)
        self.c1, self.c2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x, y=None):
        h = F.interpolate(torch.relu(self.bn1(x, y)), scale_factor=2)
        h = self.c2(torch.relu(self.bn2(self.c1(h), y)))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class DownBlock(nn.Module):
    # (ReLU)-conv3-ReLU-conv3-avgpool, plus a 1×1 avgpooled shortcut; the first block skips the leading ReLU
    def __init__(self, cin: int, cout: int, s: bool, first: bool):
        super().__init__()
        self.first = first
        self.c1, self.c2 = sn(nn.Conv2d(cin, cout, 3, 1, 1), s), sn(nn.Conv2d(cout, cout, 3, 1, 1), s)
        self.skip = sn(nn.Conv2d(cin, cout, 1), s)

    def forward(self, x):
        h = x if self.first else torch.relu(x)
        h = F.avg_pool2d(self.c2(torch.relu(self.c1(h))), 2)
        skip = self.skip(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.skip(x), 2)
        return h + skip


class Generator(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.base, k = up_plan(cfg.resolution)
        self.ch = ch = 2 * cfg.width
        self.stem = nn.Linear(cfg.z_dim, ch * self.base * self.base)
        self.blocks = nn.ModuleList(UpBlock(ch, ch, cfg.n_classes) for _ in range(k))
        self.bn = nn.BatchNorm2d(ch)
        self.out = nn.Conv2d(ch, cfg.channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_shape(z, [None, self.cfg.z_dim], "sngan G input z")
        h = like_weight(self.stem(z).view(-1, self.ch, self.base, self.base), self.out.weight)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.out(torch.relu(self.bn(h))))


class Discriminator(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        _, k = up_plan(cfg.resolution)
        ch, s = 2 * cfg.disc_width, True  # spectral norm is what makes this SNGAN: always on
        self.blocks = nn.Sequential(*(DownBlock(cfg.channels if i == 0 else ch, ch, s, i == 0) for i in range(k)))
        self.head = Projection(ch, cfg.n_classes, s)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        r = self.cfg.resolution
        check_shape(x, [None, self.cfg.channels, r, r], "sngan D input")
        h = nhwc_grad(torch.relu(self.blocks(x))).sum(dim=(2, 3))  # global sum pooling
        return self.head(h, y)


@ARCHS.register("sngan")
def build(cfg: NetConfig) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg), Discriminator(cfg)
