"""Stage entry-point plumbing and the `ganflow` console script."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable

from ganflow import GanflowError


def stage(main: Callable[[list[str]], None]) -> Callable[[], None]:
    """Wrap a stage's main: log to stderr, turn a GanflowError into one line and exit status 1."""

    @functools.wraps(main)
    def wrapper() -> None:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
        for noisy in ("alembic", "mlflow", "urllib3", "git"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            main(sys.argv[1:])
        except GanflowError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    return wrapper


def main(argv: list[str] | None = None) -> None:
    """`ganflow check [params.yaml]`: validate params without running anything."""
    ap = argparse.ArgumentParser(prog="ganflow")
    sub = ap.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check", help="validate params.yaml")
    check.add_argument("params", nargs="?", default="params.yaml")
    a = ap.parse_args(argv)
    from ganflow.config import load_params

    try:
        load_params(a.params)
    except GanflowError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"{a.params}: ok")
