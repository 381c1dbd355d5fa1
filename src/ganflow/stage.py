"""Stage entry-point plumbing: what every script under stages/ wraps its main in."""

from __future__ import annotations

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
        for noisy in ("alembic", "git"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        for noisy in ("mlflow", "urllib3"):  # their retries of a failing store: ganflow says it once
            logging.getLogger(noisy).setLevel(logging.ERROR)
        try:
            main(sys.argv[1:])
        except GanflowError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    return wrapper
