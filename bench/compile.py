"""The training step eager and under torch.compile (train.compile), side by side in one process.

Each data set's default recipe (its lazy R1 step included, which runs the uncompiled D: a double backward)
is timed in interleaved rounds (the median of each), on this machine's device and threads, after 5 warm-up
steps that pay for compilation. Prints steps/s of each and the ratio: what `train.compile: true` buys per
second once compiled.

    python bench/compile.py --project DIR [--data params|uncond|stacked] [--rounds 5] [--seconds 3]

DIR holds data/prepared and models/evaluator.pt made with that data's params (as bench/sweep.py's).
"""

from __future__ import annotations

from sweep import DATA, calibrate, step_bench_args, training_split


def main() -> None:
    a = step_bench_args(__doc__)
    images = training_split(a.project.resolve())
    rates = calibrate({on: {**DATA[a.data], "train.compile": on} for on in (False, True)}, images, a.rounds, a.seconds)
    for on, rate in rates.items():
        print(f"{a.data} train.compile {str(on).lower()}: {rate:.1f} steps/s")
    print(f"ratio compiled / eager: {rates[True] / rates[False]:.2f}")


if __name__ == "__main__":
    main()
