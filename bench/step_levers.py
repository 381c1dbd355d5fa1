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

import argparse
import contextlib
import statistics
from pathlib import Path

from torch.nn.utils import parametrize

from ganflow import accel
from sweep import DATA, step_timer, training_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--data", choices=sorted(DATA), default="params")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    images = training_split(a.project.resolve())
    cached, cache_on = parametrize.cached, [True]
    parametrize.cached = lambda: cached() if cache_on[0] else contextlib.nullcontext()  # what GanStep.step calls
    timers = {}
    for fused in (True, False):
        accel.Levers.fused = property(lambda self, on=fused: on)  # read when the trainer builds its optimisers
        for cache in (True, False):
            cache_on[0] = cache
            timers[fused, cache] = step_timer(DATA[a.data], images)
    samples: dict[tuple[bool, bool], list[float]] = {key: [] for key in timers}
    for _ in range(a.rounds):
        for (fused, cache), timer in timers.items():
            cache_on[0] = cache
            samples[fused, cache].append(timer(a.seconds))
    rates = {key: statistics.median(v) for key, v in samples.items()}
    for (fused, cache), rate in rates.items():
        print(f"{a.data} fused Adam {'on ' if fused else 'off'}, spectral norm once per loss {'on ' if cache else 'off'}: "
              f"{rate:.1f} steps/s ({rate / rates[True, True]:.3f} of the default)")
    print(f"ratio default / both off: {rates[True, True] / rates[False, False]:.3f}")


if __name__ == "__main__":
    main()
