"""The default recipe's training step at each resolution, RGB, side by side in one process.

params.yaml's train.* (unconditional: random images carry no labels), on this machine's device and threads,
a batch of train.batch_size random RGB images per step (speed does not depend on the pixels). Timed in
interleaved rounds, the median of each. Prints steps/s and img/s per resolution: what a day of training at
that size costs here.

    python bench/resolution.py [--resolutions 32 64 128] [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
from sweep import interleaved, params_with  # first: it puts this checkout's src/ on sys.path

from ganflow import accel  # noqa: E402
from ganflow.config import parse_params  # noqa: E402
from ganflow.data import ImageSet  # noqa: E402
from ganflow.training import Trainer  # noqa: E402


def timer(resolution: int) -> tuple[Callable[[float], float], int]:
    """A trainer of params.yaml's recipe at `resolution` (RGB, unconditional), warmed up, and a function
    timing its steps for `seconds`; and its batch size."""
    params = parse_params(params_with({"prepare.resolution": resolution, "prepare.channels": 3, "train.conditional": False}))
    accel.seed_everything(params.seed, accel.select_device(params.train.device))
    images = np.random.default_rng(0).integers(0, 256, (2000, 3, resolution, resolution), dtype=np.uint8)
    gs = Trainer(params, ImageSet(images, None, []), "bench").gs
    stepper, done = gs.stepper(), [0]

    def steps_per_second(seconds: float) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            gs.advance(done[0], stepper)
            done[0] += 1
            n += 1
        return n / (time.perf_counter() - t0)

    steps_per_second(1.0)  # warm-up (and the CUDA-graph capture where there is one)
    return steps_per_second, params.train.batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    a = ap.parse_args()
    timers = {r: timer(r) for r in a.resolutions}
    rates = interleaved({r: t for r, (t, _) in timers.items()}, a.rounds, a.seconds)
    steps = parse_params(params_with({})).train.steps
    for r, rate in rates.items():
        print(f"{r} px RGB: {rate:.1f} steps/s, {rate * timers[r][1]:.0f} img/s; train.steps {steps} take {steps / rate / 60:.0f} min")


if __name__ == "__main__":
    main()
