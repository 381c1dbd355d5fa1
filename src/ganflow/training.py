"""The training loop: `Trainer.run` advances the GanStep one step at a time and runs a table of
periodic jobs (log, grid, FID check and selection, checkpoint). The step lives in ganflow.gan_step,
the checkpoint, resume policy and export in ganflow.train_state, the files in ganflow.outputs."""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from ganflow import accel, clusters, deps, evaluator, progress
from ganflow.eta import Eta, duration
from ganflow.data import ImageSet
from ganflow.distributed import SINGLE, Dist, all_mean, gather
from ganflow.gan_step import LOG_COLUMNS, DivergenceError, GanStep, cluster_count
from ganflow.outputs import TrainOutputs
from ganflow.pixels import to_uint8
from ganflow.train_state import Progress, TrainState, fingerprint

if TYPE_CHECKING:
    from ganflow.config import Params

__all__ = ["LOG_COLUMNS", "DivergenceError", "Hooks", "Pending", "Selection", "Trainer", "due", "training_set"]

log = logging.getLogger("ganflow.train")


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
    on_eta: Callable[[str], None] = lambda text: None  # once, when the first estimate is measured


Pending = Callable[[Hooks], None]  # a report a job defers until after that step's checkpoint


@dataclass(frozen=True)
class Job:
    """A periodic job: `run` every `every` steps and at the last step (never when every is 0), on rank
    0 only unless `all_ranks` (a job with a collective in it). It returns what it has to report."""

    name: str
    every: int
    run: Callable[[], Pending | None]
    all_ranks: bool = False


def training_set(ds: ImageSet, meta: dict[str, Any], evaluator_path: str | Path) -> ImageSet:
    """The images G trains on: the prepared data (`ds`, `meta` from data.load_prepared) less the images
    the evaluator at `evaluator_path` holds out. G never sees those: evaluate compares the samples
    with both halves."""
    _, info = evaluator.load(evaluator_path)
    _, seen = evaluator.reference_split(info, evaluator_path, meta["sha256"], len(ds.images))
    return ds.subset(seen)


def due(step: int, every: int, last: bool) -> bool:
    """The cadence of every periodic job: each `every` steps and at the last step (never when 0)."""
    return every > 0 and (step % every == 0 or last)


class Trainer:
    def __init__(self, params: Params, data: ImageSet, data_sha256: str, dist: Dist = SINGLE, code: str | None = None,
                 device: torch.device | None = None):
        """The step (nets from torch's global RNG, which the stage seeds) on `device` (None: from
        train.device) and its checkpoint state. `code`: hash of the training code for the fingerprint."""
        self.params, self.cfg, self.dist = params, params.train, dist
        clustered, k = None, cluster_count(self.cfg, data, params.prepare.source)  # every rank resolves it (and raises) alike
        if k:  # self-conditioning: the clusters are fitted once, on rank 0, and every rank trains on those
            t0 = time.perf_counter()
            clustered = gather(clusters.kmeans(data.images, k, params.seed) if dist.main else None, dist)[0], k
            if dist.main:
                log.info("train.clusters %s: self-conditioning on %d k-means clusters of the %d training images (fitted in %.1f s)",
                         self.cfg.clusters, k, len(data.images), time.perf_counter() - t0)
        self.gs = GanStep(self.cfg, data, accel.levers(self.cfg, dist, device), clustered)
        fp = fingerprint(params, data_sha256, dist.world_size, code or deps.code_hash(__file__))
        self.ckpt = TrainState(self.gs, fp)
        self.metric: str | None = None  # the selection metric's name, once run() knows it
        # fixed noise for progress grids: its own generator, so it never shifts the training RNG;
        # conditional: one grid row per class (the first 10 classes)
        n_classes = self.gs.net_cfg.n_classes
        self.fixed_y = torch.arange(min(10, n_classes)).repeat_interleave(10).to(self.device) if n_classes else None
        z = torch.randn(100, self.cfg.z_dim, generator=torch.Generator().manual_seed(params.seed + 1))
        self.fixed_z = z[: len(self.fixed_y) if n_classes else None].to(self.device)

    # what the stage reads: the step's device and nets live in GanStep, the state in TrainState
    device = property(lambda self: self.gs.device)
    net_cfg = property(lambda self: self.gs.net_cfg)
    state = property(lambda self: self.ckpt.progress)
    resumed_step = property(lambda self: self.ckpt.resumed_step)
    fingerprint = property(lambda self: self.ckpt.fingerprint)

    def try_resume(self, path) -> str:
        return self.ckpt.try_resume(path)

    def generator_dict(self, best: bool = False) -> dict[str, Any]:
        return self.ckpt.generator_dict(self.metric, best)

    def export_generator(self) -> tuple[torch.nn.Module, np.ndarray]:
        return self.ckpt.export_generator()

    # -- the loop --------------------------------------------------------------------------------
    def run(self, outputs: TrainOutputs, hooks: Hooks = Hooks(), max_seconds: float | None = None,
            selection: Selection | None = None) -> dict[str, float]:
        """Train to train.steps (or for max_seconds of wall clock, for benchmarks). With a selection
        metric, G is scored every train.eval_every steps and the best one kept."""
        st, main = self.state, self.dist.main
        self.metric = selection.name if selection else None
        max_seconds = None if self.dist.active else max_seconds  # a wall-clock stop could differ between ranks
        stepper = self.gs.stepper()  # after any resume: a captured graph points at the loaded state
        eta = Eta(self.cfg.steps, st.step, self.cfg.eval_every if selection else 0)
        meter, clock = LossMeter(self.device), Clock(st.step, st.eval_seconds, len(st.score_rows), eta)
        if main and st.step == 0:  # the untrained G's grid: a reviewer's step slider starts at step 0
            self.snapshot_grid(outputs)(hooks)
        with progress.bar(self.cfg.steps, "train", "step", initial=st.step, disable=not main) as bar:
            jobs = self.jobs(outputs, meter, clock, bar, selection)
            while st.step < self.cfg.steps:
                meter.add(self.gs.advance(st.step, stepper))
                st.step += 1
                bar.update(1)
                last = st.step == self.cfg.steps or (max_seconds is not None and clock.seconds() > max_seconds)
                pending = [job.run() for job in jobs if (main or job.all_ranks) and due(st.step, job.every, last)]
                for report in filter(None, pending) if main else ():  # after the checkpoint: see jobs()
                    report(hooks)
                if last:
                    break
        return self.finish(outputs, clock, selection)

    def jobs(self, outputs: TrainOutputs, meter: LossMeter, clock: Clock, bar, selection: Selection | None) -> list[Job]:
        """The periodic jobs, in the order they run after a step. Each writes its files at once and
        returns what it has to report (to MLflow, via Hooks); the loop reports only after that step's
        checkpoint, so a slow or dead tracking store can never cost a checkpoint."""
        cfg = self.cfg
        return [
            Job("log", cfg.log_every, lambda: self.log_interval(meter, outputs, clock, bar), all_ranks=True),
            Job("grid", cfg.sample_every, lambda: self.snapshot_grid(outputs)),
            Job("select", cfg.eval_every if selection else 0, lambda: self.select(selection, outputs)),
            Job("checkpoint", cfg.checkpoint_every, lambda: self.save_checkpoint(outputs), all_ranks=True),
        ]

    def finish(self, outputs: TrainOutputs, clock: Clock, selection: Selection | None) -> dict[str, float]:
        """The final outputs, written also when a resume found nothing left to train; the run's summary."""
        st = self.state
        self.gs.check_finite_weights(st.step)
        if self.dist.main:
            outputs.log(st.log_rows, LOG_COLUMNS)
            outputs.grid(self.grid())
            outputs.generators(self.generator_dict(), self.generator_dict(best=True))
            if selection:
                outputs.scores(st.score_rows, selection.name)
        return clock.summary(st, self.gs.d_images_per_step, self.metric)

    # -- periodic jobs ---------------------------------------------------------------------------
    def log_interval(self, meter: LossMeter, outputs: TrainOutputs, clock: Clock, bar) -> Pending:
        """Close a log interval: the means over it (and over ranks), checked finite, written."""
        st = self.state
        first, row = st.step - meter.n + 1, meter.mean(self.dist)
        if not all(math.isfinite(v) for v in row):
            bad = [k for k, v in zip(LOG_COLUMNS[1:], row) if not math.isfinite(v)]
            raise DivergenceError(f"training diverged between steps {first} and {st.step}: {', '.join(bad)} not finite")
        st.log_rows.append([st.step, *row])
        speed, first_eta = clock.rate(st.step, self.gs.d_images_per_step), clock.tick(st)
        if self.dist.main:
            outputs.log(st.log_rows, LOG_COLUMNS)
            left = clock.eta.left()
            progress.report(bar, log, "train", st.step, self.cfg.steps, loss_D=f"{row[0]:.3f}", loss_G=f"{row[1]:.3f}",
                            img_s=f"{speed:.0f}", eta=duration(left) if left is not None else "measuring")
            if first_eta:
                log.info(clock.eta.text())
        metrics = {**dict(zip(LOG_COLUMNS[1:], row)), "img_per_s": speed}

        def report(hooks: Hooks, step=st.step, eta=clock.eta.text() if first_eta else None) -> None:
            hooks.on_metrics(metrics, step)
            if eta:
                hooks.on_eta(eta)
        return report

    @torch.no_grad()
    def grid(self) -> torch.Tensor:
        with evaluating(self.gs.G_eval) as G:
            x = G(self.fixed_z, self.fixed_y).float()
        return to_uint8(x).cpu()

    def snapshot_grid(self, outputs: TrainOutputs) -> Pending:
        g = outputs.grid(self.grid()).permute(1, 2, 0).numpy()
        return lambda hooks, step=self.state.step: hooks.on_grid(g, step)

    def select(self, selection: Selection, outputs: TrainOutputs) -> Pending:
        """Score the evaluated G; keep it as the best when its score is the lowest so far."""
        t0 = time.perf_counter()
        # the scorer may draw from torch's RNG (a DataLoader does): fork it, so checks never change training
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), evaluating(self.gs.G_eval) as G:
            value = float(selection.score(G))
        st = self.state
        st.score_rows.append([st.step, value])
        if st.best is None or value < st.best["value"]:
            st.best = {"step": st.step, "value": value, "state_dict": {k: v.cpu().clone() for k, v in G.state_dict().items()}}
        st.eval_seconds += time.perf_counter() - t0
        outputs.scores(st.score_rows, selection.name)
        return lambda hooks, step=st.step: hooks.on_metrics({f"{selection.name}_during_training": value}, step)

    def save_checkpoint(self, outputs: TrainOutputs) -> None:
        self.gs.check_finite_weights(self.state.step)
        state = self.ckpt.state_dict()  # a collective under DDP
        if self.dist.main:
            outputs.checkpoint(state)


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
    """Wall time, throughput and the ETA of one run() call (a resumed run counts from where it resumed)."""

    def __init__(self, step0: int, eval_seconds0: float, checks0: int = 0, eta: Eta | None = None):
        self.t0, self.step0, self.eval0, self.checks0 = time.perf_counter(), step0, eval_seconds0, checks0
        self.eta = eta or Eta(step0)

    def tick(self, st: Progress) -> bool:
        """Feed the ETA the clock at st.step; True the first time it has an estimate."""
        had = self.eta.left() is not None
        self.eta.update(st.step, self.seconds(), st.eval_seconds - self.eval0, len(st.score_rows) - self.checks0)
        return not had and self.eta.left() is not None

    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def rate(self, step: int, images_per_step: int) -> float:
        return (step - self.step0) * images_per_step / self.seconds()

    def summary(self, st: Progress, images_per_step: int, metric: str | None) -> dict[str, float]:
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
