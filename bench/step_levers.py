"""The training step's two small CPU levers, each switched off in turn, side by side in one process:
fused Adam (`accel.Levers.fused`: one kernel per optimiser step; on the CPU too since torch 2.4) and D's
spectral norms computed once per loss (`parametrize.cached` in `GanStep.step`: one power iteration for
D's real and fake calls instead of one per call).

Each data set's default recipe (its lazy R1 step included) is timed in interleaved rounds (the median of
each), on this machine's device and threads. Prints steps/s of the four combinations and their ratio to
the default (both on).

    python bench/step_levers.py --project DIR [--data params|uncond|stacked] [--rounds 5] [--seconds 3]

DIR holds data/prepared and models/evaluator.pt made with that data's params (as bench/sweep.py's).
"""

from __future__ import annotations

import contextlib

from torch.nn.utils import parametrize

from ganflow import accel
from sweep import DATA, interleaved, step_bench_args, step_timer, training_split


def main() -> None:
    a = step_bench_args(__doc__)
    images = training_split(a.project.resolve())
    cached, cache_on = parametrize.cached, [True]
    parametrize.cached = lambda: cached() if cache_on[0] else contextlib.nullcontext()  # what GanStep.step calls
    timers = {}
    for fused in (True, False):
        accel.Levers.fused = property(lambda self, on=fused: on)  # read when the trainer builds its optimisers
        for cache in (True, False):
            cache_on[0] = cache
            timers[fused, cache] = with_cache(step_timer(DATA[a.data], images), cache, cache_on)
    rates = interleaved(timers, a.rounds, a.seconds)
    for (fused, cache), rate in rates.items():
        print(f"{a.data} fused Adam {'on ' if fused else 'off'}, spectral norm once per loss {'on ' if cache else 'off'}: "
              f"{rate:.1f} steps/s ({rate / rates[True, True]:.3f} of the default)")
    print(f"ratio default / both off: {rates[True, True] / rates[False, False]:.3f}")


def with_cache(timer, cache: bool, cache_on: list[bool]):
    """`timer` with the per-loss spectral norm switched on or off while it runs."""
    def timed(seconds: float) -> float:
        cache_on[0] = cache
        return timer(seconds)
    return timed


if __name__ == "__main__":
    main()
