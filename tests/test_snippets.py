"""The documentation's examples run: every fenced ```python or ```bash/```sh/```shell block of README.md
and docs/**/*.md that sits right under the marker

    <!-- test: run -->

(blank lines between allowed) is run, in a tiny project whose prepare, fit_evaluator and train stages
have run (so models/generator.pt exists and `models:/ganflow-generator@champion` is a conditional
generator in the project's MLflow store), offline. Shell blocks run with bash -euo pipefail, Python
blocks with this interpreter. A stale example fails here, naming its file and line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tiny_params

MARK = re.compile(r"<!--\s*test:\s*run\s*-->")
FENCE = re.compile(r"^\s*```\s*([\w-]*)")
LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
MODEL = "ganflow-generator"


@dataclass
class Snippet:
    path: Path
    line: int
    lang: str  # python | bash
    code: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    return [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))] if p.is_file()]


def snippets(text: str, path: Path) -> list[Snippet]:
    """The marked blocks of one Markdown text (a marker counts for the next block only, and only when
    nothing but blank lines lies between them)."""
    out, lines, marked, i = [], text.splitlines(), False, 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), len(lines))
            if marked and fence.group(1).lower() in LANGS:
                out.append(Snippet(path, i + 1, LANGS[fence.group(1).lower()], "\n".join(lines[i + 1:end])))
            marked, i = False, end + 1
            continue
        if MARK.search(lines[i]):
            marked = True
        elif lines[i].strip():
            marked = False
        i += 1
    return out


ALL = [s for p in doc_files() for s in snippets(p.read_text(), p)]


def test_the_parser_finds_marked_blocks_only(tmp_path):
    md = tmp_path / "x.md"
    found = snippets("<!-- test: run -->\n\n```bash\necho a\n```\n```bash\necho b\n```\n<!-- test: run -->\ntext\n"
                     "```python\nprint(1)\n```\n<!-- test: run -->\n```text\nnot code\n```\n<!-- test: run -->\n```py\nx = 1\n```\n", md)
    assert [(s.line, s.lang, s.code) for s in found] == [(3, "bash", "echo a"), (19, "python", "x = 1")]
    assert ALL, "no documentation block is marked <!-- test: run -->"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny project after prepare, fit_evaluator and train (as dvc.yaml runs them), with the
    trained generator's registered version as the champion."""
    root = tmp_path_factory.mktemp("snippets")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "TORCH_HOME": str(root / ".torch"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("prepare", "fit_evaluator", "train"):
        cmd = stages[name]["cmd"].split()
        r = subprocess.run([sys.executable, str(ROOT / cmd[1]), *cmd[2:]], cwd=root, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    version = max(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    client.set_registered_model_alias(MODEL, "champion", str(version))
    return root, env


@pytest.mark.stage
@pytest.mark.slow
@pytest.mark.parametrize("snippet", ALL, ids=str)
def test_documented_example_runs(snippet: Snippet, project):
    root, env = project
    cmd = [sys.executable, "-c", snippet.code] if snippet.lang == "python" else ["bash", "-euo", "pipefail", "-c", snippet.code]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{snippet} failed ({r.returncode}):\n{snippet.code}\n--- stderr\n{r.stderr[-3000:]}"
