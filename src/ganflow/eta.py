"""How long a training run will take: the steps left × the step time measured after a warm-up, plus
the FID checks still due × their measured time. Pure: it sees only the clock readings it is given.

The first `warmup` steps are not used for the rate (allocator and cuDNN warm-up, torch.compile, the
CUDA-graph capture); they are counted as one lump, so the total estimate includes the capture on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass


def checks_left(step: int, steps: int, every: int) -> int:
    """FID checks still due after `step`: at each multiple of `every` up to `steps`, and at the last step
    (the cadence of training.due); none when every is 0."""
    if every <= 0 or step >= steps:
        return 0
    n = steps // every - step // every
    return n + (steps % every != 0)


def duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 2 h 07 min."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass
class Eta:
    """Feed it (step, seconds since the run started, seconds spent in FID checks so far, checks done) as the
    run goes: every step (cheap), or at each log interval; `left()` is the estimate of the seconds still to go,
    None until `warmup` steps after the warm-up were timed (step 2 × warmup of a fresh run). On a GPU the
    clock runs ahead of the device for the first steps only: the warm-up absorbs that."""

    steps: int  # train.steps
    start: int = 0  # the step the run starts (or resumes) at
    eval_every: int = 0  # train.eval_every
    warmup: int = 10  # steps (after start) whose time is not used for the rate
    _warm: tuple[int, float, float] | None = None  # (step, seconds, eval seconds) at the end of the warm-up
    _now: tuple[int, float, float, int] = (0, 0.0, 0.0, 0)  # the latest (step, seconds, eval seconds, checks)

    def update(self, step: int, seconds: float, eval_seconds: float = 0.0, checks: int = 0) -> None:
        self._now = (step, seconds, eval_seconds, checks)
        if self._warm is None and step >= self.start + min(self.warmup, self.steps - self.start):
            self._warm = (step, seconds, eval_seconds)

    @property
    def warm(self) -> bool:
        return self._warm is not None

    def step_seconds(self) -> float | None:
        """Seconds per training step, FID checks left out: over the steps since the warm-up (the warm-up
        itself until then)."""
        step, seconds, evals, _ = self._now
        w_step, w_seconds, w_evals = self._warm if self._warm and step > self._warm[0] else (self.start, 0.0, 0.0)
        done = step - w_step
        return (seconds - w_seconds - (evals - w_evals)) / done if done > 0 else None

    def check_seconds(self) -> float | None:
        _, _, evals, checks = self._now
        return evals / checks if checks else None

    def left(self) -> float | None:
        """Seconds still to go (FID checks not yet timed count as 0: `text` says so)."""
        step = self._now[0]
        if not (self._warm and step - self._warm[0] >= min(self.warmup, self.steps - self._warm[0]) and step > self._warm[0]):
            return None  # the rate is measured over `warmup` steps after the warm-up, at least
        rate = self.step_seconds()
        return (self.steps - step) * rate + checks_left(step, self.steps, self.eval_every) * (self.check_seconds() or 0.0)

    def text(self) -> str:
        """One line for the log, the progress line and the MLflow run description."""
        left = self.left()
        if left is None:
            return "ETA: measuring"
        step, seconds, _, _ = self._now
        checks = checks_left(step, self.steps, self.eval_every)
        check_s = self.check_seconds()
        fid = ("" if not checks else
               f" + {checks} FID checks × {check_s:.1f} s" if check_s is not None else
               f" + {checks} FID checks (not timed yet)")
        return (f"ETA {duration(left)} ({self.steps - step:,} steps × {self.step_seconds() * 1000:.1f} ms{fid}); "
                f"{duration(seconds + left)} in all")
