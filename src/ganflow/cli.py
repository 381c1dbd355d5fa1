"""The `ganflow` console script."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ganflow import GanflowError


def main(argv: list[str] | None = None) -> None:
    """`ganflow check [params.yaml]`: validate params without running anything.
    `ganflow deps stages/*.py`: each stage script's library files, as dvc.yaml lists them.
    `ganflow evaluate --samples DIR`: score any folder of PNGs with the evaluate stage's protocol.
    `ganflow compare A B`: two eval.json side by side; refused when their protocols differ."""
    ap = argparse.ArgumentParser(prog="ganflow")
    sub = ap.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check", help="validate params.yaml")
    check.add_argument("params", nargs="?", default="params.yaml")
    dep = sub.add_parser("deps", help="print the ganflow files each stage script imports (its dvc.yaml deps)")
    dep.add_argument("scripts", nargs="+")
    ev = sub.add_parser("evaluate", help="score a folder of PNGs against the prepared data (outside DVC too)")
    ev.add_argument("--samples", required=True, help="folder of PNGs, the prepared data's size")
    ev.add_argument("--prepared", default="data/prepared")
    ev.add_argument("--evaluator", default="models/evaluator.pt")
    ev.add_argument("--params", default="params.yaml", help="its evaluate section is used (defaults when missing)")
    ev.add_argument("--seed", type=int, default=None, help="the seed the samples were drawn with, for the protocol")
    ev.add_argument("--out", help="write the results here (JSON) instead of printing them")
    cmp = sub.add_parser("compare", help="compare two eval.json files made under the same protocol")
    cmp.add_argument("a")
    cmp.add_argument("b")
    cmp.add_argument("--force", action="store_true", help="print the comparison even when the protocols differ")
    a = ap.parse_args(argv)
    if a.cmd == "deps":
        print_deps(a.scripts)
        return
    try:
        {"check": check_params, "evaluate": evaluate_folder, "compare": compare}[a.cmd](a)
    except GanflowError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def check_params(a: argparse.Namespace) -> None:
    from ganflow.config import load_params

    load_params(a.params)
    print(f"{a.params}: ok")


def evaluate_folder(a: argparse.Namespace) -> None:
    import logging

    from ganflow import data, metrics
    from ganflow.accel import select_device
    from ganflow.config import Params, load_params
    from ganflow.evaluation import evaluate
    from ganflow.io import write_json
    from ganflow.sampling import PngFolder

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    params = load_params(a.params) if Path(a.params).is_file() else Params()
    cfg = params.evaluate
    device = select_device(params.train.device)
    ds, meta = data.load_prepared(a.prepared)
    samples = PngFolder(a.samples, meta["shape"])
    report = evaluate(samples, ds, a.evaluator, metrics.resolve_inception_weights(cfg), cfg, device, a.seed)
    if a.out:
        write_json(a.out, report.results)
    else:
        print(json.dumps(report.results, indent=2, sort_keys=True))


def compare(a: argparse.Namespace) -> None:
    from ganflow.evaluation import comparable

    results = []
    for path in (a.a, a.b):
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            raise GanflowError(f"{path}: unreadable results ({err})") from None
    diff = comparable(*results)
    if diff and not a.force:
        raise GanflowError(f"{a.a} and {a.b} were scored under different protocols ({'; '.join(diff)}): "
                           "their scores are not comparable (--force prints them anyway)")
    if diff:
        print(f"WARNING: DIFFERENT PROTOCOLS, SCORES NOT COMPARABLE: {'; '.join(diff)}", file=sys.stderr)
    ra, rb = results
    print(f"{'metric':<36} {'A':>12} {'B':>12} {'B - A':>12}")
    for k in sorted(set(ra) & set(rb)):
        if isinstance(ra[k], (int, float)) and isinstance(rb[k], (int, float)):
            print(f"{k:<36} {ra[k]:>12.5g} {rb[k]:>12.5g} {rb[k] - ra[k]:>+12.4g}")


def print_deps(scripts: list[str]) -> None:
    from ganflow.deps import closure

    for script in scripts:
        print(f"{script}:")
        for path in closure(script):
            try:
                print(f"  - {path.relative_to(Path.cwd().resolve()).as_posix()}")
            except ValueError:
                print(f"  - {path}")


if __name__ == "__main__":
    main()
