"""The one training loop. It orchestrates: fetch a batch, step D then G, update the EMA,
log, snapshot. The maths lives in ganflow.losses and ganflow.nets."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ganflow import GanflowError, augment, checkpoint, losses
from ganflow.config import Params
from ganflow.distributed import SINGLE, Dist, all_mean, device_for, gather
from ganflow.data import ImageSet
from ganflow.io import save_grid, write_bytes
from ganflow.nets import NetConfig, SingleInput, build
from ganflow.sampling import to_uint8

log = logging.getLogger("ganflow.train")

LOG_COLUMNS = ("step", "loss_D", "loss_G", "D_x", "D_G_z")
# keys that may change between a checkpoint and a resume without changing what is trained
NOT_FINGERPRINTED = {
    "steps", "log_every", "sample_every", "checkpoint_every", "device", "eval_every", "eval_samples",
    "channels_last", "compile", "devices",  # devices: the resolved world size is fingerprinted instead
}


class DivergenceError(GanflowError):
    pass


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GanflowError("train.device is cuda, but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GanflowError("train.device is mps, but MPS is not available")
    return torch.device(name)


def code_hash() -> str:
    """Hash of the sources that define what training computes (nets, losses, this loop)."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for p in sorted([*root.glob("nets/*.py"), root / "losses.py", root / "training.py", root / "augment.py"]):
        if p.exists():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(params: Params, data_sha256: str, world_size: int = 1) -> dict[str, Any]:
    """Everything that defines the model and its optimisation; a checkpoint is resumed only if this matches."""
    train = params.train.model_dump(exclude=NOT_FINGERPRINTED)
    return {"seed": params.seed, "data_sha256": data_sha256, "code": code_hash(), "world_size": world_size,
            **{f"train.{k}": v for k, v in train.items()}}


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


@dataclass
class TrainPaths:
    generator: Path
    checkpoint: Path
    log_tsv: Path
    grid: Path
    generator_best: Path | None = None  # the generator with the lowest FID during training
    fid_tsv: Path | None = None  # step, FID of each check during training


@dataclass
class Hooks:
    """What the loop reports to the outside world (MLflow, in practice). All optional."""

    on_metrics: Callable[[dict[str, float], int], None] = lambda metrics, step: None
    on_grid: Callable[[np.ndarray, int], None] = lambda grid_hwc, step: None


@dataclass
class State:
    step: int = 0
    log_rows: list[list[float]] = field(default_factory=list)
    fid_rows: list[list[float]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # {"step", "fid", "state_dict"} of the best generator so far
    eval_seconds: float = 0.0


class Trainer:
    def __init__(self, params: Params, data: ImageSet, data_sha256: str, dist: Dist = SINGLE):
        cfg = params.train
        self.params, self.cfg, self.dist = params, cfg, dist
        self.device = device_for(dist, select_device(cfg.device))
        torch.manual_seed(params.seed)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        n, c, h, w = data.images.shape
        if cfg.conditional and data.labels is None:
            raise GanflowError("train.conditional is true, but the prepared data has no labels (use class sub-folders)")
        n_classes = len(data.classes) if cfg.conditional else 0
        self.net_cfg = NetConfig(
            resolution=h, channels=c, z_dim=cfg.z_dim, width=cfg.width, d_norm=cfg.d_norm,
            n_classes=n_classes,
        )
        G, D = build(cfg.arch, self.net_cfg)
        self.G, self.D = G.to(self.device), D.to(self.device)
        if dist.active:
            # every rank draws its own batches and noise; the nets start equal (DDP broadcasts rank 0's)
            torch.manual_seed(params.seed + 1_000_003 * dist.rank)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas), **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas), **fused)
        self.loss = losses.get(cfg.loss)
        # speed levers: the modules keep their state; the step calls these views of them
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if cfg.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        G_step, D_step = self.G, self.D
        if dist.active:  # gradients averaged over ranks
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            G_step, D_step = DDP(self.G, device_ids=ids), DDP(self.D, device_ids=ids)
        self.G_step = torch.compile(G_step) if cfg.compile else G_step
        D_step = torch.compile(D_step) if cfg.compile else D_step
        # D as the losses see it: DiffAugment on every input, real and fake alike
        aug = augment.pipeline(cfg.augment)
        self.D_aug = (lambda x, y=None: D_step(aug(x), y)) if cfg.augment else D_step
        # EMA of G's weights: per-step decay from a half-life in images
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if cfg.ema > 0 else None
        self.ema_beta = 0.5 ** (cfg.batch_size * dist.world_size / cfg.ema) if cfg.ema > 0 else 0.0
        # the whole data set stays on the device as uint8; batches are index draws there
        self.images = torch.from_numpy(data.images).to(self.device)
        self.labels = torch.from_numpy(data.labels).to(self.device) if n_classes else None
        self.fingerprint = fingerprint(params, data_sha256, dist.world_size)
        self.state = State()
        self.extra: dict[str, Any] = {}  # saved with each checkpoint (the MLflow run id, say)
        self.resumed: dict[str, Any] | None = None  # the `extra` of the checkpoint resumed from
        self.amp = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        )
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
            "fid_rows": self.state.fid_rows,
            "best": self.state.best,
            "eval_seconds": self.state.eval_seconds,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": gather(rng, self.dist),  # one per rank
            "extra": self.extra,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.G.load_state_dict(ckpt["G"])
        self.D.load_state_dict(ckpt["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(ckpt["G_ema"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.state = State(
            step=ckpt["step"], log_rows=[list(r) for r in ckpt["log_rows"]], fid_rows=[list(r) for r in ckpt["fid_rows"]],
            best=ckpt["best"], eval_seconds=ckpt["eval_seconds"],
        )
        if len(ckpt["rng"]) != self.dist.world_size:
            raise GanflowError(f"checkpoint was made by {len(ckpt['rng'])} processes, this run has {self.dist.world_size}")
        rng = ckpt["rng"][self.dist.rank]
        torch.set_rng_state(rng["cpu"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def try_resume(self, path: Path) -> str:
        """Resume from `path` when its fingerprint matches; return what was decided, for the log."""
        if not path.exists():
            return "no checkpoint: starting fresh"
        ckpt = checkpoint.load(path, checkpoint.FORMAT, map_location=self.device)
        changed = fingerprint_changes(ckpt["fingerprint"], self.fingerprint)
        if changed:
            return f"checkpoint {path} was made with other settings ({', '.join(changed)} changed): starting fresh"
        if ckpt["step"] > self.cfg.steps:
            return f"checkpoint {path} is at step {ckpt['step']}, beyond train.steps={self.cfg.steps}: starting fresh"
        self.load_state_dict(ckpt)
        self.resumed = {"step": ckpt["step"], **ckpt.get("extra", {})}
        return f"resuming from {path} at step {ckpt['step']}"

    def save_checkpoint(self, path: Path) -> None:
        self.check_finite_weights()
        state = self.state_dict()  # a collective under DDP
        if self.dist.main:
            checkpoint.save(state, path)

    def generator_dict(self, best: bool = False) -> dict[str, Any]:
        """generator.pt: the evaluated G (EMA when on) of the last step, or of the best FID check."""
        b = self.state.best if best else None
        return {
            "format": checkpoint.GENERATOR_FORMAT,
            "arch": self.cfg.arch,
            "net": self.net_cfg.to_dict(),
            "state_dict": b["state_dict"] if b else {k: v.cpu().clone() for k, v in self.G_eval.state_dict().items()},
            "step": b["step"] if b else self.state.step,
            "fid_classifier": b["fid"] if b else None,
            "data_sha256": self.fingerprint["data_sha256"],
        }

    def export_generator(self) -> tuple[torch.nn.Module, np.ndarray]:
        """A CPU copy of the generator in eval mode behind one input tensor, and an input example."""
        G, _ = build(self.cfg.arch, self.net_cfg)
        G.load_state_dict({k: v.cpu() for k, v in self.G_eval.state_dict().items()})
        example = np.random.default_rng(0).standard_normal((2, self.cfg.z_dim), dtype=np.float32)
        if self.net_cfg.n_classes:
            example = np.concatenate([example, np.array([[0.0], [1.0]], dtype=np.float32)], axis=1)
        return SingleInput(G).eval(), example

    @property
    def G_eval(self) -> torch.nn.Module:
        """The generator that is sampled, saved and evaluated: the EMA one when train.ema > 0."""
        return self.G_ema if self.G_ema is not None else self.G

    @torch.no_grad()
    def update_ema(self) -> None:
        # G_ema <- beta·G_ema + (1 - beta)·G; buffers (batch-norm statistics) are copied
        if self.G_ema is None:
            return
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1.0 - self.ema_beta)
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
        x = self.images[idx].float().div_(127.5).sub_(1.0).contiguous(memory_format=self.memory_format)
        return x, y

    def noise(self) -> torch.Tensor:
        return torch.randn(self.cfg.batch_size, self.cfg.z_dim, device=self.device)

    def train_step(self) -> torch.Tensor:
        """One D+G step; returns [loss_D, loss_G, D(x), D(G(z))] on the device (no host sync)."""
        # conditional nets draw fake labels as the real batch's labels (the data's class frequencies)
        for _ in range(self.loss.n_critic):
            # Update D: push D(x) up and D(G(z)) down, as the loss defines
            real, y = self.real_batch()
            with self.amp:
                fake = self.G_step(self.noise(), y)
                loss_d, logit_r, logit_f = self.loss.d_loss(self.D_aug, real, fake.detach(), y)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
        if self.loss.n_critic > 1:
            with self.amp:
                fake = self.G_step(self.noise(), y)
        # Update G: make D score G(z) as real (the last fake is reused when D steps once)
        with self.amp:
            loss_g = self.loss.g_loss(self.D_aug, fake, y)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.update_ema()
        return torch.stack(
            [loss_d.detach().float(), loss_g.detach().float(), torch.sigmoid(logit_r.detach().float()).mean(), torch.sigmoid(logit_f.detach().float()).mean()]
        )

    @torch.no_grad()
    def grid(self) -> torch.Tensor:
        with evaluating(self.G_eval) as G:
            x = G(self.fixed_z, self.fixed_y).float()
        return to_uint8(x).cpu()

    def check_fid(self, scorer: Callable[[torch.nn.Module], float], paths: TrainPaths, hooks: Hooks) -> None:
        """Score the evaluated G; keep it as the best when its FID is the lowest so far."""
        t0 = time.perf_counter()
        # the scorer may draw from torch's RNG (a DataLoader does): fork it, so checks never change training
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), evaluating(self.G_eval) as G:
            fid = float(scorer(G))
        st = self.state
        st.fid_rows.append([st.step, fid])
        if st.best is None or fid < st.best["fid"]:
            st.best = {"step": st.step, "fid": fid, "state_dict": {k: v.cpu().clone() for k, v in G.state_dict().items()}}
        st.eval_seconds += time.perf_counter() - t0
        if paths.fid_tsv:
            write_tsv(paths.fid_tsv, st.fid_rows, ("step", "fid_classifier"))
        hooks.on_metrics({"fid_classifier_during_training": fid}, st.step)

    # -- the loop ----------------------------------------------------------------------------
    def run(
        self,
        paths: TrainPaths,
        hooks: Hooks = Hooks(),
        max_seconds: float | None = None,
        scorer: Callable[[torch.nn.Module], float] | None = None,
    ) -> dict[str, float]:
        """Train to train.steps (or for max_seconds of wall clock, for benchmarks).
        With a scorer (G -> FID), G is scored every train.eval_every steps and the best one kept."""
        cfg, st, main = self.cfg, self.state, self.dist.main
        if self.dist.active:
            max_seconds = None  # a wall-clock stop could differ between ranks
        acc = torch.zeros(4, device=self.device)
        n_acc, t0, step0, eval0 = 0, time.perf_counter(), st.step, st.eval_seconds
        images_per_step = cfg.batch_size * self.loss.n_critic * self.dist.world_size
        bar = tqdm(total=cfg.steps, initial=st.step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=not main)
        try:
            while st.step < cfg.steps:
                acc += self.train_step()
                n_acc += 1
                st.step += 1
                bar.update(1)
                last = st.step == cfg.steps or (max_seconds is not None and time.perf_counter() - t0 > max_seconds)
                if st.step % cfg.log_every == 0 or last:
                    # one host sync per log interval: means over the interval (and over ranks)
                    row = (all_mean(acc, self.dist) / n_acc).tolist()
                    if not all(math.isfinite(v) for v in row):
                        bad = [k for k, v in zip(LOG_COLUMNS[1:], row) if not math.isfinite(v)]
                        raise DivergenceError(
                            f"training diverged between steps {st.step - n_acc + 1} and {st.step}: {', '.join(bad)} not finite"
                        )
                    acc.zero_()
                    n_acc = 0
                    st.log_rows.append([st.step, *row])
                    ips = (st.step - step0) * images_per_step / (time.perf_counter() - t0)
                    bar.set_postfix(loss_D=f"{row[0]:.3f}", loss_G=f"{row[1]:.3f}", img_s=f"{ips:.0f}")
                    if main:
                        write_tsv(paths.log_tsv, st.log_rows)
                        hooks.on_metrics({**dict(zip(LOG_COLUMNS[1:], row)), "img_per_s": ips}, st.step)
                if main and (st.step % cfg.sample_every == 0 or last):
                    g = save_grid(self.grid(), paths.grid, nrow=10)  # conditional: a row per class
                    hooks.on_grid(g.permute(1, 2, 0).numpy(), st.step)
                if main and scorer is not None and cfg.eval_every and (st.step % cfg.eval_every == 0 or last):
                    self.check_fid(scorer, paths, hooks)
                if st.step % cfg.checkpoint_every == 0 or last:
                    self.save_checkpoint(paths.checkpoint)
                if last:
                    break
        finally:
            bar.close()  # also on an error, so its message starts on a line of its own
        self.check_finite_weights()
        seconds = time.perf_counter() - t0
        done = st.step - step0
        if main:  # the final outputs are written also when a resume found nothing left to train
            write_tsv(paths.log_tsv, st.log_rows)
            save_grid(self.grid(), paths.grid, nrow=10)
            checkpoint.save(self.generator_dict(), paths.generator)
            if paths.fid_tsv:
                write_tsv(paths.fid_tsv, st.fid_rows, ("step", "fid_classifier"))
            if paths.generator_best:  # without checks during training, the best is the last
                checkpoint.save(self.generator_dict(best=True), paths.generator_best)
        summary = {
            "train_seconds": seconds,
            "train_img_per_s": done * images_per_step / seconds if done else 0.0,
            "steps_run": done,
            # the share of this attempt's time spent on FID checks
            "eval_time_fraction": (st.eval_seconds - eval0) / seconds if seconds else 0.0,
        }
        if st.best:
            summary |= {"best_step": st.best["step"], "best_fid_classifier_during_training": st.best["fid"]}
        return summary


@contextmanager
def evaluating(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`net` in eval mode for the block, then back in the mode it was in."""
    was = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was)


def write_tsv(path: Path, rows: list[list[float]], columns: tuple[str, ...] = LOG_COLUMNS) -> None:
    lines = ["\t".join(columns)]
    lines += ["\t".join([str(int(r[0]))] + [f"{v:.6g}" for v in r[1:]]) for r in rows]
    write_bytes(path, ("\n".join(lines) + "\n").encode())
