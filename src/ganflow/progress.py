"""Progress bars on a terminal only; in a log (CI, `dvc repro > log`), plain lines instead of
carriage-return redraws."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(total: int, desc: str, unit: str, initial: int = 0, disable: bool = False) -> tqdm:
    """A tqdm bar that shows only when stderr is a terminal (`bar.disable` tells the caller)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0,
                disable=disable or not interactive())


def report(bar_: tqdm, log, what: str, step: int, total: int, **values: Any) -> None:
    """Show the latest values: on the bar, or (no terminal) as one log line."""
    if not bar_.disable:
        bar_.set_postfix(**values)
    else:
        log.info("%s %d/%d  %s", what, step, total, "  ".join(f"{k}={v}" for k, v in values.items()))
