"""The training step in NCHW and NHWC (train.channels_last), each in float32 and in bf16 autocast, side by side
in one process: what `train.channels_last: auto` buys on this machine (it turns NHWC on for a bf16 step on a
CPU with AMX, whose bf16 convolutions are NHWC kernels).

Each recipe (its lazy R1 step included, as the train stage runs it) is timed in interleaved rounds (the median
of each), on this machine's device and threads. Prints steps/s of each and the NHWC / NCHW ratio per precision.

    python bench/layout.py --project DIR [--data params|uncond|stacked] [--rounds 5] [--seconds 3]
    python bench/layout.py --rgb 64    # an unlabelled RGB set of that side (random pixels: speed only)

DIR holds data/prepared and models/evaluator.pt made with that data's params (as bench/sweep.py's).
"""

from __future__ import annotations

import numpy as np

from ganflow.data import ImageSet
from sweep import DATA, calibrate, step_bench_parser, training_split


def main() -> None:
    ap = step_bench_parser(__doc__, project_required=False)
    ap.add_argument("--rgb", type=int, choices=(32, 64, 128), help="instead of --project: 4,500 random RGB images of this side")
    a = ap.parse_args()
    if a.rgb:
        images = ImageSet(np.random.default_rng(0).integers(0, 256, (4500, 3, a.rgb, a.rgb), dtype=np.uint8), None, [])
        base = {"prepare.source": "folder", "prepare.folder": ".", "prepare.channels": 3, "prepare.resolution": a.rgb}
        what = f"RGB {a.rgb} px"
    elif a.project:
        images, base, what = training_split(a.project.resolve()), DATA[a.data], a.data
    else:
        ap.error("give --project DIR or --rgb SIDE")
    recipes = {(nhwc, ac): {**base, "train.channels_last": nhwc, "train.autocast": ac}
               for ac in ("off", "bf16") for nhwc in (False, True)}
    rates = calibrate(recipes, images, a.rounds, a.seconds)
    for ac in ("off", "bf16"):
        nchw, nhwc = rates[(False, ac)], rates[(True, ac)]
        print(f"{what} autocast {ac}: NCHW {nchw:.1f}, NHWC {nhwc:.1f} steps/s; ratio NHWC / NCHW {nhwc / nchw:.2f}")


if __name__ == "__main__":
    main()
