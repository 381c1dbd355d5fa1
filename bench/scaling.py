"""How train, sample and evaluate times grow: steps ×2 and samples ×10, on this machine.

    python bench/scaling.py [--steps 200] [--samples 1000]

Each time should grow about linearly (ratio ≈ 2 for steps ×2, ≈ 10 for samples ×10); a ratio far
above that would be a hidden quadratic. Times are wall clock, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ganflow import evaluator, metrics  # noqa: E402
from ganflow.config import load_params, parse_params  # noqa: E402
from ganflow.data import content_hash, load_source  # noqa: E402
from ganflow.sampling import PngFolder, write_samples  # noqa: E402
from ganflow.accel import seed_everything  # noqa: E402
from ganflow.outputs import TrainOutputs, TrainPaths  # noqa: E402
from ganflow.training import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--samples", type=int, default=1000)
    a = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    ds = load_source(params.prepare, "data/raw")
    sha = content_hash(ds)
    tmp = Path(tempfile.mkdtemp())
    recipe = params.evaluator.model_copy(update={"epochs": 1})
    clf, acc = evaluator.fit(ds.images, ds.labels, 10, recipe, 0)
    evaluator.save(clf, tmp / "evaluator.pt", acc, sha, 28, recipe, 0)
    cpu = torch.device("cpu")
    # the real statistics are computed once and cached (keyed by content hash), as in the pipeline
    metrics.fidelity(ds.images[:100], ds.images, "classifier", tmp / "evaluator.pt", params.evaluate, cpu)

    rows = []
    for label, steps, n in (("base", a.steps, a.samples), ("steps ×2", 2 * a.steps, a.samples), ("samples ×10", a.steps, 10 * a.samples)):
        train = params.train.model_dump() | {"steps": steps, "eval_every": 0, "device": "cpu"}
        seed_everything(params.seed, cpu)
        t = Trainer(parse_params({"train": train}), ds, sha)
        out = tmp / label.replace(" ", "").replace("×", "x")
        t0 = time.perf_counter()
        t.run(TrainOutputs(TrainPaths.under(out)))
        t_train = time.perf_counter() - t0
        G = t.gs.G_eval.eval()
        t0 = time.perf_counter()
        write_samples(G, out / "samples", n, 1, 512)
        t_sample = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics.fidelity(PngFolder(out / "samples"), ds.images, "classifier", tmp / "evaluator.pt", params.evaluate, cpu)
        t_eval = time.perf_counter() - t0
        rows.append((label, steps, n, t_train, t_sample, t_eval))
        print(f"{label:<12} steps {steps:>5}  samples {n:>6}  train {t_train:6.1f} s  sample {t_sample:6.1f} s  evaluate {t_eval:6.1f} s", flush=True)
    base = rows[0]
    print(f"train time ratio for steps ×2: {rows[1][3] / base[3]:.2f}")
    print(f"sample time ratio for samples ×10: {rows[2][4] / base[4]:.2f}")
    print(f"evaluate time ratio for samples ×10: {rows[2][5] / base[5]:.2f}")


if __name__ == "__main__":
    main()
