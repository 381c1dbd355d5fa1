"""The default recipe's training step at each resolution, RGB, side by side in one process.

params.yaml's train.* (unconditional: random images carry no labels), on this machine's device and threads,
a batch of train.batch_size random RGB images per step (speed does not depend on the pixels). Timed in
interleaved rounds, the median of each. Prints steps/s and img/s per resolution: what a day of training at
that size costs here.

    python bench/resolution.py [--resolutions 32 64 128] [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse

import numpy as np
from sweep import interleaved, params_with, step_timer  # first: it puts this checkout's src/ on sys.path

from ganflow.config import parse_params  # noqa: E402
from ganflow.data import ImageSet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    timers = {r: step_timer({"prepare.resolution": r, "prepare.channels": 3, "train.conditional": False},
                            ImageSet(rng.integers(0, 256, (2000, 3, r, r), dtype=np.uint8), None, []))
              for r in a.resolutions}
    rates = interleaved(timers, a.rounds, a.seconds)
    train = parse_params(params_with({})).train
    for r, rate in rates.items():
        print(f"{r} px RGB: {rate:.1f} steps/s, {rate * train.batch_size:.0f} img/s; "
              f"train.steps {train.steps} take {train.steps / rate / 60:.0f} min")


if __name__ == "__main__":
    main()
