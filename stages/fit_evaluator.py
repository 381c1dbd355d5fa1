"""Stage fit_evaluator: train the classifier whose feature space scores the samples."""

import _checkout  # noqa: F401 - first: this checkout's ganflow, the code dvc.lock hashes

import argparse

import torch

from ganflow import accel, data, evaluator, stacked
from ganflow.config import STACKED_SOURCE, load_params
from ganflow.io import write_json
from ganflow.stage import stage


@stage
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("prepared")
    ap.add_argument("model", help="output: the classifier (evaluator.pt)")
    ap.add_argument("metrics", help="output: its held-out accuracy (JSON)")
    a = ap.parse_args(argv)
    params = load_params(a.params)

    ds, meta = data.load_prepared(a.prepared)
    accel.seed_everything(params.seed, torch.device("cpu"))
    if meta["source"] == STACKED_SOURCE:  # a digit classifier on mnist-5k's training split, per channel
        model, acc = stacked.fit_evaluator(meta, params.evaluator, params.seed)
        held_out = meta["digits"]["heldout"]
    else:
        model, acc = evaluator.fit(ds.images, ds.labels, len(ds.classes), params.evaluator, params.seed)
        held_out = evaluator.holdout_size(len(ds.images), params.evaluator.holdout)
    evaluator.save(model, a.model, acc, meta["sha256"], meta["shape"][-1], params.evaluator, params.seed)
    write_json(a.metrics, {"evaluator_accuracy": acc, "evaluator_holdout": held_out})
    print(f"evaluator held-out accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
