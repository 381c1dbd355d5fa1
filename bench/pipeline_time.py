"""Time each stage of the pipeline as dvc.yaml runs it, in a scratch copy of the project.

Runs every stage command of dvc.yaml in order (what `dvc repro` runs), each as its own process,
and prints a per-stage breakdown. Works where dvc and mlflow are not installed (a bare GPU machine):
tracking is switched off unless --tracking is given.

    python bench/pipeline_time.py [--out bench/out/pipeline] [-S train.cuda_graph=off ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def set_key(params: dict, dotted: str, value: str) -> None:
    *path, last = dotted.split(".")
    node = params
    for k in path:
        node = node[k]
    node[last] = yaml.safe_load(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "pipeline")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="params override KEY=VALUE")
    ap.add_argument("--tracking", action="store_true", help="keep MLflow tracking on")
    ap.add_argument("--reuse", action="store_true", help="keep data/ and models/evaluator.pt already in --out")
    a = ap.parse_args()
    work = a.out.resolve()
    if not a.reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tracking"]["enabled"] = bool(a.tracking)
    for s in a.sets:
        key, value = s.split("=", 1)
        set_key(params, key, value)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    times = {}
    for name, stage in stages.items():
        if name == "closures":  # hashes the code for DVC: nothing to time
            continue
        if a.reuse and name in ("prepare", "fit_evaluator") and (work / "models" / "evaluator.pt").exists():
            continue
        cmd = stage["cmd"].split()
        cmd = [sys.executable, str(ROOT / cmd[1]), "--params", "params.yaml", *cmd[2:]]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        times[name] = time.perf_counter() - t0
        tail = [ln for ln in r.stdout.splitlines() if ln.strip()][-1:] or [""]
        print(f"{name:<14}{times[name]:7.1f} s   {tail[0][:110]}", flush=True)
        if r.returncode:
            sys.exit(f"stage {name} failed:\n{r.stderr[-3000:]}")
    print(f"{'total':<14}{sum(times.values()):7.1f} s")
    scores = json.loads((work / "metrics" / "eval.json").read_text())
    print(json.dumps({"seconds": times, "fid_classifier": scores.get("fid_classifier"), "n_samples": scores.get("n_samples")}))


if __name__ == "__main__":
    main()
