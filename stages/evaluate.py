"""Stage evaluate: every score of the samples against the prepared data (see README, Evaluation
protocol), in the classifier's feature space and, when weights can be had, in Inception-v3's."""

import argparse
import logging
import time

from ganflow import data, metrics
from ganflow.accel import select_device
from ganflow.config import flatten, load_params
from ganflow.evaluation import evaluate
from ganflow.io import save_grid, write_json
from ganflow.sampling import PngFolder
from ganflow.stage import stage
from ganflow.tracking import Tracker, read_handle

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
    write_json(a.out, report.results)
    write_json(a.per_class, report.per_class)
    save_grid(report.pairs, a.pairs, nrow=len(report.pairs) // 2)
    log.info("scored %d samples in %.1f s", len(samples), time.perf_counter() - t0)

    run_id = read_handle(a.run_handle)
    if run_id:
        tracker.start(run_id=run_id)
        tracker.log_params({k: v for k, v in flatten(params).items() if k.split(".")[0] in ("sample", "evaluate")})
        tracker.set_tags({f"protocol.{k}": str(v) for k, v in report.results[metrics.KEY_PROTOCOL_DETAIL].items()}
                         | {"protocol": report.results[metrics.KEY_PROTOCOL]})
        tracker.log_metrics({k: v for k, v in report.results.items() if isinstance(v, (int, float))})
        tracker.log_artifact(a.pairs)
        tracker.log_table(report.per_class, "per_class.json")
        tracker.end()
    print("  ".join(f"{k}={v:.4g}" for k, v in report.results.items() if isinstance(v, (int, float))))


if __name__ == "__main__":
    main()
