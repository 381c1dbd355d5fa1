"""Stage evaluate: every score of the samples against the prepared data (see README, Evaluation
protocol), in the feature spaces models/evaluator.pt holds (the classifier and/or the label-free
encoder) and, when weights can be had, in Inception-v3's."""

import _checkout  # noqa: F401 - first: this checkout's ganflow, the code dvc.lock hashes

import argparse
from pathlib import Path

from ganflow import GanflowError
from ganflow.config import load_params
from ganflow.evaluation import evaluate_folder, protocol_file, rounded
from ganflow.io import save_grid, write_json
from ganflow.stage import stage
from ganflow.tracking import Tracker, policy


@stage
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("samples")
    ap.add_argument("prepared")
    ap.add_argument("evaluator")
    ap.add_argument("generator", help="the generator the samples came from: its training run is the one tagged with its sha256")
    ap.add_argument("out", help="output: metrics JSON")
    ap.add_argument("per_class", help="output: per-class table (JSON)")
    ap.add_argument("pairs", help="output: the samples nearest a training image, above those images (PNG)")
    ap.add_argument("--grid", help="the sample grid, logged with the scores")
    ap.add_argument("--protocol-out", help="output: the protocol's hash and fields (JSON; not a metrics file)")
    ap.add_argument("--run-out", help="output: the MLflow run ids (JSON; dvc.yaml: .ganflow/, untracked: they differ on every re-run)")
    a = ap.parse_args(argv)
    params = load_params(a.params)
    if not Path(a.generator).is_file():  # its hash names the training run: checked before any work or output
        raise GanflowError(f"{a.generator}: no such generator file (the one the samples came from)")

    tracker = Tracker(params.tracking)  # fails here, before any work, when the store is unusable
    report = evaluate_folder(a.samples, a.prepared, a.evaluator, params, params.sample.seed)
    report.results, report.per_class = rounded(report.results), rounded(report.per_class)
    write_json(a.out, report.results)
    write_json(a.per_class, report.per_class)
    if a.protocol_out:
        write_json(a.protocol_out, protocol_file(report))
    save_grid(report.pairs, a.pairs, nrow=len(report.pairs) // 2)
    run_ids = policy.evaluate_run(tracker, params, a.generator, report, [a.out, a.protocol_out, a.grid, a.pairs])
    if a.run_out:
        write_json(a.run_out, run_ids)
    print("  ".join(f"{k}={v:.4g}" for k, v in report.results.items() if isinstance(v, (int, float))))


if __name__ == "__main__":
    main()
