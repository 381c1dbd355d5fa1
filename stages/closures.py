"""Stage closures: each stage script's code, as DVC sees it. For every script, the files of its import
closure in ganflow (ganflow.deps: the script and every ganflow module it may import) with their sha256,
one file per stage (closures/<stage>.txt, in sha256sum's format). Each stage depends on its own file, so
DVC re-runs exactly the stages whose code changed, `dvc exp show` has one code column per stage instead
of one per module, and `git diff closures/` says which stages a change of code reaches."""

import _checkout  # noqa: F401 - first: this checkout's ganflow, the code dvc.lock hashes

import argparse
import hashlib
from pathlib import Path

from ganflow.deps import closure
from ganflow.io import write_bytes
from ganflow.stage import stage


def listing(script: str | Path, root: Path) -> str:
    """`<sha256>  <path relative to root>` for each file of the script's closure, sorted by path."""
    files = {p.relative_to(root).as_posix(): p for p in closure(script)}
    return "".join(f"{hashlib.sha256(files[name].read_bytes()).hexdigest()}  {name}\n" for name in sorted(files))


@stage
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", help="output folder: <stage>.txt for each script")
    ap.add_argument("scripts", nargs="+", help="the stage scripts (stages/<stage>.py)")
    a = ap.parse_args(argv)
    root = Path.cwd().resolve()
    for script in a.scripts:
        write_bytes(Path(a.out) / f"{Path(script).stem}.txt", listing(script, root).encode())


if __name__ == "__main__":
    main()
