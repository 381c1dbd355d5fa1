"""The `ganflow` console script."""

from __future__ import annotations

import argparse
import sys

from ganflow import GanflowError


def main(argv: list[str] | None = None) -> None:
    """`ganflow check [params.yaml]`: validate params without running anything.
    `ganflow deps stages/*.py`: each stage script's library files, as dvc.yaml lists them."""
    ap = argparse.ArgumentParser(prog="ganflow")
    sub = ap.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check", help="validate params.yaml")
    check.add_argument("params", nargs="?", default="params.yaml")
    dep = sub.add_parser("deps", help="print the ganflow files each stage script imports (its dvc.yaml deps)")
    dep.add_argument("scripts", nargs="+")
    a = ap.parse_args(argv)
    if a.cmd == "deps":
        print_deps(a.scripts)
        return
    from ganflow.config import load_params

    try:
        load_params(a.params)
    except GanflowError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"{a.params}: ok")


def print_deps(scripts: list[str]) -> None:
    from pathlib import Path

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
