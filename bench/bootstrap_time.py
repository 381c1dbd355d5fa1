"""The evaluate stage with and without the FID bootstrap interval, side by side in one run.

Builds a scratch project (prepare, a 1-epoch evaluator, a short training: only the timing matters),
samples sample.n images, then runs the evaluate stage as dvc.yaml runs it, alternating
evaluate.bootstrap=0 and the default, after one warm-up run that fills the real-feature cache.
Prints each run's wall time and the ratio of the medians (the issue's goal: <= 1.3 at 5,000 samples).

    python bench/bootstrap_time.py [--n 5000] [--rounds 2] [--out DIR (default: $TMPDIR/ganflow-bootstrap-bench)] [--reuse]

--reuse keeps DIR's project from an earlier run at the same --n (only the evaluate runs are timed again).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = {"evaluator": {"epochs": 1}, "train": {"steps": 40, "device": "cpu", "eval_every": 0},
           "tracking": {"enabled": False}, "evaluate": {"cas": "off", "inception": "off"}}


def run(stage: dict, work: Path, env: dict, params: str = "params.yaml") -> float:
    cmd = stage["cmd"].split()
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / cmd[1]), "--params", params, *cmd[2:]], cwd=work, env=env,
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{cmd[1]} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="samples scored")
    ap.add_argument("--rounds", type=int, default=2, help="pairs of evaluate runs (with, without the interval)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "ganflow-bootstrap-bench")
    ap.add_argument("--reuse", action="store_true", help="keep the project an earlier run left in --out")
    a = ap.parse_args()
    work = a.out.resolve()
    reuse = a.reuse and (work / "samples").is_dir()
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in SCRATCH.items():
        params[section].update(values)
    params["sample"]["n"] = a.n
    reps = params["evaluate"]["bootstrap"]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    params["evaluate"]["bootstrap"] = 0
    (work / "params_noboot.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "TORCH_HOME": str(work / ".torch")}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in () if reuse else ("prepare", "fit_evaluator", "train", "sample"):
        print(f"{name:<14}{run(stages[name], work, env):7.1f} s", flush=True)
    print(f"{'warm-up':<14}{run(stages['evaluate'], work, env, 'params_noboot.yaml'):7.1f} s  (fills the feature cache)")
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(a.rounds):
        for label, file in (("with", "params.yaml"), ("without", "params_noboot.yaml")):
            times[label].append(run(stages["evaluate"], work, env, file))
            print(f"evaluate, {label} the interval ({reps if label == 'with' else 0} resamples): {times[label][-1]:.1f} s", flush=True)
    ratio = statistics.median(times["with"]) / statistics.median(times["without"])
    print(f"n={a.n}  median with {statistics.median(times['with']):.1f} s / without {statistics.median(times['without']):.1f} s"
          f"  ratio {ratio:.2f}  (goal <= 1.3; wall times on a shared machine are noisy)")


if __name__ == "__main__":
    main()
