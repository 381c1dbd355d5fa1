"""Stage train: the GAN on the prepared data, resuming from models/checkpoint.pt when it matches."""

import _checkout  # noqa: F401 - first: this checkout's ganflow, the code dvc.lock hashes

import argparse
import logging
from pathlib import Path

from ganflow import accel, data, deps, distributed, evaluator, metrics
from ganflow.config import flatten, load_params
from ganflow.outputs import TrainOutputs, TrainPaths
from ganflow.stage import stage
from ganflow.tracking import (TAG_BASELINE_COMMIT, TAG_DATA, TAG_EVALUATOR, TAG_RESUMED_FROM, TAG_RESUMED_STEP, Tracker,
                              _dvc_tags, provenance)
from ganflow.training import LOG_COLUMNS, Hooks, Selection, Trainer

log = logging.getLogger("ganflow.train")


@stage
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("prepared")
    ap.add_argument("evaluator", help="the classifier that scores G during training")
    ap.add_argument("generator", type=Path)
    ap.add_argument("generator_best", type=Path)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("run_handle", type=Path, help="output: the MLflow run id, for later stages")
    ap.add_argument("log_tsv", type=Path)
    ap.add_argument("fid_tsv", type=Path)
    ap.add_argument("grid", type=Path)
    a = ap.parse_args(argv)
    params = load_params(a.params)
    distributed.relaunch_under_torchrun(distributed.world_size_for(params.train.devices), argv)
    device = accel.select_device(params.train.device)
    dist = distributed.init(device)  # one process unless train.devices > 1
    # every rank draws its own batches and noise; the nets start equal (DDP broadcasts rank 0's)
    accel.seed_everything(params.seed + 1_000_003 * dist.rank, device)

    # rank 0 alone talks to MLflow; the tracker fails fast on an unreachable server
    tracker = Tracker(params.tracking if dist.main else params.tracking.model_copy(update={"enabled": False}))
    ds, meta = data.load_prepared(a.prepared)
    # G never sees the images the evaluator holds out: evaluate compares the samples with both halves
    _, info = evaluator.load(a.evaluator)
    _, seen = evaluator.reference_split(info, a.evaluator, meta["sha256"], len(ds.images))
    train_set = ds.subset(seen)
    train_sha = data.content_hash(train_set)
    trainer = Trainer(params, train_set, train_sha, dist, code=deps.code_hash(__file__))
    decision = trainer.try_resume(a.checkpoint)
    if dist.main:
        log.info(decision)
    outputs = TrainOutputs(TrainPaths(a.generator, a.checkpoint, a.log_tsv, a.grid, a.generator_best, a.fid_tsv))
    selection = Selection(metrics.key("fid", metrics.primary_space(a.evaluator)), metrics.TrainingFID(
        ds.images, a.evaluator, params.train.eval_samples, params.seed, params.evaluate, trainer.device
    ))
    previous = (trainer.resumed or {}).get("run_id")
    if trainer.state.step >= params.train.steps and tracker.status(previous) == "FINISHED":
        # nothing left to train (`dvc repro -f`, a logging-only change) and the run that trained it closed
        # properly: no new run, no new model version; the outputs are written again from the checkpoint,
        # and run.json names that run. (A run killed after its last step is continued by a new run instead,
        # which logs the model it could not.)
        trainer.run(outputs, selection=selection)
        if dist.main:
            tracker.write_handle(a.run_handle, previous)
            log.info("nothing left to train: the model and MLflow run %s are the ones that trained it "
                     "(train.resume: false retrains from scratch)", previous)
        distributed.shutdown(dist)
        return

    flat = flatten(params)
    name, tags = provenance(flat, a.params, {TAG_DATA: train_sha, TAG_EVALUATOR: metrics.file_sha256(a.evaluator)})
    # .ganflow/train-run.json names the open run: a run killed before its first checkpoint is marked KILLED next time
    tracker.start(name=name, tags=tags, attempt=Path(".ganflow") / "train-run.json")
    tracker.log_params(flat)
    tracker.log_artifact(a.params)
    tracker.log_dataset(train_set.images, {"source": f"{meta['source']} (training split)", "sha256": train_sha,
                                           "count": len(train_set.images)})
    if trainer.resumed:
        # the interrupted attempt's run is closed as KILLED; this run links to it and carries its whole history
        if previous:
            tracker.mark(previous, "KILLED")
        tracker.set_tags({TAG_RESUMED_FROM: str(previous), TAG_RESUMED_STEP: str(trainer.resumed["step"])})
        tracker.log_history(trainer.state.log_rows, LOG_COLUMNS)
        tracker.log_history(trainer.state.score_rows, ("step", f"{selection.name}_during_training"))
    trainer.extra["run_id"] = tracker.run_id
    hooks = Hooks(
        on_metrics=tracker.log_metrics,
        on_grid=lambda g, step: tracker.log_image(g, "train_grid", step),
    )
    try:
        summary = trainer.run(outputs, hooks, selection=selection)
        tracker.log_metrics(summary)
        if dist.main:
            net = trainer.net_cfg
            tracker.log_model(*trainer.export_generator(), metadata={"z_dim": net.z_dim, "n_classes": net.n_classes,
                                                                      "arch": trainer.cfg.arch})
            tracker.annotate_model({"run_name": name, "data_sha256": train_sha, **_dvc_tags(),
                                    TAG_BASELINE_COMMIT: tags[TAG_BASELINE_COMMIT]}, contract(trainer))
    except BaseException:
        tracker.end("FAILED")
        raise
    if dist.main:
        tracker.write_handle(a.run_handle)
    tracker.end()
    distributed.shutdown(dist)
    if not dist.main:
        return
    print(f"trained {params.train.arch}/{params.train.loss} to step {trainer.state.step}: {summary['train_img_per_s']:.0f} img/s")


def contract(trainer: Trainer) -> str:
    """The registered generator's input/output contract, as its model version description."""
    net = trainer.net_cfg
    cond = (f", plus a last column holding the class index 0..{net.n_classes - 1} (a class-conditional G)"
            if net.n_classes else "")
    return (f"ganflow generator ({trainer.cfg.arch}). Input: one float32 tensor N×{net.z_dim + bool(net.n_classes)}: "
            f"z ~ N(0, 1) of size z_dim={net.z_dim}{cond}. Output: N×{net.channels}×{net.resolution}×{net.resolution} "
            "float32 images in [-1, 1]; pixels = round((x + 1) · 127.5). Load: mlflow.pytorch.load_model(uri).")


if __name__ == "__main__":
    main()
