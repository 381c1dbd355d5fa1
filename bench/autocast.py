"""The training step in float32 and in bf16 autocast (train.autocast), side by side in one process.

Each data set's default recipe (its lazy R1 step included, as the train stage runs it) is timed in
interleaved rounds (the median of each, so a load spike hits both), on this machine's device and
threads. Prints steps/s of each and the ratio: what `train.autocast: auto` buys per second.

    python bench/autocast.py --project DIR [--data params|uncond|stacked] [--rounds 5] [--seconds 3]

DIR holds data/prepared and models/evaluator.pt made with that data's params (as bench/sweep.py's).
"""

from __future__ import annotations

from sweep import DATA, calibrate, step_bench_args, training_split


def main() -> None:
    a = step_bench_args(__doc__)
    images = training_split(a.project.resolve())
    rates = calibrate({mode: {**DATA[a.data], "train.autocast": mode, "train.channels_last": False} for mode in ("off", "bf16")},
                      images, a.rounds, a.seconds)
    for mode, rate in rates.items():
        print(f"{a.data} train.autocast {mode}: {rate:.1f} steps/s")
    print(f"ratio bf16 / float32: {rates['bf16'] / rates['off']:.2f}")


if __name__ == "__main__":
    main()
