"""Stage prepare: a data source -> data/prepared (uint8 N×C×H×W, labels, meta.json) + a grid of real images."""

import _checkout  # noqa: F401 - first: this checkout's ganflow, the code dvc.lock hashes

import argparse

from ganflow import data
from ganflow.config import load_params
from ganflow.io import save_grid
from ganflow.stage import stage


@stage
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default="data/raw", help="download cache of torchvision data sets")
    ap.add_argument("out", help="prepared data folder")
    ap.add_argument("grid", help="PNG grid of real images")
    a = ap.parse_args(argv)
    params = load_params(a.params)

    ds = data.load_source(params.prepare, a.raw, params.evaluator.holdout, params.seed)
    meta = data.save_prepared(ds, a.out, params.prepare.source)
    images, nrow = data.example_grid(ds, seed=params.seed)
    save_grid(images, a.grid, nrow)
    print(f"prepared {meta['count']} images of shape {meta['shape']} from {meta['source']} (sha256 {meta['sha256'][:12]})")


if __name__ == "__main__":
    main()
