"""Stage evaluate: FID / IS / KID / precision / recall of the samples against the prepared data,
in the classifier's feature space and, when weights can be had, in Inception-v3's."""

import argparse
import logging
import time

import numpy as np

from ganflow import data, evaluator, metrics
from ganflow.accel import select_device
from ganflow.config import flatten, load_params
from ganflow.io import write_json
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
    a = ap.parse_args(argv)
    params = load_params(a.params)
    cfg = params.evaluate

    tracker = Tracker(params.tracking)
    inception = metrics.resolve_inception_weights(cfg)  # fails here when inception is on and none can be had
    ds, meta = data.load_prepared(a.prepared)
    samples = PngFolder(a.samples)  # read lazily, batch by batch
    device = select_device(params.train.device)

    t0 = time.perf_counter()
    results = {metrics.KEY_N_SAMPLES: len(samples), metrics.KEY_N_REAL: len(ds.images)}
    # the real images' statistics are cached under their content hash and the extractor's
    results |= metrics.fidelity(samples, ds.images, "classifier", a.evaluator, cfg, device, real_sha256=meta["sha256"])
    if inception is not None:
        results |= metrics.fidelity(samples, ds.images, "inception", inception, cfg, device, real_sha256=meta["sha256"])
    if meta["labelled"]:
        model, _ = evaluator.load(a.evaluator, device)
        real_hist = np.asarray(meta["class_counts"]) / meta["count"]
        results |= metrics.class_stats(evaluator.predict(model, samples), real_hist)
    write_json(a.out, results)
    log.info("scored %d samples in %.1f s", len(samples), time.perf_counter() - t0)

    run_id = read_handle(a.run_handle)
    if run_id:
        tracker.start(run_id=run_id)
        tracker.log_params({k: v for k, v in flatten(params).items() if k.split(".")[0] in ("sample", "evaluate")})
        tracker.log_metrics(results)
        tracker.end()
    print("  ".join(f"{k}={v:.4g}" for k, v in results.items()))


if __name__ == "__main__":
    main()
