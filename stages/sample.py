"""Stage sample: N PNGs from the generator; image i depends on (sample.seed, i) only."""

import _checkout  # noqa: F401 - first: this checkout's ganflow, the code dvc.lock hashes

import argparse

from ganflow.accel import select_device
from ganflow.config import load_params
from ganflow.generator import load_generator
from ganflow.sampling import write_samples
from ganflow.stage import stage


@stage
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("generator", help="the last generator")
    ap.add_argument("generator_best", help="the best generator by FID during training")
    ap.add_argument("out", help="output folder of PNGs")
    ap.add_argument("grid", help="output: a grid of samples (conditional G: one row per class)")
    a = ap.parse_args(argv)
    params = load_params(a.params)
    cfg = params.sample

    device = select_device(params.train.device)
    G, info = load_generator(a.generator_best if cfg.checkpoint == "best" else a.generator, device)
    ms = write_samples(G, a.out, cfg.n, cfg.seed, cfg.batch_size, device, cfg.classes, cfg.workers, grid=a.grid)
    print(f"wrote {cfg.n} samples of the {cfg.checkpoint} generator (step {info['step']}) to {a.out} ({ms:.2f} s per 1,000 images)")


if __name__ == "__main__":
    main()
