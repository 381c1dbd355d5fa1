"""Does the CUDA graph change what training reaches? The default config trained for the same number of
steps eager and graphed, over several seeds, each generator scored the way evaluate scores it
(classifier-space FID of N samples against the prepared data). The spread across seeds is the
run-to-run noise that the eager/graphed difference is judged against.

    python bench/graph_quality.py --prepared DIR --evaluator FILE [--steps 4000] [--seeds 0,1,2] [--n 5000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ganflow import metrics  # noqa: E402
from ganflow.accel import seed_everything, select_device  # noqa: E402
from ganflow.config import load_params  # noqa: E402
from ganflow.data import load_prepared  # noqa: E402
from ganflow.outputs import TrainOutputs, TrainPaths  # noqa: E402
from ganflow.sampling import generate  # noqa: E402
from ganflow.training import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--evaluator", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=5000, help="samples scored per generator")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--modes", default="on,off", help="train.cuda_graph values to compare")
    a = ap.parse_args()
    base = load_params(ROOT / "params.yaml")
    device = select_device(a.device)
    ds, meta = load_prepared(a.prepared)
    results: dict[str, list[float]] = {}
    for mode in a.modes.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            params = base.model_copy(update={"seed": seed, "train": base.train.model_copy(update={
                "steps": a.steps, "cuda_graph": mode, "device": device.type, "eval_every": 0,
                "checkpoint_every": a.steps, "sample_every": a.steps})})
            seed_everything(seed, device)
            t = Trainer(params, ds, meta["sha256"])
            out = Path(tempfile.mkdtemp())
            t0 = time.perf_counter()
            s = t.run(TrainOutputs(TrainPaths.under(out)))
            seconds = time.perf_counter() - t0
            x = generate(t.gs.G_eval.eval(), 1, 0, a.n, device).numpy()
            real = metrics.real_features(ds.images, "classifier", a.evaluator, params.evaluate, device).emb
            fid = metrics.fid(metrics.extract(x, "classifier", a.evaluator, params.evaluate, device).emb, real)
            results.setdefault(mode, []).append(fid)
            print(f"cuda_graph {mode:<4} seed {seed}: {a.steps} steps in {seconds:6.1f} s "
                  f"({s['train_img_per_s']:,.0f} img/s), fid_classifier {fid:.2f} (N = {a.n})", flush=True)
    for mode, fids in results.items():
        print(f"cuda_graph {mode}: fid_classifier mean {np.mean(fids):.2f}, seed-to-seed std {np.std(fids, ddof=1) if len(fids) > 1 else 0:.2f}")


if __name__ == "__main__":
    main()
