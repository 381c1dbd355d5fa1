"""One optimisation step of the GAN, and what it needs: the nets and optimisers, the views a step
calls (DDP, torch.compile, DiffAugment), the schedules that depend on the step (learning rates, EMA
weight, top-k count), the D+G step itself (`step`, what a CUDA graph captures) and the lazy phases
that follow it (a phase table, as stylegan2-ada's: each row a name, an interval and what it runs).

`GanStep.advance(i, stepper)` is "one step": schedule, step, then the lazy phases due. The Trainer's
loop, the benches and the tests all call it. The maths lives in ganflow.losses (which owns every
regulariser term's weight), the speed levers in ganflow.accel.
"""

from __future__ import annotations

import copy
import functools
import math
import operator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from torch.nn.utils import parametrize

from ganflow import GanflowError, augment, clusters, losses
from ganflow.accel import DeviceScalars, Levers, uncompiled
from ganflow.data import ImageSet
from ganflow.nets import NetConfig, build, takes_classes
from ganflow.pixels import to_float

if TYPE_CHECKING:
    from ganflow.config import TrainConfig

LOG_COLUMNS = ("step", "loss_D", "loss_G", "D_x", "D_G_z")  # what step() returns, after the step


class DivergenceError(GanflowError):
    pass


@dataclass(frozen=True)
class Phase:
    """A row of the optimisation order that runs outside the captured D+G step: after every `every`-th
    step, `run(gain)` with gain = every (a lazy term weighs `every` times as much, so that it counts as
    much as if it ran every step)."""

    name: str
    every: int
    run: Callable[[int], None]


def n_classes(cfg: TrainConfig, data: ImageSet) -> int:
    """The classes the nets are conditioned on: train.conditional resolved (auto: on when the data
    has labels and the arch takes classes), 0 when unconditional."""
    on = cfg.conditional
    if on == "auto":
        on = data.labels is not None and takes_classes(cfg.arch)
    elif on and data.labels is None:
        raise GanflowError("train.conditional is true, but the prepared data has no labels (use class sub-folders)")
    elif on and not takes_classes(cfg.arch):
        raise GanflowError(f"train.conditional is true, but arch {cfg.arch} is unconditional")
    return len(data.classes) if on else 0


def cluster_count(cfg: TrainConfig, data: ImageSet, source: str = "") -> int:
    """The self-conditioning clusters (train.clusters resolved; 0: none): only where the nets train without
    labels. auto: one per clusters.IMAGES_PER_CLUSTER images (from prepare.source stacked-mnist: one per
    clusters.STACKED_IMAGES_PER_CLUSTER), none for an arch without classes."""
    from ganflow.config import MAX_CLUSTERS, STACKED_SOURCE

    if n_classes(cfg, data) or cfg.clusters == 0:
        return 0
    if not takes_classes(cfg.arch):
        if cfg.clusters == "auto":
            return 0
        raise GanflowError(f"train.clusters is {cfg.clusters}, but arch {cfg.arch} takes no classes: use auto or 0")
    if cfg.clusters != "auto":
        return cfg.clusters
    per = clusters.STACKED_IMAGES_PER_CLUSTER if source == STACKED_SOURCE else clusters.IMAGES_PER_CLUSTER
    return clusters.auto_count(len(data.images), MAX_CLUSTERS, per)


class GanStep:
    def __init__(self, cfg: TrainConfig, data: ImageSet, levers: Levers, clustered: tuple[np.ndarray, int] | None = None):
        """Nets and optimisers from train.* (net weights are drawn from torch's global RNG, which the
        stage seeds), on levers.device; the whole data set is held there as uint8. `clustered`: each
        image's cluster and their count (`cluster_count`, `clusters.kmeans`), which stand in for labels."""
        self.cfg, self.levers, self.dist, self.device = cfg, levers, levers.dist, levers.device
        _, c, h, _ = data.images.shape
        if cfg.batch_size > len(data.images):
            raise GanflowError(f"train.batch_size {cfg.batch_size} is larger than the prepared data ({len(data.images)} images)")
        classes = n_classes(cfg, data)
        labels = data.labels if classes else None
        shares = None  # self-conditioning: how often G draws each cluster (`class_shares`)
        if clustered is not None:
            labels, classes = clustered
            shares = clusters.shares(labels, classes)
        self.net_cfg = NetConfig(resolution=h, channels=c, z_dim=cfg.z_dim, width=cfg.width, d_norm=cfg.d_norm,
                                 n_classes=classes, d_width=cfg.d_width or 0)
        self.G, self.D = build(cfg.arch, self.net_cfg)
        self.G.class_shares = shares  # what sampling draws a self-conditioned G's clusters from (G_ema: a copy)
        levers.place(self.G, self.D)
        self.opt_g = levers.adam(self.G.parameters(), cfg.lr_g, tuple(cfg.betas))
        self.opt_d = levers.adam(self.D.parameters(), cfg.lr_d, tuple(cfg.betas))
        self.loss = losses.get(cfg.loss, cfg.lecam, self.device, cfg.r1, cfg.r2, cfg.gamma_schedule, cfg.steps)
        # the views a step calls (DDP, compile); D as the losses see it: DiffAugment on every input
        self.G_step = levers.for_step(self.G)
        D_view = levers.for_step(self.D)
        self.D_aug = augment.wrap(D_view, cfg.augment)
        self.D_reg = augment.wrap(uncompiled(D_view), cfg.augment)  # lazy terms differentiate twice
        self.D_frozen = augment.wrap(levers.for_frozen(self.D), cfg.augment)  # D during the G step
        # EMA of G's weights (copied after DDP made all ranks equal): per-step decay from a half-life in images
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if cfg.ema > 0 else None
        self.scalars = DeviceScalars(self.device)
        self.ema_weight = self.scalars.new()  # 1 - decay, set per step (a graph replays it)
        # top-k training: how many fakes of a batch drive G's loss, set per step (None: all)
        self.keep = self.scalars.new() if cfg.topk < 1 else None
        self.images = torch.from_numpy(data.images).to(self.device)  # batches are index draws on the device
        self.labels = torch.from_numpy(labels).to(self.device) if classes else None
        # real images per step over all ranks (what EMA half-lives and epochs count), and the images D
        # sees per step (n_critic batches: what throughput counts)
        self.images_per_step = cfg.batch_size * self.dist.world_size
        self.d_images_per_step = self.images_per_step * self.loss.n_critic
        # the optimisation order after the D+G step: a new lazy regulariser is a term of the loss (or a row here)
        self.phases = [Phase("Dreg", cfg.r1_every, self.d_reg)] if self.loss.lazy_d_terms else []

    @property
    def class_shares(self) -> list[float] | None:
        """A self-conditioned G's cluster shares (None otherwise): held by G and G_ema, which sampling sees."""
        return self.G.class_shares

    @property
    def G_eval(self) -> torch.nn.Module:
        """The generator that is sampled, saved and evaluated: the EMA one when train.ema > 0."""
        return self.G_ema if self.G_ema is not None else self.G

    # -- one step: the public call -------------------------------------------------------------
    def stepper(self) -> Callable[[], torch.Tensor]:
        """`step` as the levers run it: eager, or captured as one CUDA graph at its first call (so make
        it after any resume: the graph points at the loaded weights and optimiser state)."""
        return self.levers.stepper(self.step, (self.opt_d, self.opt_g))

    def advance(self, i: int, stepper: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Step i (0-based) in full: its schedule, the D+G step (through `stepper`, default eager),
        then each phase due now that i + 1 steps are done. Returns LOG_COLUMNS[1:] on the device."""
        self.schedule(i)
        stats = (stepper or self.step)()
        for phase in self.phases:
            if (i + 1) % phase.every == 0:
                phase.run(phase.every)
        return stats

    # -- what depends on the step ----------------------------------------------------------------
    def schedule(self, i: int) -> None:
        """Set what depends on the step about to run (0-based): the learning rates (constant, then
        falling linearly towards 0 over the last train.lr_decay of the steps), the EMA's decay (from its
        half-life in images, ramped up over the first images when train.ema_rampup is on) and the top-k
        count (the whole batch times 0.99 per epoch, down to train.topk of it), and the loss's weights
        (R1/R2's γ under train.gamma_schedule). Device tensors are filled only when their value changes."""
        cfg, per_step = self.cfg, self.images_per_step
        self.loss.schedule(i)
        if cfg.lr_decay:
            start = cfg.steps * (1 - cfg.lr_decay)
            scale = min(1.0, (cfg.steps - i) / (cfg.steps - start))
            for opt, lr in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
                self.levers.set_lr(opt, lr * scale)
        if self.G_ema is not None:
            half_life = min(cfg.ema, cfg.ema_rampup * i * per_step) if cfg.ema_rampup else cfg.ema
            self.scalars.fill(self.ema_weight, 1.0 - 0.5 ** (per_step / half_life) if half_life > 0 else 1.0)
        if self.keep is not None:
            epoch = i * per_step // len(self.images)
            self.scalars.fill(self.keep, float(max(math.ceil(cfg.topk * cfg.batch_size), round(cfg.batch_size * 0.99**epoch))))

    # -- the D+G step ----------------------------------------------------------------------------
    def real_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch of real images in [-1, 1] and, for conditional nets, their labels."""
        idx = torch.randint(len(self.images), (self.cfg.batch_size,), device=self.device)
        y = self.labels[idx] if self.labels is not None else None
        return to_float(self.images[idx]).contiguous(memory_format=self.levers.memory_format), y

    def noise(self) -> torch.Tensor:
        return torch.randn(self.cfg.batch_size, self.cfg.z_dim, device=self.device)

    def step(self) -> torch.Tensor:
        """One D+G step; returns LOG_COLUMNS[1:] on the device (no host sync). The eager definition
        of a step, and the one thing a CUDA graph captures."""
        # conditional nets draw fake labels as the real batch's labels (the data's class frequencies)
        for _ in range(self.loss.n_critic):
            # Update D: push D(x) up and D(G(z)) down, as the loss defines
            real, y = self.real_batch()
            with self.levers.autocast():
                fake = self.G_step(self.noise(), y)
                with parametrize.cached():  # D's spectral norms: one power iteration per loss, not per D call
                    loss_d, logit_r, logit_f = self.loss.d_loss(self.D_aug, real, fake.detach(), y)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
        if self.loss.n_critic > 1:
            with self.levers.autocast():
                fake = self.G_step(self.noise(), y)
        # Update G: make D score G(z) as real (the last fake is reused when D steps once); D's weights
        # are frozen, so backward makes gradients for G's weights only
        with frozen(self.D), self.levers.autocast(), parametrize.cached():
            loss_g = self.loss.g_loss(self.D_frozen, fake, y, self.keep, real=real)  # rpgan pairs fakes with reals
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.update_ema()
        d_x, d_g_z = (torch.sigmoid(logit.detach().float()).mean() for logit in (logit_r, logit_f))
        return torch.stack([loss_d.detach().float(), loss_g.detach().float(), d_x, d_g_z])

    @torch.no_grad()
    def update_ema(self) -> None:
        # G_ema <- (1 - w)·G_ema + w·G; buffers (batch-norm statistics) are copied
        if self.G_ema is None:
            return
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), self.ema_weight)
        for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
            be.copy_(b)

    # -- the lazy phases -------------------------------------------------------------------------
    def d_reg(self, gain: int) -> None:
        """Dreg (Karras et al. 2020): one extra D step on the loss's lazy terms alone (R1, R2), each weighted
        by the loss and times `gain`. Eager, also between the replays of a captured step: it updates
        the same weights and optimiser state."""
        real, y = self.real_batch()
        batch = {"real": real}
        if any(term.on == "fake" for term in self.loss.lazy_d_terms):
            with torch.no_grad(), self.levers.autocast():
                batch["fake"] = self.G_step(self.noise(), y)
        with self.levers.autocast():
            penalty = functools.reduce(operator.add, (term(self.D_reg, batch[term.on], y, gain)
                                                      for term in self.loss.lazy_d_terms))
        self.opt_d.zero_grad(set_to_none=True)
        penalty.backward()
        self.opt_d.step()

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The nets, optimisers and loss state (a checkpoint's tensors)."""
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "loss": self.loss.state_dict(),
            **({"clusters": self.labels.cpu()} if self.class_shares is not None else {}),  # self-conditioning's
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        self.levers.load_optimizer(self.opt_g, state["opt_g"])
        self.levers.load_optimizer(self.opt_d, state["opt_d"])
        self.loss.load_state_dict(state["loss"])
        if self.class_shares is not None:  # the clusters this run began with (k-means is not rerun bit for bit everywhere)
            self.labels.copy_(state["clusters"])
            shares = clusters.shares(state["clusters"].numpy(), self.net_cfg.n_classes)
            for G in (self.G, self.G_ema):
                if G is not None:
                    G.class_shares = shares

    def check_finite_weights(self, step: int) -> None:
        """Stop with DivergenceError when G, D or the EMA generator holds NaN/Inf."""
        for name, net in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            for pname, p in (net.state_dict() if net is not None else {}).items():
                if p.is_floating_point() and not torch.isfinite(p).all():
                    raise DivergenceError(f"training diverged at step {step}: {name}.{pname} holds NaN/Inf")


@contextmanager
def frozen(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`net`'s parameters do not require grad for the block (no weight gradients are made for them)."""
    trainable = [p for p in net.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p in trainable:
            p.requires_grad_(True)
