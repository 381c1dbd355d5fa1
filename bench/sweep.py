"""The quality sweep, as DVC experiments at equal wall-clock: calibrate, queue, run, compare in MLflow.

Every candidate is a set of params overrides on top of params.yaml. Each gets the number of train.steps
that its measured step speed fits into --budget seconds of training on this machine (calibration:
every distinct recipe timed in this process, in interleaved rounds, median of each), so fast and
slow recipes are compared at equal time, not equal steps. Then each is queued as a DVC experiment named
`<prefix>-<candidate>` and the queue runs them one at a time (one process: no candidate is slowed by
another), each a full train → sample → evaluate into the MLflow experiment `sweep`. `report` reads the
runs back from MLflow (training and evaluation runs of the same DVC experiment) and prints the table.

    python bench/sweep.py queue  --budget 35 [--only base,decay] [--prefix s1] [-S evaluate.bootstrap=0]
    dvc queue start -j 1   (or: python bench/sweep.py queue ... --start, which also waits)
    python bench/sweep.py report [--prefix s1]
    python bench/sweep.py screen --data stacked --project /tmp/p --only base,rp-r1r2 --steps 1500 -S sample.n=5000
    python bench/sweep.py screen --data stacked --project /tmp/p --only base --steps 80000 --score-at 10000 40000

The sweep's runs register no model (tracking.registered_model=null) and never resume (train.resume=false).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ganflow import accel, data  # noqa: E402
from ganflow.config import parse_params  # noqa: E402
from ganflow import evaluator, stacked  # noqa: E402
from ganflow.config import STACKED_SOURCE  # noqa: E402
from ganflow.evaluation import evaluate  # noqa: E402
from ganflow.sampling import generate  # noqa: E402
from ganflow.train_state import depends_on_steps  # noqa: E402
from ganflow.training import Trainer, evaluating, training_set  # noqa: E402

EXPERIMENT = "sweep"
# name -> overrides of params.yaml (the list of candidates; "base" is params.yaml as it is)
CANDIDATES: dict[str, dict[str, object]] = {
    "base": {},
    "b128-sqrt": {"train.batch_size": 128, "train.lr_g": 0.00057, "train.lr_d": 0.00057},  # lr × √2
    "b128-lin": {"train.batch_size": 128, "train.lr_g": 0.0008, "train.lr_d": 0.0008},  # lr × 2
    "b32-sqrt": {"train.batch_size": 32, "train.lr_g": 0.00028, "train.lr_d": 0.00028},
    "ttur": {"train.lr_g": 0.0002, "train.lr_d": 0.0006},
    "decay": {"train.lr_decay": 0.5},
    "ema-2k": {"train.ema": 2000.0},
    "ema-10k-ramp": {"train.ema": 10000.0, "train.ema_rampup": 0.05},
    "ema-ramp": {"train.ema_rampup": 0.05},
    "lecam": {"train.lecam": 0.3},
    "width-24": {"train.width": 24},
    "width-48": {"train.width": 48},
    "conditional": {"train.conditional": True},
    "diffaug": {"train.augment": ["translation", "cutout"]},
    # round 2: b128-lin beat b128-sqrt, so a higher learning rate at batch 64; and the round-1 winners combined
    "lr6": {"train.lr_g": 0.0006, "train.lr_d": 0.0006},
    "lr8": {"train.lr_g": 0.0008, "train.lr_d": 0.0008},
    "lr8-decay": {"train.lr_g": 0.0008, "train.lr_d": 0.0008, "train.lr_decay": 0.3},
    "lecam-1": {"train.lecam": 1.0},
    "w24-lecam": {"train.width": 24, "train.lecam": 0.3},
    "w24-lecam-lr8": {"train.width": 24, "train.lecam": 0.3, "train.lr_g": 0.0008, "train.lr_d": 0.0008},
    # round 3: lr 6e-4 won round 2; what adds to it
    "lr6-lecam": {"train.lr_g": 0.0006, "train.lr_d": 0.0006, "train.lecam": 0.3},
    "lr6-w24": {"train.lr_g": 0.0006, "train.lr_d": 0.0006, "train.width": 24},
    "lr6-ema2k": {"train.lr_g": 0.0006, "train.lr_d": 0.0006, "train.ema": 2000.0},
    "lr6-decay": {"train.lr_g": 0.0006, "train.lr_d": 0.0006, "train.lr_decay": 0.2},
    # round 4: precision stays below 0.80 everywhere; candidates that might trade recall for it (none did)
    "lr6-ns": {"train.lr_g": 0.0006, "train.lr_d": 0.0006, "train.loss": "non-saturating"},
    "lr6-z32": {"train.lr_g": 0.0006, "train.lr_d": 0.0006, "train.z_dim": 32},
    "lr6-betas05": {"train.lr_g": 0.0006, "train.lr_d": 0.0006, "train.betas": [0.5, 0.9]},
    "lr6-ema10k": {"train.lr_g": 0.0006, "train.lr_d": 0.0006, "train.ema": 10000.0},
    # round 7 (on the lr 6e-4 default): top-k training, G learning from the fakes D rates most real
    "topk-50": {"train.topk": 0.5},
    "topk-75": {"train.topk": 0.75},
    "g48": {"train.width": 48, "train.d_width": 32},  # a wider G alone
    "d48": {"train.d_width": 48},  # a wider D alone
    "g64": {"train.width": 64, "train.d_width": 32},  # round 17 (StackedMNIST: three digits for one G)
    "d16": {"train.d_width": 16},  # round 17: a narrower D, 1.4-1.5x the steps in the same time
    "g48-d16": {"train.width": 48, "train.d_width": 16},
    # round 8 (full budget): D costs most of a step, so a narrower D buys a wider G
    "g48-d24": {"train.width": 48, "train.d_width": 24},
    "g64-d24": {"train.width": 64, "train.d_width": 24},
    # round 9 (full budget): lazy R1, and conditional training with the pooled projection head
    "r1": {"train.r1": 10.0},
    "cond": {"train.conditional": True},
    "cond-r1": {"train.conditional": True, "train.r1": 10.0},
    # round 10: DiffAugment at the full budget, on the round-9 winner
    "cond-r1-diffaug": {"train.conditional": True, "train.r1": 10.0, "train.augment": ["translation", "cutout"]},
    # issue 18 (run with --data stacked or --data uncond): the R3GAN recipe against today's (hinge + R1 γ 10)
    "rp-r1r2": {"train.loss": "rpgan", "train.r2": 10.0},
    "hinge-r1r2": {"train.r2": 10.0},
    "rp-r1": {"train.loss": "rpgan"},
    "rp-r1r2-g1": {"train.loss": "rpgan", "train.r1": 1.0, "train.r2": 1.0},
    "rp-r1r2-g3": {"train.loss": "rpgan", "train.r1": 3.0, "train.r2": 3.0},
    "rp-r1r2-cos": {"train.loss": "rpgan", "train.r2": 10.0, "train.gamma_schedule": "cosine"},
    "rp-r1r2-w48": {"train.loss": "rpgan", "train.r2": 10.0, "train.width": 48},
    "rp-r1r2-lr4": {"train.loss": "rpgan", "train.r2": 10.0, "train.lr_g": 0.0004, "train.lr_d": 0.0004},
    "rp-r1r2-e4": {"train.loss": "rpgan", "train.r2": 10.0, "train.r1_every": 4},
    "ns-r1r2": {"train.loss": "non-saturating", "train.r2": 10.0},
    # round 14 (issue 18): today's recipe with a weaker or stronger R1
    "r1-g3": {"train.r1": 3.0},
    "r1-g1": {"train.r1": 1.0},
    "r1-g30": {"train.r1": 30.0},
    "r1-g100": {"train.r1": 100.0},
    # round 15 (issue 18): R1 without spectral norm (as StyleGAN2 and R3GAN), a higher learning rate
    "r1-nosn": {"train.d_norm": "none"},
    "lr10": {"train.lr_g": 0.001, "train.lr_d": 0.001},
    "lr14": {"train.lr_g": 0.0014, "train.lr_d": 0.0014},
    # from here on params.yaml's lr is 1e-3: levers that may pay at the higher rate
    "decay3": {"train.lr_decay": 0.3},
    "d14": {"train.lr_d": 0.0014},
    "beta2-99": {"train.betas": [0.0, 0.99]},
    "g14": {"train.lr_g": 0.0014},
    "lr12": {"train.lr_g": 0.0012, "train.lr_d": 0.0012},
    # round 16 (issue 18): a wider latent; batch 32 at the higher rate (lr × 1/√2; run 1.78× the steps: equal time)
    "z128": {"train.z_dim": 128},
    "b32-lr7": {"train.batch_size": 32, "train.lr_g": 0.0007, "train.lr_d": 0.0007},
    # round 16: self-conditioning on k-means clusters of the pixels (train.clusters; auto: 50 from this round on)
    "clusters-0": {"train.clusters": 0},
    "clusters-20": {"train.clusters": 20},
    "clusters-100": {"train.clusters": 100},
    "clusters-200": {"train.clusters": 200},
    "clusters-256": {"train.clusters": 256},  # one per 90 of StackedMNIST's 23,040 training images (auto from this round on)
    "clusters-1000": {"train.clusters": 1000},  # round 18: StackedMNIST's auto from then on (one per 23 training stacks)
}
# --data: what every candidate runs on (the overrides put before its own); the project's data/prepared and
# models/evaluator.pt must have been made with the same prepare/evaluator params (dvc repro fit_evaluator).
DATA: dict[str, dict[str, object]] = {
    "params": {},  # params.yaml as it is (labelled mnist-5k)
    "uncond": {"train.conditional": False},  # mnist-5k, unconditional
    "stacked": {"prepare.source": "stacked-mnist", "prepare.channels": 3, "sample.n": 26000},
}
# overrides that leave the work of a step unchanged: candidates differing only in these share a calibration
SPEED_NEUTRAL = {"train.lr_g", "train.lr_d", "train.lr_decay", "train.betas", "train.ema", "train.ema_rampup", "train.topk"}
RATES = ROOT / "bench" / "out" / "sweep_rates.json"
SCREEN = ROOT / "bench" / "out" / "screen.jsonl"  # the screen command's rows  # steps/s per speed key, measured on this machine
FIXED = {"train.resume": False, "tracking.experiment": EXPERIMENT, "tracking.registered_model": None}


def params_with(overrides: dict[str, object]) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node = params
        for k in path:
            node = node[k]
        node[last] = value
    return params


def speed(overrides: dict[str, object]) -> str:
    """What decides a recipe's step speed: its overrides less the speed-neutral ones (LeCam: on or off)."""
    return repr(sorted((k, bool(v) if k == "train.lecam" else v) for k, v in overrides.items()
                       if k.startswith(("train.", "prepare.")) and k not in SPEED_NEUTRAL))


def step_timer(overrides: dict[str, object], images) -> Callable[[float], float]:
    """A trainer of this recipe (warmed up by 5 steps) and a function timing its steps for `seconds`."""
    params = parse_params(params_with(overrides))
    accel.seed_everything(params.seed, accel.select_device(params.train.device))
    gs = Trainer(params, images, "calibration").gs
    stepper, done = gs.stepper(), [0]

    def step() -> None:  # the loop's one step: schedule, step, lazy phases
        gs.advance(done[0], stepper)
        done[0] += 1

    def steps_per_second(seconds: float) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step()
            n += 1
        return n / (time.perf_counter() - t0)

    for _ in range(5):
        step()
    return steps_per_second


def calibrate(recipes: dict[str, dict[str, object]], images, rounds: int = 5, seconds: float = 2.0) -> dict[str, float]:
    """Steps per second of each recipe on this machine (`interleaved`)."""
    return interleaved({key: step_timer(o, images) for key, o in recipes.items()}, rounds, seconds)


def interleaved(timers: dict, rounds: int, seconds: float) -> dict:
    """Steps per second of each timer: `rounds` interleaved timings, the median of each (a load spike
    then hits one timing of every timer, not all timings of one)."""
    samples: dict = {key: [] for key in timers}
    for _ in range(rounds):
        for key, timer in timers.items():
            samples[key].append(timer(seconds))
    return {key: statistics.median(v) for key, v in samples.items()}


def step_bench_parser(doc: str, project_required: bool = True) -> argparse.ArgumentParser:
    """The command line of the step benches (bench/autocast.py, step_levers.py, compile.py, layout.py)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, required=project_required, help="a project with data/prepared and models/evaluator.pt")
    ap.add_argument("--data", choices=sorted(DATA), default="params")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    return ap


def step_bench_args(doc: str) -> argparse.Namespace:
    return step_bench_parser(doc).parse_args()


def training_split(project: Path = ROOT):
    """The images the train stage trains on: the prepared data less the evaluator's held-out split."""
    return training_set(*data.load_prepared(project / "data" / "prepared"), project / "models" / "evaluator.pt")


def screen(a: argparse.Namespace) -> None:
    """A quick in-process screen (no DVC, no MLflow): each candidate trained for --steps on the project's
    prepared data with one thread, then scored on sample.n samples: StackedMNIST's modes and KL, or the
    classifier-space FID, precision and recall. One JSON line per candidate is appended to SCREEN, and one
    per --score-at step count that the same run passes on its way to --steps."""
    torch.set_num_threads(a.threads)  # two busy threads on a loaded 2-core machine run 5-25x slower than one
    project = Path(a.project).resolve()
    ds, meta = data.load_prepared(project / "data" / "prepared")
    images = training_split(project)
    sets = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.sets)}
    score_at = sorted(set(a.score_at or []) | {a.steps})
    if score_at[0] < 1 or score_at[-1] > a.steps:
        raise SystemExit(f"--score-at takes steps from 1 to --steps ({a.steps})")
    weights = project / "models" / "evaluator.pt"
    stacked_data = meta.get("source") == STACKED_SOURCE or DATA[a.data].get("prepare.source") == STACKED_SOURCE
    classifier = evaluator.load(weights)[0] if stacked_data else None
    for seed in a.seeds:
        for name in a.only.split(","):
            overrides = {**DATA[a.data], **CANDIDATES[name], **sets, "train.steps": a.steps, "seed": seed}
            params = parse_params(params_with(overrides))
            if len(score_at) > 1 and depends_on_steps(params.train):
                raise SystemExit(f"{name}: --score-at needs a run whose steps do not depend on train.steps (lr_decay 0, "
                                 "gamma_schedule constant), so that step k of it is step k of a k-step run")
            accel.seed_everything(seed, torch.device("cpu"))
            gs = Trainer(params, images, "screen").gs
            done, trained = 0, 0.0
            for stop in score_at:
                t0 = time.perf_counter()
                for i in range(done, stop):
                    gs.advance(i)
                done, trained = stop, trained + time.perf_counter() - t0
                row = {"data": a.data, "name": name, "seed": seed, "steps": stop, "train_seconds": round(trained, 1)}
                row |= screen_scores(gs.G_eval, params, classifier, ds, weights)
                print(json.dumps(row), flush=True)
                with SCREEN.open("a") as f:
                    f.write(json.dumps(row | {"overrides": {k: v for k, v in overrides.items() if k != "seed"} | {"train.steps": stop}}) + "\n")


def screen_scores(G_eval, params, classifier, ds, weights: Path) -> dict:
    """The screen's scores of the EMA generator now: with the digit `classifier` (StackedMNIST), modes and KL
    on sample.n samples; else the classifier-space FID, precision, recall and coverage."""
    with evaluating(G_eval) as G:
        fakes = generate(G, params.sample.seed, 0, params.sample.n)
    if classifier is not None:
        modes, kl = stacked.mode_stats(evaluator.predict(classifier, fakes.numpy()))
        return {stacked.KEY_MODES: modes, stacked.KEY_KL: round(kl, 4)}
    cfg = params.evaluate.model_copy(update={"bootstrap": 0, "inception": "off", "cas": "off"})
    r = evaluate(list(fakes), ds, weights, None, cfg, torch.device("cpu")).results
    return {k: round(r[f"{k}_classifier"], 4) for k in ("fid", "precision", "recall", "coverage")}


def dvc(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def queue(a: argparse.Namespace) -> None:
    images = training_split()
    names = a.only.split(",") if a.only else list(CANDIDATES)
    sets = dict(s.split("=", 1) for s in a.sets)
    recipes = {name: {**DATA[a.data], **CANDIDATES[name], **{k: yaml.safe_load(v) for k, v in sets.items()}} for name in names}
    speed_key = {name: speed(o) for name, o in recipes.items()}
    # rates measured once per machine are kept, so later rounds give a recipe the same steps as earlier ones
    rates = json.loads(RATES.read_text()) if RATES.exists() else {}
    missing = {speed_key[name]: recipes[name] for name in names if a.recalibrate or speed_key[name] not in rates}
    rates.update(calibrate(missing, images) if missing else {})
    RATES.parent.mkdir(parents=True, exist_ok=True)
    RATES.write_text(json.dumps(rates, indent=1, sort_keys=True) + "\n")
    for seed in a.seeds:
        for name in names:
            overrides, rate = recipes[name], rates[speed_key[name]]
            steps = max(100, round(rate * a.budget / 100) * 100)
            exp = f"{a.prefix}-{name}" + (f"-seed{seed}" if len(a.seeds) > 1 or seed else "")
            flags = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                     for k, v in {**overrides, **FIXED, "train.steps": steps, "seed": seed}.items()]
            dvc("exp", "run", "--queue", "-f", "-n", exp, *(x for f in flags for x in ("-S", f)))
            print(f"queued {exp}: {rate:.1f} steps/s -> {steps} steps in {a.budget:.0f} s  ({', '.join(flags[:len(overrides)]) or 'params.yaml'})",
                  flush=True)
    if a.start:
        dvc("queue", "start", "-j", "1")
        while any(s in dvc("queue", "status") for s in ("Queued", "Running")):
            time.sleep(15)
        print(dvc("queue", "status"))


def report(a: argparse.Namespace) -> None:
    """One row per DVC experiment of the prefix: its training run's time and its evaluation's scores."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{ROOT / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list", order_by=["start_time ASC"],
                              filter_string=f"tags.`dvc.exp_name` LIKE '{a.prefix}-%'")
    rows: dict[str, dict] = {}
    for run in runs:  # later runs of the same experiment name and seed replace earlier ones
        exp, seed = run.data.tags["dvc.exp_name"], run.data.params.get("seed", "0")
        row = rows.setdefault(exp if seed == "0" or exp.endswith(f"-seed{seed}") else f"{exp}-seed{seed}", {})
        if "train_seconds" in run.data.metrics:
            row.clear()
        row.update(run.data.metrics)
        row.setdefault("steps", run.data.params.get("train.steps"))
    cols = ["steps", "train_seconds", "fid_classifier", "precision_classifier", "recall_classifier",
            "density_classifier", "coverage_classifier", "class_coverage"]
    print("| experiment | " + " | ".join(c.removesuffix("_classifier") for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for exp, m in sorted(rows.items(), key=lambda kv: kv[1].get("fid_classifier", float("inf"))):
        cells = [str(m.get("steps"))] + [f"{m[c]:.3g}" if c in m else "-" for c in cols[1:]]
        print(f"| {exp} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queue", help="calibrate each candidate and queue it as a DVC experiment")
    q.add_argument("--budget", type=float, default=35.0, help="seconds of training per candidate")
    q.add_argument("--only", help="comma-separated candidate names (default: all)")
    q.add_argument("--data", choices=sorted(DATA), default="params", help="what the candidates train on (the project's "
                   "data/prepared must be that data: calibration times steps on it)")
    q.add_argument("--prefix", default="sweep")
    q.add_argument("--seeds", type=int, nargs="+", default=[0])
    q.add_argument("-S", dest="sets", action="append", default=[], help="override for every candidate, KEY=VALUE")
    q.add_argument("--recalibrate", action="store_true", help=f"measure every recipe again (else reuse {RATES.name})")
    q.add_argument("--start", action="store_true", help="start the queue (one worker) and wait for it")
    sc = sub.add_parser("screen", help="train each candidate in this process for --steps and score it (quick, no DVC)")
    sc.add_argument("--only", required=True, help="comma-separated candidate names")
    sc.add_argument("--data", choices=sorted(DATA), default="params")
    sc.add_argument("--project", default=str(ROOT), help="DVC project whose data/prepared and models/evaluator.pt are used")
    sc.add_argument("--steps", type=int, default=1000)
    sc.add_argument("--threads", type=int, default=1)
    sc.add_argument("--seeds", type=int, nargs="+", default=[0])
    sc.add_argument("--score-at", type=int, nargs="+", help="also score at these steps, one run (a row each; "
                    "only for runs whose schedule does not depend on train.steps)")
    sc.add_argument("-S", dest="sets", action="append", default=[], help="override for every candidate, KEY=VALUE")
    r = sub.add_parser("report", help="the table of one sweep, read from MLflow")
    r.add_argument("--prefix", default="sweep")
    a = ap.parse_args()
    {"queue": queue, "screen": screen, "report": report}[a.cmd](a)


if __name__ == "__main__":
    main()
