"""Stage evaluate: every score of the samples against the prepared data (see README, Evaluation
protocol), in the classifier's feature space and, when weights can be had, in Inception-v3's."""

import _checkout  # noqa: F401 - first: this checkout's ganflow, the code dvc.lock hashes

import argparse
import logging
import time
from pathlib import Path

from ganflow import data, metrics
from ganflow.accel import select_device
from ganflow.config import flatten, load_params
from ganflow.evaluation import evaluate, protocol_file, rounded
from ganflow.io import save_grid, write_json
from ganflow.sampling import PngFolder
from ganflow.stage import stage
from ganflow.tracking import TAG_NOTE, TAG_PARENT, Tracker, read_handle

log = logging.getLogger("ganflow.evaluate")


@stage
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("samples")
    ap.add_argument("prepared")
    ap.add_argument("evaluator")
    ap.add_argument("run_handle", help="models/run.json from train: the MLflow run to log into")
    ap.add_argument("out", help="output: metrics JSON")
    ap.add_argument("per_class", help="output: per-class table (JSON)")
    ap.add_argument("pairs", help="output: the samples nearest a training image, above those images (PNG)")
    ap.add_argument("--grid", help="the sample grid, logged with the scores")
    ap.add_argument("--protocol-out", help="output: the protocol's hash and fields (JSON; not a metrics file)")
    ap.add_argument("--run-out", help="output: the MLflow run ids (JSON), for `dvc exp show`")
    a = ap.parse_args(argv)
    params = load_params(a.params)
    cfg = params.evaluate

    tracker = Tracker(params.tracking)
    inception = metrics.resolve_inception_weights(cfg)  # fails here when inception is on and none can be had
    ds, meta = data.load_prepared(a.prepared)
    samples = PngFolder(a.samples, meta["shape"])  # read lazily, batch by batch
    device = select_device(params.train.device)

    t0 = time.perf_counter()
    report = evaluate(samples, ds, a.evaluator, inception, cfg, device, params.sample.seed)
    report.results, report.per_class = rounded(report.results), rounded(report.per_class)
    write_json(a.out, report.results)
    write_json(a.per_class, report.per_class)
    if a.protocol_out:
        write_json(a.protocol_out, protocol_file(report))
    save_grid(report.pairs, a.pairs, nrow=len(report.pairs) // 2)
    log.info("scored %d samples in %.1f s", len(samples), time.perf_counter() - t0)

    scores = {k: v for k, v in report.results.items() if isinstance(v, (int, float))}
    train_run = read_handle(a.run_handle)
    if tracker.enabled:
        log_scores(tracker, train_run, params, scores, [a.out, a.protocol_out, a.grid, a.pairs, "dvc.lock"])
        protocol = report.protocol
        tracker.set_tags({f"protocol.{k}": str(v) for k, v in protocol.items()} | {"protocol": report.results[metrics.KEY_PROTOCOL]})
        tracker.log_table(report.per_class, "per_class.json")
        tracker.end()
    if a.run_out:
        write_json(a.run_out, {"mlflow_run_id": tracker.run_id, "mlflow_train_run_id": train_run})
    print("  ".join(f"{k}={v:.4g}" for k, v in scores.items()))


def log_scores(tracker: Tracker, train_run: str | None, params, results: dict, artifacts: list) -> None:
    """Scores go into the run that trained the model, unless that run already holds the scores of other
    sample/evaluate params (another experiment's): then into a new run nested under it, never over them.
    The run is left open for the caller to add to and end."""
    mine = {k: v for k, v in flatten(params).items() if k.split(".")[0] in ("sample", "evaluate")}
    data = tracker.run_data(train_run) if train_run else None
    if data and metrics.key("fid", "classifier") in data[1] and any(data[0].get(k) != str(v) for k, v in mine.items()):
        changed = {k: (data[0].get(k), v) for k, v in mine.items() if data[0].get(k) != str(v)}
        name = f"{data[2].get('mlflow.runName', train_run)} · " + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, (_, v) in changed.items())
        tags = {TAG_PARENT: train_run, TAG_NOTE: f"Evaluation of the model trained in run {train_run} with "
                + "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())}
        tracker.start(name=name[:120], tags=tags)
    else:
        tracker.start(run_id=train_run)
    tracker.log_params(mine)
    tracker.log_metrics(results)
    for path in artifacts:
        if path and Path(path).is_file():
            tracker.log_artifact(path)
    status = tracker.promote(train_run, results, metrics.key("fid", "classifier"), metrics.KEY_N_SAMPLES)
    if status:
        log.info("registered generator of run %s: %s", train_run, status)


if __name__ == "__main__":
    main()
