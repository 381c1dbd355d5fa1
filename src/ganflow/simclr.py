"""A label-free feature space: a small convnet trained by contrastive learning on the prepared images.

Recipe (SimCLR: Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework for Contrastive Learning
of Visual Representations", ICML): two random views of every image in a batch (random resized crop,
horizontal flip, colour jitter: brightness and contrast, plus saturation on RGB), a projection MLP
on top of the encoder, and the NT-Xent loss (temperature-scaled cross-entropy that picks each view's
partner among the 2B − 1 others). As in the paper, the features used downstream are the encoder's
output before the projection head. Scaled down for 28–128 px and a CPU budget: a 4-block convnet (stride-2 stem),
Adam with a one-cycle schedule instead of LARS, and no blur augmentation (so that the space stays
sensitive to blur, one of the degradations it is validated on).

The encoder is stored inside models/evaluator.pt (key "encoder"), beside or instead of the classifier.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganflow import GanflowError, checkpoint, progress
from ganflow.pixels import to_float

if TYPE_CHECKING:
    from ganflow.config import EvaluatorConfig

CROP_SCALE = (0.35, 1.0)  # area share of the random resized crop (SimCLR: 0.08–1 on 224 px ImageNet)
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio (as SimCLR / torchvision)
JITTER = 0.4  # brightness / contrast / saturation strength (SimCLR's colour jitter: 0.8 s with s = 0.5)
JITTER_P = 0.8  # share of views that are colour-jittered (SimCLR: 0.8)


class Encoder(nn.Module):
    """uint8 N×C×H×W -> N×feature_dim features (global average pool of 4 conv blocks); the projection
    head is used in training only."""

    def __init__(self, channels: int, width: int = 32, proj_dim: int = 64):
        super().__init__()
        self.arch = dict(channels=channels, width=width, proj_dim=proj_dim)

        def block(cin, cout, pool=True):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                    *([nn.MaxPool2d(2)] if pool else [])]

        w = width
        # a stride-2 stem halves the side first: half the CPU time of a stride-1 one at equal quality here
        self.body = nn.Sequential(nn.Conv2d(channels, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                  *block(w, 2 * w), *block(2 * w, 4 * w), *block(4 * w, 4 * w, False),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = 4 * w
        self.head = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(), nn.Linear(4 * w, proj_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """float images in [-1, 1] -> features."""
        return self.body(x)

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.features(to_float(x_uint8))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view of each float image in [-1, 1]: resized crop + flip (one affine grid sample),
    then colour jitter on JITTER_P of the views."""
    n, c, h, w = x.shape
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u(n)
    log_r = math.log(CROP_RATIO[0]) + (math.log(CROP_RATIO[1]) - math.log(CROP_RATIO[0])) * u(n)
    sx = (area * log_r.exp()).sqrt().clamp(max=1)
    sy = (area / log_r.exp()).sqrt().clamp(max=1)
    tx, ty = (1 - sx) * (2 * u(n) - 1), (1 - sy) * (2 * u(n) - 1)
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta.to(x.device), [n, c, h, w], align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    on = (u(n, 1, 1, 1) < JITTER_P).to(x.device)
    v01 = (v + 1) / 2
    b = (1 + JITTER * (2 * u(n, 1, 1, 1) - 1)).to(x.device)
    k = (1 + JITTER * (2 * u(n, 1, 1, 1) - 1)).to(x.device)
    j = v01 * b
    mean = j.mean(dim=(1, 2, 3), keepdim=True)
    j = (j - mean) * k + mean
    if c == 3:
        s = (1 + JITTER * (2 * u(n, 1, 1, 1) - 1)).to(x.device)
        gray = (0.299 * j[:, :1] + 0.587 * j[:, 1:2] + 0.114 * j[:, 2:]).expand_as(j)
        j = (j - gray) * s + gray
    return torch.where(on, j.clamp(0, 1), v01) * 2 - 1


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two batches of projections (row i of z1 and of z2: one image's views)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


@contextmanager
def one_cpu_thread(device: torch.device | str):
    """torch's intra-op threads set to 1 on the CPU for the block. The encoder's convolutions are small
    (28 px, 16–64 channels): a second thread gains little on a quiet 2-core machine, and on a busy one its
    OpenMP spin-waits cost more than they give (8 epochs on mnist-5k at load 6: 150 s wall / 83 s CPU with
    2 threads, 18 s / 13 s with 1)."""
    before = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(images: np.ndarray, cfg: EvaluatorConfig, gen: torch.Generator, order: torch.Tensor | None = None,
          device: torch.device | str = "cpu") -> tuple[Encoder, float]:
    """The encoder trained with evaluator.simclr_* on images[order] (all when None), in eval mode, and
    its mean loss over the last epoch, on one CPU thread (one_cpu_thread). Weights from torch's global
    RNG; batches and views from `gen`."""
    with one_cpu_thread(device):
        return _train(images, cfg, gen, order, device)


def _train(images: np.ndarray, cfg: EvaluatorConfig, gen: torch.Generator, order: torch.Tensor | None,
           device: torch.device | str) -> tuple[Encoder, float]:
    tr = torch.arange(len(images)) if order is None else order
    bs = min(cfg.simclr_batch_size, len(tr))
    if bs < 2:
        raise GanflowError(f"evaluator.simclr_batch_size: contrastive training needs at least 2 images, got {len(tr)}")
    x = to_float(torch.from_numpy(images[tr.numpy()]).to(device))
    model = Encoder(images.shape[1], cfg.simclr_width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.simclr_lr, weight_decay=1e-6)
    per_epoch = len(tr) // bs  # full batches only: every batch has the same number of negatives
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.simclr_lr, total_steps=cfg.simclr_epochs * per_epoch)
    last = []
    model.train()
    with progress.bar(cfg.simclr_epochs * per_epoch, "simclr", "step") as bar:
        for epoch in range(cfg.simclr_epochs):
            perm = torch.randperm(len(tr), generator=gen)
            last = []
            for i in range(per_epoch):
                xb = x[perm[i * bs:(i + 1) * bs].to(device)]
                z1 = model.head(model.features(augment(xb, gen)))
                z2 = model.head(model.features(augment(xb, gen)))
                loss = nt_xent(z1, z2, cfg.simclr_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                last.append(loss.item())
                bar.set_postfix(loss=f"{last[-1]:.3f}")
    return model.eval(), float(np.mean(last))


def state(model: Encoder, loss: float) -> dict:
    """What models/evaluator.pt keeps of the encoder (under "encoder")."""
    return {"arch": model.arch, "state_dict": model.state_dict(), "loss": loss}


def load(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """The encoder kept in an evaluator file; one line when the file has none."""
    from ganflow.evaluator import FORMAT

    obj = checkpoint.load(path, FORMAT, map_location=device)
    if "encoder" not in obj:
        raise GanflowError(f"{path}: holds no label-free encoder (evaluator.space is classifier); rerun fit_evaluator "
                           "with evaluator.space: both or simclr")
    model = Encoder(**obj["encoder"]["arch"])
    model.load_state_dict(obj["encoder"]["state_dict"])
    return model.to(device).eval()


def spaces_to_fit(space: str, labelled: bool, where: str | Path) -> list[str]:
    """evaluator.space resolved against the data: auto is the classifier on labelled data, else simclr."""
    if space == "auto":
        return ["classifier"] if labelled else ["simclr"]
    if space in ("classifier", "both") and not labelled:
        raise GanflowError(f"evaluator.space is {space}, but {where} has no labels (a flat folder): use auto or simclr")
    return ["classifier", "simclr"] if space == "both" else [space]


MIN_HELDOUT = 6  # the held-out scores (memorization, train/held-out FID) are k-NN based, k = 5


def check_split(n: int, holdout: float, where: str | Path) -> None:
    """Enough images for the evaluator's held-out split."""
    from ganflow.evaluator import holdout_size

    held = holdout_size(n, holdout)
    if held < MIN_HELDOUT or n - held < MIN_HELDOUT:
        raise GanflowError(f"{where}: {n} images; evaluator.holdout {holdout} splits them {n - held} train / {held} held-out, "
                           f"and the scores need at least {MIN_HELDOUT} on each side: add images or change evaluator.holdout")
