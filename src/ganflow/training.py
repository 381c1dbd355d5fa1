"""The one training loop. It orchestrates: fetch a batch, step D then G, update the EMA, log,
snapshot. The maths lives in ganflow.losses and ganflow.nets, the speed levers in ganflow.accel,
the files in ganflow.outputs."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from ganflow import GanflowError, accel, augment, checkpoint, deps, losses, progress
from ganflow.data import ImageSet
from ganflow.distributed import SINGLE, Dist, all_mean, gather
from ganflow.generator import serving_model
from ganflow.nets import NetConfig, build, takes_classes
from ganflow.outputs import TrainOutputs
from ganflow.pixels import to_float, to_uint8

if TYPE_CHECKING:
    from ganflow.config import Params, TrainConfig

log = logging.getLogger("ganflow.train")

LOG_COLUMNS = ("step", "loss_D", "loss_G", "D_x", "D_G_z")  # what train_step returns, after the step
# keys that may change between a checkpoint and a resume without changing what is trained
NOT_FINGERPRINTED = {
    "steps", "resume", "log_every", "sample_every", "checkpoint_every", "device", "eval_every", "eval_samples",
    "channels_last", "compile", "cuda_graph",  # speed levers compute the same step
    "devices",  # the resolved world size is fingerprinted instead
}


class DivergenceError(GanflowError):
    pass


def fingerprint(params: Params, data_sha256: str, world_size: int = 1, code: str | None = None) -> dict[str, Any]:
    """Everything that defines the model and its optimisation; a checkpoint is resumed only if this
    matches. `code`: the hash of the training code (default: the closure of this module)."""
    # a decaying learning rate makes every step depend on train.steps: then more steps start afresh
    train = params.train.model_dump(exclude=NOT_FINGERPRINTED - ({"steps"} if params.train.lr_decay else set()))
    return {"seed": params.seed, "data_sha256": data_sha256, "code": code or deps.code_hash(__file__),
            "world_size": world_size, **{f"train.{k}": v for k, v in train.items()}}


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


@dataclass(frozen=True)
class Selection:
    """The metric that picks the best generator during training (lower is better): its name keys
    the scores TSV column, the MLflow metric `<name>_during_training` and the generator files."""

    name: str
    score: Callable[[torch.nn.Module], float]


@dataclass
class Hooks:
    """What the loop reports to the outside world (MLflow, in practice). All optional."""

    on_metrics: Callable[[dict[str, float], int], None] = lambda metrics, step: None
    on_grid: Callable[[np.ndarray, int], None] = lambda grid_hwc, step: None


Report = Callable[["Hooks"], None]  # a deferred call to the hooks


@dataclass
class State:
    step: int = 0
    log_rows: list[list[float]] = field(default_factory=list)
    score_rows: list[list[float]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # {"step", "value", "state_dict"} of the best generator so far
    eval_seconds: float = 0.0


def due(step: int, every: int, last: bool) -> bool:
    """The cadence of every periodic job: each `every` steps and at the last step (never when 0)."""
    return every > 0 and (step % every == 0 or last)


class Trainer:
    def __init__(self, params: Params, data: ImageSet, data_sha256: str, dist: Dist = SINGLE, code: str | None = None):
        """Build nets and optimisers from train.* (net weights are drawn from torch's global RNG,
        which the stage seeds). `code`: hash of the training code for the checkpoint fingerprint."""
        cfg = params.train
        self.params, self.cfg, self.dist = params, cfg, dist
        self.levers = accel.levers(cfg, dist)
        self.device = self.levers.device
        _, c, h, _ = data.images.shape
        if cfg.batch_size > len(data.images):
            raise GanflowError(f"train.batch_size {cfg.batch_size} is larger than the prepared data ({len(data.images)} images)")
        n_classes = len(data.classes) if self.conditional(cfg, data) else 0
        self.net_cfg = NetConfig(
            resolution=h, channels=c, z_dim=cfg.z_dim, width=cfg.width, d_norm=cfg.d_norm, n_classes=n_classes,
            d_width=cfg.d_width or 0,
        )
        self.G, self.D = build(cfg.arch, self.net_cfg)
        self.levers.place(self.G, self.D)
        self.opt_g = self.levers.adam(self.G.parameters(), cfg.lr_g, tuple(cfg.betas))
        self.opt_d = self.levers.adam(self.D.parameters(), cfg.lr_d, tuple(cfg.betas))
        self.loss = losses.get(cfg.loss, cfg.lecam, self.device)
        # the views a step calls (DDP, compile); D as the losses see it: DiffAugment on every input
        self.G_step = self.levers.for_step(self.G)
        D_view = self.levers.for_step(self.D)
        self.D_aug = augment.wrap(D_view, cfg.augment)
        # lazy R1 differentiates D's input gradient again, which torch.compile cannot: its D is the uncompiled view
        self.D_r1 = augment.wrap(getattr(D_view, "_orig_mod", D_view), cfg.augment)
        self.D_frozen = augment.wrap(self.levers.for_frozen(self.D), cfg.augment)  # D during the G step
        # EMA of G's weights (copied after DDP made all ranks equal): per-step decay from a half-life in images
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if cfg.ema > 0 else None
        self.ema_weight = torch.zeros((), device=self.device)  # 1 - decay, set per step (a graph replays it)
        # top-k training: how many fakes of a batch drive G's loss, set per step (None: all)
        self.keep = torch.zeros((), device=self.device) if cfg.topk < 1 else None
        self._filled: dict[str, float] = {}  # the values last filled into those tensors (reading them back would sync)
        # the whole data set stays on the device as uint8; batches are index draws there
        self.images = torch.from_numpy(data.images).to(self.device)
        self.labels = torch.from_numpy(data.labels).to(self.device) if n_classes else None
        self.fingerprint = fingerprint(params, data_sha256, dist.world_size, code)
        self.state = State()
        self.extra: dict[str, Any] = {}  # saved with each checkpoint (the MLflow run id, say)
        self.resumed: dict[str, Any] | None = None  # the `extra` of the checkpoint resumed from
        self.metric: str | None = None  # the selection metric's name, once run() knows it
        # fixed noise for progress grids: its own generator, so it never shifts the training RNG
        g = torch.Generator().manual_seed(params.seed + 1)
        self.fixed_z = torch.randn(100, cfg.z_dim, generator=g).to(self.device)
        # conditional: one grid row per class (the first 10 classes)
        self.fixed_y = torch.arange(min(10, n_classes)).repeat_interleave(10).to(self.device) if n_classes else None
        if n_classes:
            self.fixed_z = self.fixed_z[: len(self.fixed_y)]

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state (on every rank: it gathers each rank's RNG state)."""
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": checkpoint.FORMAT,
            "fingerprint": self.fingerprint,
            "arch": self.cfg.arch,
            "net": self.net_cfg.to_dict(),
            "step": self.state.step,
            "log_rows": self.state.log_rows,
            "score_rows": self.state.score_rows,
            "best": self.state.best,
            "eval_seconds": self.state.eval_seconds,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "loss": self.loss.state_dict(),
            "rng": gather(rng, self.dist),  # one per rank
            "extra": self.extra,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore the training state, torch's global RNG included (that is what resuming means)."""
        if len(ckpt["rng"]) != self.dist.world_size:
            raise GanflowError(f"checkpoint was made by {len(ckpt['rng'])} processes, this run has {self.dist.world_size}")
        self.G.load_state_dict(ckpt["G"])
        self.D.load_state_dict(ckpt["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(ckpt["G_ema"])
        self.levers.load_optimizer(self.opt_g, ckpt["opt_g"])
        self.levers.load_optimizer(self.opt_d, ckpt["opt_d"])
        self.loss.load_state_dict(ckpt["loss"])
        self.state = State(
            step=ckpt["step"], log_rows=[list(r) for r in ckpt["log_rows"]],
            score_rows=[list(r) for r in ckpt["score_rows"]], best=ckpt["best"], eval_seconds=ckpt["eval_seconds"],
        )
        rng = ckpt["rng"][self.dist.rank]
        torch.set_rng_state(rng["cpu"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def try_resume(self, path: Path) -> str:
        """Resume from `path` when its fingerprint matches; return what was decided, for the log.
        A checkpoint that cannot be resumed is kept as <name>.prev.pt (one, the latest), never lost."""
        if not path.exists():
            return "no checkpoint: starting fresh"
        ckpt = checkpoint.load(path, checkpoint.FORMAT, map_location=self.device)
        changed = fingerprint_changes(ckpt["fingerprint"], self.fingerprint)
        if not self.cfg.resume:
            why = "is not resumed (train.resume is false)"
        elif changed:
            why = f"was made with other settings ({', '.join(changed)} changed)"
        elif ckpt["step"] > self.cfg.steps:
            why = f"is at step {ckpt['step']}, beyond train.steps={self.cfg.steps}"
        else:
            self.load_state_dict(ckpt)
            self.resumed = {"step": ckpt["step"], **ckpt.get("extra", {})}
            return f"resuming from {path} at step {ckpt['step']}"
        prev = path.with_name(f"{path.stem}.prev{path.suffix}")
        if self.dist.main:
            os.replace(path, prev)
        return f"checkpoint {path} {why}: starting fresh (kept as {prev})"

    def save_checkpoint(self, outputs: TrainOutputs) -> None:
        self.check_finite_weights()
        state = self.state_dict()  # a collective under DDP
        if self.dist.main:
            outputs.checkpoint(state)

    def generator_dict(self, best: bool = False) -> dict[str, Any]:
        """generator.pt: the evaluated G (EMA when on) of the last step, or of the best check."""
        b = self.state.best if best else None
        return {
            "format": checkpoint.GENERATOR_FORMAT,
            "arch": self.cfg.arch,
            "net": self.net_cfg.to_dict(),
            "state_dict": b["state_dict"] if b else {k: v.cpu().clone() for k, v in self.G_eval.state_dict().items()},
            "step": b["step"] if b else self.state.step,
            **({self.metric: b["value"] if b else None} if self.metric else {}),
            "data_sha256": self.fingerprint["data_sha256"],
        }

    def export_generator(self) -> tuple[torch.nn.Module, np.ndarray]:
        """A CPU copy of the evaluated generator in eval mode behind one input tensor, and an input example."""
        return serving_model(self.generator_dict())

    @staticmethod
    def conditional(cfg: TrainConfig, data: ImageSet) -> bool:
        """train.conditional resolved: auto is on when the data has labels and the arch takes classes."""
        if cfg.conditional == "auto":
            return data.labels is not None and takes_classes(cfg.arch)
        if cfg.conditional and data.labels is None:
            raise GanflowError("train.conditional is true, but the prepared data has no labels (use class sub-folders)")
        if cfg.conditional and not takes_classes(cfg.arch):
            raise GanflowError(f"train.conditional is true, but arch {cfg.arch} is unconditional")
        return cfg.conditional

    @property
    def G_eval(self) -> torch.nn.Module:
        """The generator that is sampled, saved and evaluated: the EMA one when train.ema > 0."""
        return self.G_ema if self.G_ema is not None else self.G

    def schedule(self, step: int) -> None:
        """Set what depends on the step about to run (0-based): the learning rates (constant, then
        falling linearly towards 0 over the last train.lr_decay of the steps), the EMA's decay (from its
        half-life in images, ramped up over the first images when train.ema_rampup is on) and the top-k
        count (the whole batch times 0.99 per epoch, down to train.topk of it). Device tensors are filled
        only when their value changes."""
        cfg = self.cfg
        per_step = cfg.batch_size * self.dist.world_size
        if cfg.lr_decay:
            start = cfg.steps * (1 - cfg.lr_decay)
            scale = min(1.0, (cfg.steps - step) / (cfg.steps - start))
            for opt, lr in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
                self.levers.set_lr(opt, lr * scale)
        if self.G_ema is not None:
            half_life = min(cfg.ema, cfg.ema_rampup * step * per_step) if cfg.ema_rampup else cfg.ema
            self._set("ema_weight", 1.0 - 0.5 ** (per_step / half_life) if half_life > 0 else 1.0)
        if self.keep is not None:
            epoch = step * per_step // len(self.images)
            self._set("keep", float(max(math.ceil(cfg.topk * cfg.batch_size), round(cfg.batch_size * 0.99**epoch))))

    def _set(self, name: str, value: float) -> None:
        """Fill the 0-d device tensor self.<name> with value, unless it holds it already."""
        if self._filled.get(name) != value:
            getattr(self, name).fill_(value)
            self._filled[name] = value

    @torch.no_grad()
    def update_ema(self) -> None:
        # G_ema <- (1 - w)·G_ema + w·G; buffers (batch-norm statistics) are copied
        if self.G_ema is None:
            return
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), self.ema_weight)
        for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
            be.copy_(b)

    def check_finite_weights(self) -> None:
        for name, net in (("G", self.G), ("D", self.D)):
            for pname, p in net.state_dict().items():
                if p.is_floating_point() and not torch.isfinite(p).all():
                    raise DivergenceError(f"training diverged at step {self.state.step}: {name}.{pname} holds NaN/Inf")

    # -- one step ----------------------------------------------------------------------------
    def real_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch of real images in [-1, 1] and, for conditional nets, their labels."""
        idx = torch.randint(len(self.images), (self.cfg.batch_size,), device=self.device)
        y = self.labels[idx] if self.labels is not None else None
        return to_float(self.images[idx]).contiguous(memory_format=self.levers.memory_format), y

    def noise(self) -> torch.Tensor:
        return torch.randn(self.cfg.batch_size, self.cfg.z_dim, device=self.device)

    def train_step(self) -> torch.Tensor:
        """One D+G step; returns LOG_COLUMNS[1:] on the device (no host sync). The eager definition
        of a step, and the one thing a CUDA graph captures."""
        # conditional nets draw fake labels as the real batch's labels (the data's class frequencies)
        for _ in range(self.loss.n_critic):
            # Update D: push D(x) up and D(G(z)) down, as the loss defines
            real, y = self.real_batch()
            with self.levers.autocast():
                fake = self.G_step(self.noise(), y)
                loss_d, logit_r, logit_f = self.loss.d_loss(self.D_aug, real, fake.detach(), y)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
        if self.loss.n_critic > 1:
            with self.levers.autocast():
                fake = self.G_step(self.noise(), y)
        # Update G: make D score G(z) as real (the last fake is reused when D steps once); D's weights
        # are frozen, so backward makes gradients for G's weights only
        with frozen(self.D), self.levers.autocast():
            loss_g = self.loss.g_loss(self.D_frozen, fake, y, self.keep)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.update_ema()
        d_x, d_g_z = (torch.sigmoid(logit.detach().float()).mean() for logit in (logit_r, logit_f))
        return torch.stack([loss_d.detach().float(), loss_g.detach().float(), d_x, d_g_z])

    def after_step(self) -> None:
        """What follows a step, outside of it (a captured step stays one graph): a lazy R1 step when due."""
        if self.cfg.r1 and self.state.step % self.cfg.r1_every == 0:
            self.r1_step()

    def r1_step(self) -> None:
        """Lazy R1 (Karras et al. 2020): every train.r1_every steps, one extra D step on the penalty
        alone, weighted r1 · r1_every so that it weighs as much as a penalty in every step. Eager, also
        between the replays of a captured step: it updates the same weights and optimiser state."""
        real, y = self.real_batch()
        with self.levers.autocast():
            penalty = self.loss.r1_penalty(self.D_r1, real, y)
        self.opt_d.zero_grad(set_to_none=True)
        (penalty * (self.cfg.r1 * self.cfg.r1_every)).backward()
        self.opt_d.step()

    # -- periodic jobs -----------------------------------------------------------------------
    @torch.no_grad()
    def grid(self) -> torch.Tensor:
        with evaluating(self.G_eval) as G:
            x = G(self.fixed_z, self.fixed_y).float()
        return to_uint8(x).cpu()

    # Each periodic job writes its files at once and returns what it has to report (to MLflow, via
    # Hooks); the loop reports only after that step's checkpoint, so a slow or dead tracking store
    # can never cost a checkpoint.
    def log_interval(self, meter: LossMeter, outputs: TrainOutputs, speed: float) -> tuple[list[float], Report]:
        """Close a log interval: the means over it (and over ranks), checked finite, written."""
        st = self.state
        first = st.step - meter.n + 1
        row = meter.mean(self.dist)
        if not all(math.isfinite(v) for v in row):
            bad = [k for k, v in zip(LOG_COLUMNS[1:], row) if not math.isfinite(v)]
            raise DivergenceError(f"training diverged between steps {first} and {st.step}: {', '.join(bad)} not finite")
        st.log_rows.append([st.step, *row])
        if self.dist.main:
            outputs.log(st.log_rows, LOG_COLUMNS)
        metrics = {**dict(zip(LOG_COLUMNS[1:], row)), "img_per_s": speed}
        return row, lambda hooks, step=st.step: hooks.on_metrics(metrics, step)

    def snapshot_grid(self, outputs: TrainOutputs) -> Report:
        g = outputs.grid(self.grid()).permute(1, 2, 0).numpy()
        return lambda hooks, step=self.state.step: hooks.on_grid(g, step)

    def select(self, selection: Selection, outputs: TrainOutputs) -> Report:
        """Score the evaluated G; keep it as the best when its score is the lowest so far."""
        t0 = time.perf_counter()
        # the scorer may draw from torch's RNG (a DataLoader does): fork it, so checks never change training
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), evaluating(self.G_eval) as G:
            value = float(selection.score(G))
        st = self.state
        st.score_rows.append([st.step, value])
        if st.best is None or value < st.best["value"]:
            st.best = {"step": st.step, "value": value, "state_dict": {k: v.cpu().clone() for k, v in G.state_dict().items()}}
        st.eval_seconds += time.perf_counter() - t0
        outputs.scores(st.score_rows, selection.name)
        return lambda hooks, step=st.step: hooks.on_metrics({f"{selection.name}_during_training": value}, step)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, outputs: TrainOutputs, hooks: Hooks = Hooks(), max_seconds: float | None = None,
            selection: Selection | None = None) -> dict[str, float]:
        """Train to train.steps (or for max_seconds of wall clock, for benchmarks). With a selection
        metric, G is scored every train.eval_every steps and the best one kept."""
        cfg, st, main = self.cfg, self.state, self.dist.main
        self.metric = selection.name if selection else None
        if self.dist.active:
            max_seconds = None  # a wall-clock stop could differ between ranks
        # eager, or captured as one CUDA graph at its first call: after any resume, so the graph
        # points at the loaded weights and optimiser state
        step = self.levers.stepper(self.train_step, (self.opt_d, self.opt_g))
        meter, clock = LossMeter(self.device), Clock(st.step, st.eval_seconds)
        per_step = cfg.batch_size * self.loss.n_critic * self.dist.world_size  # images D sees per step
        if main and st.step == 0:  # the untrained G's grid: a reviewer's step slider starts at step 0
            self.snapshot_grid(outputs)(hooks)
        with progress.bar(cfg.steps, "train", "step", initial=st.step, disable=not main) as bar:
            while st.step < cfg.steps:
                self.schedule(st.step)
                meter.add(step())
                st.step += 1
                self.after_step()
                bar.update(1)
                last = st.step == cfg.steps or (max_seconds is not None and clock.seconds() > max_seconds)
                reports: list[Report] = []
                if due(st.step, cfg.log_every, last):
                    speed = clock.rate(st.step, per_step)
                    (loss_d, loss_g, *_), report = self.log_interval(meter, outputs, speed)
                    reports.append(report)
                    if main:
                        progress.report(bar, log, "train", st.step, cfg.steps, loss_D=f"{loss_d:.3f}", loss_G=f"{loss_g:.3f}",
                                        img_s=f"{speed:.0f}")
                if main and due(st.step, cfg.sample_every, last):
                    reports.append(self.snapshot_grid(outputs))
                if main and selection and due(st.step, cfg.eval_every, last):
                    reports.append(self.select(selection, outputs))
                if due(st.step, cfg.checkpoint_every, last):
                    self.save_checkpoint(outputs)
                if main:
                    for report in reports:
                        report(hooks)
                if last:
                    break
        self.check_finite_weights()
        summary = clock.summary(st, per_step, self.metric)
        if main:  # the final outputs are written also when a resume found nothing left to train
            outputs.log(st.log_rows, LOG_COLUMNS)
            outputs.grid(self.grid())
            outputs.generators(self.generator_dict(), self.generator_dict(best=True))
            if selection:
                outputs.scores(st.score_rows, selection.name)
        return summary


class LossMeter:
    """Sums each step's device-side stats; one host sync per log interval reads their mean."""

    def __init__(self, device: torch.device):
        self.sum = torch.zeros(len(LOG_COLUMNS) - 1, device=device)
        self.n = 0

    def add(self, stats: torch.Tensor) -> None:
        self.sum += stats
        self.n += 1

    def mean(self, dist: Dist) -> list[float]:
        row = (all_mean(self.sum, dist) / self.n).tolist()
        self.sum.zero_()
        self.n = 0
        return row


class Clock:
    """Wall time and throughput of one run() call (a resumed run counts from where it resumed)."""

    def __init__(self, step0: int, eval_seconds0: float):
        self.t0, self.step0, self.eval0 = time.perf_counter(), step0, eval_seconds0

    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def rate(self, step: int, images_per_step: int) -> float:
        return (step - self.step0) * images_per_step / self.seconds()

    def summary(self, st: State, images_per_step: int, metric: str | None) -> dict[str, float]:
        seconds, done = self.seconds(), st.step - self.step0
        out = {
            "train_seconds": seconds,
            "train_img_per_s": done * images_per_step / seconds if done else 0.0,
            "steps_run": done,
            # the share of this attempt's time spent on selection checks
            "eval_time_fraction": (st.eval_seconds - self.eval0) / seconds if seconds else 0.0,
        }
        if st.best:
            out |= {"best_step": st.best["step"], f"best_{metric}_during_training": st.best["value"]}
        return out


@contextmanager
def evaluating(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`net` in eval mode for the block, then back in the mode it was in."""
    was = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was)


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
