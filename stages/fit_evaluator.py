"""Stage fit_evaluator: fit the feature spaces that score the samples: the classifier (labelled data)
and/or the label-free SimCLR encoder (evaluator.space; auto: the encoder when the data has no labels)."""

import _checkout  # noqa: F401 - first: this checkout's ganflow, the code dvc.lock hashes

import argparse
import logging

import torch

from ganflow import accel, data, evaluator, simclr, stacked
from ganflow.config import STACKED_SOURCE, load_params
from ganflow.io import write_json
from ganflow.stage import stage

log = logging.getLogger("ganflow.fit_evaluator")


@stage
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("prepared")
    ap.add_argument("model", help="output: the classifier and/or encoder (evaluator.pt)")
    ap.add_argument("metrics", help="output: held-out accuracy / contrastive loss (JSON)")
    a = ap.parse_args(argv)
    params = load_params(a.params)
    cfg = params.evaluator

    ds, meta = data.load_prepared(a.prepared)
    spaces = simclr.spaces_to_fit(cfg.space, ds.labels is not None, a.prepared)
    simclr.check_split(len(ds.images), cfg.holdout, a.prepared)
    accel.seed_everything(params.seed, torch.device("cpu"))
    model, acc, encoder, out = None, None, None, {}
    held_out = evaluator.holdout_size(len(ds.images), cfg.holdout)
    if meta["source"] == STACKED_SOURCE:  # a digit classifier on mnist-5k's training split, per channel
        model, acc = stacked.fit_evaluator(meta, cfg, params.seed)
        held_out, spaces = meta["digits"]["heldout"], ()
        out |= {"evaluator_accuracy": acc}
        print(f"evaluator held-out accuracy {acc:.4f}")
    if "classifier" in spaces:
        model, acc = evaluator.fit(ds.images, ds.labels, len(ds.classes), cfg, params.seed)
        evaluator.refuse_failed_fit(acc, ds.labels, cfg.holdout, params.seed)
        out |= {"evaluator_accuracy": acc}
        print(f"evaluator held-out accuracy {acc:.4f}")
    if "simclr" in spaces:
        accel.seed_everything(params.seed, torch.device("cpu"))  # the same encoder whether a classifier was fitted first
        _, seen = evaluator.split(len(ds.images), cfg.holdout, params.seed)
        enc, loss = simclr.train(ds.images, cfg, torch.Generator().manual_seed(params.seed), torch.from_numpy(seen))
        encoder = simclr.state(enc, loss)
        out |= {"simclr_loss": loss}
        print(f"simclr encoder: NT-Xent loss {loss:.4f} over its last epoch")
    evaluator.save(model, a.model, acc, meta["sha256"], meta["shape"][-1], cfg, params.seed, encoder)
    write_json(a.metrics, out | {"evaluator_holdout": held_out})


if __name__ == "__main__":
    main()
