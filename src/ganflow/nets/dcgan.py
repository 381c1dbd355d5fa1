"""`dcgan`: transposed-conv generator with batch norm, strided-conv discriminator (Radford et al.),
resolution-generic: 7×7 -> 28, 4×4 -> 32, 64 or 128. Class-conditional when n_classes > 0
(conditional batch norm in G, projection head in D)."""

from __future__ import annotations

import torch
from torch import nn

from ganflow.nets import ARCHS, CondBatchNorm, NetConfig, Projection, check_shape, d_norms, like_weight, sn, up_plan


class Generator(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        base, k = up_plan(cfg.resolution)
        ch = cfg.width * 2 ** (k - 1)
        self.base, self.ch = base, ch
        self.stem = nn.Linear(cfg.z_dim, ch * base * base, bias=False)
        self.stem_bn = CondBatchNorm(ch, cfg.n_classes)
        self.ups = nn.ModuleList()
        self.bns = nn.ModuleList()
        for _ in range(k - 1):
            self.ups.append(nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False))
            self.bns.append(CondBatchNorm(ch // 2, cfg.n_classes))
            ch //= 2
        self.out = nn.ConvTranspose2d(ch, cfg.channels, 4, 2, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_shape(z, [None, self.cfg.z_dim], "dcgan G input z")
        h = like_weight(self.stem(z).view(-1, self.ch, self.base, self.base), self.ups[0].weight)
        h = torch.relu(self.stem_bn(h, y))
        for up, bn in zip(self.ups, self.bns):
            h = torch.relu(bn(up(h), y))
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        base, k = up_plan(cfg.resolution)
        (s, bn), ch = d_norms(cfg), cfg.disc_width
        layers = [sn(nn.Conv2d(cfg.channels, ch, 4, 2, 1), s), nn.LeakyReLU(0.2)]
        for _ in range(k - 1):
            layers += [sn(nn.Conv2d(ch, ch * 2, 4, 2, 1), s)] + ([nn.BatchNorm2d(ch * 2)] if bn else []) + [nn.LeakyReLU(0.2)]
            ch *= 2
        self.body = nn.Sequential(*layers)
        self.head = Projection(ch * base * base, cfg.n_classes, s, channels=ch)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        r = self.cfg.resolution
        check_shape(x, [None, self.cfg.channels, r, r], "dcgan D input")
        return self.head(self.body(x), y)


@ARCHS.register("dcgan")
def build(cfg: NetConfig) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg), Discriminator(cfg)
