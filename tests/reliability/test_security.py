"""Safe loading everywhere, and no network listener opened by the pipeline."""

import ast
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ROOT, make_project


def torch_load_calls():
    for folder in ("src", "stages", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" \
                        and getattr(node.func.value, "id", None) == "torch":
                    yield path, node


def test_every_torch_load_uses_weights_only():
    calls = list(torch_load_calls())
    assert calls, "expected torch.load calls to check"
    for path, node in calls:
        kw = {k.arg: k.value for k in node.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
            f"{path.relative_to(ROOT)}:{node.lineno} torch.load without weights_only=True"


@pytest.mark.slow
def test_the_pipeline_opens_no_listening_socket(tmp_path):
    env = make_project(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listening, polls = [], 0
    while p.poll() is None:
        try:
            tree = {p.pid, *(c.pid for c in psutil.Process(p.pid).children(recursive=True))}
        except psutil.NoSuchProcess:
            break
        listening += [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in tree]
        polls += 1
        time.sleep(0.1)
    assert p.wait() == 0
    assert polls > 20  # the pipeline was watched while it ran
    assert listening == []
