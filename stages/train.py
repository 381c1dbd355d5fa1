"""Stage train: the GAN on the prepared data, resuming from models/checkpoint.pt when it matches."""

import _checkout  # noqa: F401 - first: this checkout's ganflow, the code dvc.lock hashes

import argparse
import logging
import sys

from ganflow import accel, data, deps, distributed, metrics
from ganflow.config import flatten, load_params
from ganflow.outputs import TrainOutputs, TrainPaths
from ganflow.stage import stage
from ganflow.tracking import Tracker, policy
from ganflow.training import LOG_COLUMNS, Selection, Trainer, training_set

log = logging.getLogger("ganflow.train")


@stage
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("prepared")
    ap.add_argument("evaluator", help="the classifier that scores G during training")
    TrainPaths.add_arguments(ap)  # the outputs: generator ... grid
    a = ap.parse_args(argv)
    params = load_params(a.params)
    # train.devices > 1 or nodes.count > 1: this script runs again under torchrun's agent (not when torchrun started it)
    distributed.launch(params.nodes, distributed.world_size_for(params.train.devices), sys.argv[0], argv)
    device = accel.select_device(params.train.device)
    dist = distributed.init(device, params.nodes.timeout)  # one process unless torchrun started several
    distributed.check_same_params(dist, flatten(params), deps.code_hash(__file__))  # every host: the same params and code
    distributed.check_shared(dist, a.checkpoint)  # every host sees the checkpoints rank 0 writes
    # every rank draws its own batches and noise; the nets start equal (DDP broadcasts rank 0's)
    accel.seed_everything(params.seed + 1_000_003 * dist.rank, device)

    # rank 0 alone talks to MLflow; the tracker fails fast on an unreachable server
    tracker = Tracker(params.tracking, enabled=dist.main)
    ds, meta = data.load_prepared(a.prepared)
    train_set = training_set(ds, meta, a.evaluator)  # less the evaluator's held-out images
    train_sha = data.content_hash(train_set)
    trainer = Trainer(params, train_set, train_sha, dist, code=deps.code_hash(__file__), device=device)
    trainer.try_resume(a.checkpoint)  # logs what it decided
    outputs = TrainOutputs(TrainPaths.from_args(a))
    selection = Selection(metrics.key("fid", metrics.primary_space(a.evaluator)), metrics.TrainingFID(
        ds.images, a.evaluator, params.train.eval_samples, params.seed, params.evaluate, trainer.device
    ))
    # the MLflow run: a new one per attempt, or none when nothing is left to train (see policy.train_run)
    history = [(trainer.state.log_rows, LOG_COLUMNS), (trainer.state.score_rows, ("step", f"{selection.name}_during_training"))]
    inputs = policy.TrainInputs(params, a.params, a.evaluator, train_set.images, train_sha, meta["source"])
    summary = policy.train_run(tracker, trainer, lambda hooks: trainer.run(outputs, hooks, selection=selection), history,
                               inputs, outputs.paths, main=dist.main)
    distributed.shutdown(dist)
    if summary and dist.main:
        print(f"trained {params.train.arch}/{params.train.loss} to step {trainer.state.step}: {summary['train_img_per_s']:.0f} img/s")


if __name__ == "__main__":
    main()
