"""The training step's small CPU levers, each switched off in turn, side by side in one process:
fused Adam (`accel.Levers.fused`: one kernel per optimiser step; on the CPU too since torch 2.4), D's
spectral norms computed once per loss (`parametrize.cached` in `GanStep.step`: one power iteration for
D's real and fake calls instead of one per call), and no NaN filling of new tensors under deterministic
mode (`torch.utils.deterministic.fill_uninitialized_memory`, switched off by `accel.seed_everything`).

Each data set's default recipe (its lazy R1 step included) is timed in interleaved rounds (the median of
each), on this machine's device and threads: the default, each lever off alone, and all off. Prints
steps/s and the ratio to the default.

    python bench/step_levers.py --project DIR [--data params|uncond|stacked] [--rounds 5] [--seconds 3]

DIR holds data/prepared and models/evaluator.pt made with that data's params (as bench/sweep.py's).
"""

from __future__ import annotations

import contextlib

import torch.utils.deterministic
from torch.nn.utils import parametrize

from ganflow import accel
from sweep import DATA, interleaved, step_bench_args, step_timer, training_split

LEVERS = ("fused Adam", "spectral norm once per loss", "no NaN fill")


def main() -> None:
    a = step_bench_args(__doc__)
    images = training_split(a.project.resolve())
    cached, cache_on = parametrize.cached, [True]
    parametrize.cached = lambda: cached() if cache_on[0] else contextlib.nullcontext()  # what GanStep.step calls
    combos = [(True, True, True)] + [tuple(i != j for j in range(3)) for i in range(3)] + [(False, False, False)]
    timers = {}
    for fused, cache, no_fill in combos:
        accel.Levers.fused = property(lambda self, on=fused: on)  # read when the trainer builds its optimisers
        timers[fused, cache, no_fill] = switched(step_timer(DATA[a.data], images), cache, no_fill, cache_on)
    rates = interleaved(timers, a.rounds, a.seconds)
    default = rates[True, True, True]
    for combo, rate in rates.items():
        off = [name for name, on in zip(LEVERS, combo) if not on]
        print(f"{a.data} {'off: ' + ', '.join(off) if off else 'default (all on)'}: {rate:.1f} steps/s ({rate / default:.3f} of the default)")
    print(f"ratio default / all off: {default / rates[False, False, False]:.3f}")


def switched(timer, cache: bool, no_fill: bool, cache_on: list[bool]):
    """`timer` with the per-loss spectral norm and the NaN fill set as given while it runs."""
    def timed(seconds: float) -> float:
        cache_on[0] = cache
        torch.utils.deterministic.fill_uninitialized_memory = not no_fill
        return timer(seconds)
    return timed


if __name__ == "__main__":
    main()
