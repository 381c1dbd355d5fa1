"""Imported first by every stage: this checkout's src/ goes ahead of any installed ganflow.

A stage must run the code that dvc.yaml lists (and dvc.lock hashes) as its deps: the files beside it.
Under `dvc exp run --queue/--temp` it runs in a copy of the project in .dvc/tmp/exps, while an
editable install would import the workspace's ganflow, which may be changing meanwhile.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
