"""Validation of the label-free (SimCLR) feature space on mnist-5k with its labels hidden: the table in
docs/unlabelled.md, and the helpers tests/test_unlabelled.py asserts the same properties with.

    python bench/unlabelled.py [--out bench/out/unlabelled.json] [--steps 25,50,...] [--n 1000]

1. Times the fit_evaluator stage (wall and CPU) on a flat folder of the 5,000 digits (no labels: it
   fits the encoder with the params.yaml recipe), after the prepare stage made data/prepared of it.
2. Real vs real: FD of the evaluator's held-out images against its training split, with the basic
   bootstrap interval (the floor: the interval reaches 0).
3. FD of degraded held-out images: Gaussian blur and pixel noise at 3 strengths each, and one class
   removed from a draw of training images at 0 / 50 / 100 %.
4. Rank agreement: FD of generator snapshots (checkpoints about x1.5 apart in steps along one
   unconditional dcgan run, plus a `seed`-arch run that collapses) in the SimCLR space and in the classifier space (a classifier fitted on the true
   labels, for reference only); Spearman's rho between the two rankings.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torchvision.transforms.v2 import functional as TF

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ganflow import evaluator, metrics as m  # noqa: E402
from ganflow.config import EvaluateConfig, EvaluatorConfig, parse_params  # noqa: E402
from ganflow.data import ImageSet  # noqa: E402

BLUR = (0.5, 1.0, 1.5)  # Gaussian sigma, pixels
NOISE = (16.0, 32.0, 64.0)  # std of additive Gaussian pixel noise, in 0–255 units (std 8 is below the floor: see the doc)
REMOVED = (0.0, 0.5, 1.0)  # share of class 0 removed
ECFG = EvaluateConfig(inception="off", batch_size=250)
CPU = torch.device("cpu")


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    k = 2 * int(np.ceil(3 * sigma)) + 1
    return TF.gaussian_blur(torch.from_numpy(images), [k, k], [sigma, sigma]).numpy()


def noise(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images).float() + std * torch.randn(images.shape, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def without_class(images: np.ndarray, labels: np.ndarray, share: float, n: int, cls: int = 0, seed: int = 0) -> np.ndarray:
    """n images drawn from `images` after removing `share` of class `cls`."""
    rng = np.random.default_rng(seed)
    members = np.flatnonzero(labels == cls)
    drop = rng.permutation(members)[: int(round(share * len(members)))]
    keep = np.setdiff1d(np.arange(len(images)), drop)
    return images[rng.choice(keep, size=n, replace=False)]


def fd(samples: np.ndarray, ref: torch.Tensor, space: str, path: Path) -> float:
    return m.fid(m.extract(samples, space, path, ECFG, CPU).emb, ref)


def degradations(ds: ImageSet, train: np.ndarray, heldout: np.ndarray, space: str, path: Path, n_class: int) -> dict:
    """FD per degradation and strength, the clean held-out set first (strength 0)."""
    ref = m.extract(ds.images[train], space, path, ECFG, CPU).emb
    held = ds.images[heldout]
    out = {"blur": [fd(held, ref, space, path)] + [fd(blur(held, s), ref, space, path) for s in BLUR]}
    out["noise"] = [out["blur"][0]] + [fd(noise(held, s), ref, space, path) for s in NOISE]
    out["class_removed"] = [fd(without_class(ds.images[train], ds.labels[train], r, n_class), ref, space, path) for r in REMOVED]
    return out


def floor(ds: ImageSet, train: np.ndarray, heldout: np.ndarray, space: str, path: Path, reps: int = 200) -> dict:
    """FD of held-out vs training images, with its basic bootstrap interval."""
    a = m.extract(ds.images[heldout], space, path, ECFG, CPU).emb
    b = m.extract(ds.images[train], space, path, ECFG, CPU).emb
    lo, hi = m.fid_interval(a, b, reps, 0)
    return {"fd": m.fid(a, b), "low": lo, "high": hi}


DCGAN_STEPS = (25, 50, 100, 200, 300, 400, 600, 800, 1200, 1600)  # about x1.5 apart: snapshots of clearly different quality
SEED_STEPS = (100, 300, 600)  # the `seed` arch collapses (one blurred digit) by step 300


def snapshots(train_set: ImageSet, dcgan_steps, seed_steps, n: int, width: int = 32) -> list[tuple[str, np.ndarray]]:
    """(name, n samples) of the EMA generator of one unconditional dcgan run at each of `dcgan_steps`,
    then of one `seed`-arch run at each of `seed_steps`."""
    from ganflow import accel
    from ganflow.outputs import TrainOutputs, TrainPaths
    from ganflow.sampling import generate
    from ganflow.training import Selection, Trainer

    out: list[tuple[str, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, wanted in (("dcgan", dcgan_steps), ("seed", seed_steps)):
            every = int(np.gcd.reduce(list(wanted)))  # the selection job runs every gcd steps and keeps the wanted ones
            params = parse_params({"train": {"arch": arch, "steps": max(wanted), "eval_every": every, "device": "cpu",
                                             "width": width, "log_every": every, "sample_every": max(wanted),
                                             "checkpoint_every": max(wanted)}})
            accel.seed_everything(0, CPU)
            t = Trainer(params, train_set, "bench")

            def keep(G, arch=arch, t=t, wanted=wanted):
                if t.state.step in wanted:
                    out.append((f"{arch} step {t.state.step}", generate(G, 1, 0, n, CPU).numpy()))
                return 0.0

            paths = TrainPaths.under(Path(tmp) / arch)
            paths.checkpoint.parent.mkdir()
            t.run(TrainOutputs(paths), selection=Selection("snapshot", keep))
    return out


def rank_agreement(snaps: list[tuple[str, np.ndarray]], ds: ImageSet, train: np.ndarray,
                   paths: dict[str, Path]) -> dict:
    from scipy.stats import spearmanr

    fds = {}
    for space, path in paths.items():
        ref = m.extract(ds.images[train], space, path, ECFG, CPU).emb
        fds[space] = [fd(x, ref, space, path) for _, x in snaps]
    rho = float(spearmanr(fds["simclr"], fds["classifier"]).statistic)
    return {"snapshots": [name for name, _ in snaps], "fd": fds, "spearman": rho}


def time_stage(tmp: Path, ds: ImageSet) -> dict:
    """prepare + fit_evaluator stages on a flat folder of the digits; wall and CPU seconds of fit_evaluator."""
    from PIL import Image

    (tmp / "flat").mkdir()
    for i, x in enumerate(ds.images):
        Image.fromarray(x[0]).save(tmp / "flat" / f"{i:04d}.png")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(source="folder", folder=str(tmp / "flat"))
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    run = lambda *a: subprocess.run([sys.executable, *a], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(ROOT / "stages/prepare.py"), "--params", str(tmp / "params.yaml"), str(tmp / "prepared"), str(tmp / "real.png"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run(str(ROOT / "stages/fit_evaluator.py"), "--params", str(tmp / "params.yaml"), str(tmp / "prepared"),
        str(tmp / "simclr.pt"), str(tmp / "simclr.json"))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"fit_evaluator_wall_s": wall, "fit_evaluator_cpu_s": cpu, "load_1min": __import__("os").getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench/out/unlabelled.json"))
    ap.add_argument("--steps", default=",".join(map(str, DCGAN_STEPS)), help="dcgan snapshot steps, comma-separated")
    ap.add_argument("--seed-steps", default=",".join(map(str, SEED_STEPS)), help="seed-arch snapshot steps")
    ap.add_argument("--n", type=int, default=1000, help="samples per snapshot")
    ap.add_argument("--width", type=int, default=32, help="train.width of the snapshot runs")
    ap.add_argument("--encoder", type=Path, help="an evaluator file fitted by a previous run's stage: skip the timing")
    ap.add_argument("--only-simclr", action="store_true", help="no classifier, no ranking: the floor and the degradations")
    a = ap.parse_args()
    from ganflow.config import PrepareConfig
    from ganflow.data import content_hash, load_source

    ds = load_source(PrepareConfig(), "unused")
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    cfg: EvaluatorConfig = params.evaluator
    heldout, train = evaluator.split(len(ds.images), cfg.holdout, params.seed)
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.encoder:
            res["timing"] = f"not measured: encoder from {a.encoder}"
        else:
            res["timing"] = time_stage(tmp, ds)
        print(res["timing"], flush=True)
        paths = {"simclr": a.encoder or tmp / "simclr.pt", "classifier": tmp / "classifier.pt"}
        if a.only_simclr:
            paths.pop("classifier")
        else:
            torch.manual_seed(params.seed)
            model, acc = evaluator.fit(ds.images, ds.labels, 10, cfg, params.seed)  # the reference space (labels used)
            evaluator.save(model, paths["classifier"], acc, content_hash(ds), 28, cfg, params.seed)
            res["classifier_accuracy"] = acc
        for space, path in paths.items():
            res[space] = {"floor": floor(ds, train, heldout, space, path),
                          "degradations": degradations(ds, train, heldout, space, path, 2000)}
            print(space, res[space], flush=True)
        if not a.only_simclr:
            steps, seed_steps = ([int(s) for s in v.split(",")] for v in (a.steps, a.seed_steps))
            snaps = snapshots(ImageSet(ds.images[train], None, []), steps, seed_steps, a.n, a.width)
            res["snapshot_runs"] = {"dcgan_steps": steps, "seed_steps": seed_steps, "n": a.n, "width": a.width}
            res["ranking"] = rank_agreement(snaps, ds, train, paths)
            print(res["ranking"], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
