"""What a training run keeps and hands on: the fingerprint that guards a resume, the checkpoint (the
step's tensors plus the loop's progress and RNG states), the resume policy, and the generator export.

A checkpoint that cannot be resumed (other settings, train.resume off, beyond train.steps, or one
that fails to load: tampered, wrong shapes, NaN weights) is set aside as
<name>.prev-<UTC time>-step<N>.pt, the KEEP_SET_ASIDE latest of them kept, and training starts fresh.
"""

from __future__ import annotations

import copy
import logging
import os
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ganflow import checkpoint, deps
from ganflow.distributed import Dist, gather
from ganflow.gan_step import GanStep
from ganflow.generator import serving_model

if TYPE_CHECKING:
    from ganflow.config import Params, TrainConfig

log = logging.getLogger("ganflow.train")

# keys that may change between a checkpoint and a resume without changing what is trained
NOT_FINGERPRINTED = {
    "steps", "resume", "log_every", "sample_every", "checkpoint_every", "device", "eval_every", "eval_samples",
    "channels_last", "compile", "cuda_graph",  # speed levers compute the same step
    "autocast",  # the same step in another rounding, as on another device (train.device is not fingerprinted either)
    "devices",  # the resolved world size is fingerprinted instead
}
KEEP_SET_ASIDE = 3  # set-aside checkpoints kept beside the live one (the oldest beyond this are deleted)


def depends_on_steps(train: TrainConfig) -> bool:
    """Whether every step depends on train.steps (a decaying learning rate or penalty weight): then a run
    with more steps starts afresh, and step k of a longer run is not step k of a k-step one."""
    return bool(train.lr_decay) or train.gamma_schedule != "constant"


def fingerprint(params: Params, data_sha256: str, world_size: int = 1, code: str | None = None) -> dict[str, Any]:
    """Everything that defines the model and its optimisation; a checkpoint is resumed only if this
    matches. `code`: the hash of the training code (default: the closure of this module)."""
    train = params.train.model_dump(exclude=NOT_FINGERPRINTED - ({"steps"} if depends_on_steps(params.train) else set()))
    return {"seed": params.seed, "data_sha256": data_sha256, "code": code or deps.code_hash(__file__),
            "world_size": world_size, **{f"train.{k}": v for k, v in train.items()}}


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


@dataclass
class Progress:
    """The loop's progress, saved with every checkpoint."""

    step: int = 0
    log_rows: list[list[float]] = field(default_factory=list)
    score_rows: list[list[float]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # {"step", "value", "state_dict"} of the best generator so far
    eval_seconds: float = 0.0  # of this process (not saved: a checkpoint holds no wall time, so its bytes repeat)


class TrainState:
    """The checkpoint of one training process: a GanStep's tensors, the loop's Progress, the RNG
    states and the fingerprint. Nothing of one run alone (no MLflow run id): the same training writes the
    same bytes, in any clone."""

    def __init__(self, gs: GanStep, fp: dict[str, Any]):
        self.gs, self.fingerprint, self.dist = gs, fp, gs.dist
        self.progress = Progress()
        self.resumed_step: int | None = None  # the step of the checkpoint resumed from (None: started afresh)

    def state_dict(self) -> dict[str, Any]:
        """The full training state (on every rank: it gathers each rank's RNG state)."""
        gs, p = self.gs, self.progress
        rng = {"cpu": torch.get_rng_state()}
        if gs.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(gs.device)
        return {
            "format": checkpoint.FORMAT, "fingerprint": self.fingerprint, "arch": gs.cfg.arch, "net": gs.net_cfg.to_dict(),
            "step": p.step, "log_rows": p.log_rows, "score_rows": p.score_rows, "best": p.best,
            **gs.state_dict(),
            "rng": gather(rng, self.dist),  # one per rank
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore the training state, torch's global RNG included (that is what resuming means);
        any missing or malformed part raises (KeyError, ValueError, RuntimeError...), and so do
        weights that hold NaN/Inf."""
        if not isinstance(ckpt["rng"], list) or len(ckpt["rng"]) != self.dist.world_size:
            raise ValueError(f"rng holds states of {len(ckpt['rng'])} processes, this run has {self.dist.world_size}")
        self.gs.load_state_dict(ckpt)
        step = int(ckpt["step"])
        self.gs.check_finite_weights(step)
        self.progress = Progress(
            step=step, log_rows=[list(r) for r in ckpt["log_rows"]], score_rows=[list(r) for r in ckpt["score_rows"]],
            best=ckpt["best"],
        )
        rng = ckpt["rng"][self.dist.rank]
        torch.set_rng_state(rng["cpu"])
        if self.gs.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.gs.device)

    def try_resume(self, path: Path) -> str:
        """Resume from `path` when its fingerprint matches and it loads; return what was decided (also
        logged: a set-aside checkpoint as a warning). A checkpoint that cannot be resumed is set aside,
        never lost; a file that is no checkpoint at all is one GanflowError."""
        if not path.exists():
            return self._say("no checkpoint: starting fresh")
        ckpt = checkpoint.load(path, checkpoint.FORMAT, map_location=self.gs.device)
        old = ckpt.get("fingerprint")
        changed = fingerprint_changes(old, self.fingerprint) if isinstance(old, dict) else None
        steps = self.gs.cfg.steps
        if not self.gs.cfg.resume:
            why = "is not resumed (train.resume is false)"
        elif changed is None:
            why = "has no fingerprint (not written by this training code)"
        elif changed:
            why = f"was made with other settings ({', '.join(changed)} changed)"
        elif not isinstance(ckpt.get("step"), int) or ckpt["step"] > steps:
            why = f"is at step {ckpt.get('step')}, beyond train.steps={steps}"
        else:
            why = self._load_or_why(ckpt)
            if why is None:
                self.resumed_step = ckpt["step"]
                return self._say(f"resuming from {path} at step {ckpt['step']}")
        kept = set_aside(path, ckpt.get("step"), self.dist)
        return self._say(f"checkpoint {path} {why}: starting fresh (kept as {kept}; the {KEEP_SET_ASIDE} latest "
                         f"set-aside checkpoints are kept, older ones deleted)", warn=True)

    def _load_or_why(self, ckpt: dict[str, Any]) -> str | None:
        """Load `ckpt`, or say why it could not be loaded and leave everything as it was before."""
        fresh = copy.deepcopy(self.gs.state_dict())
        rng = torch.get_rng_state(), (torch.cuda.get_rng_state(self.gs.device) if self.gs.device.type == "cuda" else None)
        try:
            self.load_state_dict(ckpt)
            return None
        except Exception as err:  # noqa: BLE001 - any damage: the checkpoint is set aside, training starts fresh
            self.gs.load_state_dict(fresh)
            self.progress = Progress()
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], self.gs.device)
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return f"could not be loaded ({type(err).__name__}: {text[:200]})"

    def _say(self, message: str, warn: bool = False) -> str:
        if self.dist.main:
            (log.warning if warn else log.info)(message)
        return message

    # -- export -----------------------------------------------------------------------------------
    def generator_dict(self, metric: str | None = None, best: bool = False) -> dict[str, Any]:
        """generator.pt: the evaluated G (EMA when on) of the last step, or of the best check."""
        gs, b = self.gs, (self.progress.best if best else None)
        return {
            "format": checkpoint.GENERATOR_FORMAT,
            "arch": gs.cfg.arch,
            "net": gs.net_cfg.to_dict(),
            "state_dict": b["state_dict"] if b else {k: v.cpu().clone() for k, v in gs.G_eval.state_dict().items()},
            "step": b["step"] if b else self.progress.step,
            **({metric: b["value"] if b else None} if metric else {}),
            "data_sha256": self.fingerprint["data_sha256"],
            **({"class_shares": gs.class_shares} if gs.class_shares is not None else {}),  # self-conditioned G
        }

    def export_generator(self) -> tuple[torch.nn.Module, np.ndarray]:
        """A CPU copy of the evaluated generator in eval mode behind one input tensor, and an input example."""
        return serving_model(self.generator_dict())


def set_aside(path: Path, step: Any, dist: Dist) -> Path:
    """Move the checkpoint at `path` to <stem>.prev-<UTC time>-step<N><suffix> (a new name for each),
    keeping the KEEP_SET_ASIDE latest such files; return the new path. Only rank 0 moves files."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")  # UTC, to the microsecond: never reused
    tag = f"-step{step}" if isinstance(step, int) else ""
    kept = path.with_name(f"{path.stem}.prev-{stamp}{tag}{path.suffix}")
    n = 1
    while kept.exists():  # two set aside within one microsecond
        n += 1
        kept = path.with_name(f"{path.stem}.prev-{stamp}{tag}-{n}{path.suffix}")
    if dist.main:
        os.replace(path, kept)
        os.utime(kept)  # its time is when it was set aside (which the pruning below orders by)
        older = sorted(path.parent.glob(f"{path.stem}.prev-*{path.suffix}"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        for old in older[:-KEEP_SET_ASIDE]:
            if old != kept:
                old.unlink()
    return kept
