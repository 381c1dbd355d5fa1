"""Multi-node training on torchrun: two "nodes" (two elastic agents meeting at a c10d rendezvous on
127.0.0.1, gloo) against one node with two processes, a node killed mid-run, and the failures that
must end in one line rather than a hang. Tiny nets and steps: the whole file runs in a few minutes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, closed_port, mlflow_runs, stage_workspace

pytestmark = pytest.mark.slow
INJECT = Path(__file__).parent / "reliability" / "inject"
OUTS = ["g.pt", "best.pt", "ckpt.pt", "log.tsv", "fid.tsv", "grid.png"]
BOUND_S = 150  # no launch here may take longer: a hang fails the test instead of stalling CI


@pytest.fixture(scope="module")
def ws(tmp_path_factory, mnist):
    """One workspace (the "shared file system" of the two nodes): prepared data, an evaluator, tiny params."""
    return stage_workspace(tmp_path_factory.mktemp("multinode"), mnist, {"train": {"steps": 30, "eval_every": 10, "eval_samples": 64},
                                                                          "tracking": {"enabled": False}})


def params_file(ws: Path, name: str, nodes: int = 1, devices: int = 1, port: int | None = None, timeout: int = 60,
                train: dict | None = None, tracking: dict | None = None) -> Path:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"] |= {"devices": devices, **(train or {})}
    params["tracking"] |= tracking or {}
    params["nodes"] = {"count": nodes, "rendezvous": f"127.0.0.1:{port}" if port else None, "timeout": timeout}
    path = ws / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def start(ws: Path, params: Path, out: Path, env: dict | None = None) -> subprocess.Popen:
    """One node: the train stage as dvc.yaml runs it, in its own process group (so a test can kill the node)."""
    out.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.{len(list(out.parent.glob(out.name + '.*.log')))}.log"
    with open(log, "w") as f:
        p = subprocess.Popen(
            [sys.executable, str(ROOT / "stages" / "train.py"), "--params", str(params), str(ws / "prepared"),
             str(ws / "evaluator.pt"), *[str(out / n) for n in OUTS]],
            cwd=ws, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(map(str, (INJECT, ROOT / "src"))), **(env or {})},
        )
    p.log = log
    return p


def finish(*procs: subprocess.Popen) -> list[tuple[int, str]]:
    """Wait for each node (at most BOUND_S in all); return (exit status, its output) per node."""
    deadline = time.monotonic() + BOUND_S
    out = []
    for p in procs:
        try:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, signal.SIGKILL)
            pytest.fail(f"a node did not exit within {BOUND_S} s (a hang)")
        out.append((p.returncode, p.log.read_text()))
    return out


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error: ")]


def training_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)  # every field: a checkpoint holds no wall time and no MLflow run id


def assert_same_state(a: dict, b: dict, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def one_node_two_processes(ws):
    """The reference: one host, train.devices 2 (the same global batch and seed as two nodes × 1)."""
    out = ws / "one-node"
    [(rc, text)] = finish(start(ws, params_file(ws, "one-node", devices=2), out))
    assert rc == 0, text[-3000:]
    return out


def test_two_nodes_train_the_same_bytes_as_one_node_with_two_processes(ws, one_node_two_processes, tmp_path):
    # with two ranks a gradient all-reduce is one addition, a + b == b + a exactly: so byte-identical
    # (with more ranks the reduction order of a ring could differ, and only a tolerance would hold)
    port = closed_port()
    params = params_file(ws, "two-nodes", nodes=2, port=port, tracking={"enabled": True})
    out = ws / "two-nodes"
    env = {"GANFLOW_TEST_WRITE_LOG": str(tmp_path / "writes.log"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    results = finish(start(ws, params, out, env), start(ws, params, out, env))
    assert [rc for rc, _ in results] == [0, 0], "\n".join(t[-2000:] for _, t in results)
    assert (out / "g.pt").read_bytes() == (one_node_two_processes / "g.pt").read_bytes()
    assert_same_state(training_state(out / "ckpt.pt"), training_state(one_node_two_processes / "ckpt.pt"))
    # the global rank 0 alone wrote outputs (each node has a local rank 0) and logged one MLflow run
    writers = {line.split()[0] for line in (tmp_path / "writes.log").read_text().splitlines()}
    assert writers == {"0"}, writers
    [run] = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.params["nodes.count"] == "2"


def test_a_node_killed_mid_run_stops_the_other_and_the_relaunch_resumes_to_the_same_bytes(ws, one_node_two_processes):
    port = closed_port()
    params = params_file(ws, "killed", nodes=2, port=port, timeout=60)
    out = ws / "killed"
    # rank 0's process dies as it is about to write its second checkpoint (step 20 of 30): the one of step 10
    # stays; the other node's process finds it gone at its next synchronisation
    kill = {"GANFLOW_TEST_KILL": "ckpt.pt:2"}
    results = finish(start(ws, params, out, kill), start(ws, params, out, kill))
    assert all(rc != 0 for rc, _ in results), "both nodes must stop"
    last = [error_lines(t)[-1] for _, t in results if error_lines(t)]
    assert len(last) == 2, [t[-2000:] for _, t in results]
    assert any("was killed by signal 9" in ln for ln in last), last  # the node whose process died
    assert any("lost the other training processes" in ln or "lost the rendezvous host" in ln for ln in last), last
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 10

    port = closed_port()
    params = params_file(ws, "killed", nodes=2, port=port, timeout=60)
    results = finish(start(ws, params, out), start(ws, params, out))
    assert [rc for rc, _ in results] == [0, 0], "\n".join(t[-2000:] for _, t in results)
    assert any("resuming from" in t and "at step 10" in t for _, t in results)
    assert (out / "g.pt").read_bytes() == (one_node_two_processes / "g.pt").read_bytes()


def test_a_rendezvous_that_never_completes_times_out_in_one_line(ws):
    params = params_file(ws, "alone", nodes=2, port=closed_port(), timeout=3)
    [(rc, text)] = finish(start(ws, params, ws / "alone"))
    assert rc == 1
    assert error_lines(text) == [error_lines(text)[-1]] and "did not complete within nodes.timeout=3 s" in text, text[-2000:]


def test_an_unreachable_rendezvous_endpoint_is_one_line(ws):
    params = params_file(ws, "unreachable", nodes=2, port=29500, timeout=3)
    params.write_text(params.read_text().replace("127.0.0.1:29500", "ganflow-node0.invalid:29500"))
    [(rc, text)] = finish(start(ws, params, ws / "unreachable"))
    assert rc == 1
    [line] = error_lines(text)
    assert "nodes.rendezvous ganflow-node0.invalid:29500 is unreachable" in line, text[-2000:]
    assert "frame #" not in text  # no C++ stack


def test_nodes_with_other_params_are_refused(ws):
    port = closed_port()
    a = params_file(ws, "params-a", nodes=2, port=port)
    b = params_file(ws, "params-b", nodes=2, port=port, train={"lr_g": 0.0005})
    results = finish(start(ws, a, ws / "mismatch"), start(ws, b, ws / "mismatch"))
    assert [rc for rc, _ in results] == [1, 1]
    # every process refuses in one line (a node that loses node 0 meanwhile may say that instead)
    assert all(error_lines(t) for _, t in results)
    assert any("runs other params than rank 0 on" in ln and "(train.lr_g differ)" in ln
               for _, t in results for ln in error_lines(t)), [t[-2000:] for _, t in results]
    assert not (ws / "mismatch" / "ckpt.pt").exists()


def test_a_node_that_cannot_see_the_checkpoint_folder_is_refused(ws):
    # each node writes to its own folder: what hosts without a shared file system look like
    port = closed_port()
    params = params_file(ws, "unshared", nodes=2, port=port)
    results = finish(start(ws, params, ws / "unshared-a"), start(ws, params, ws / "unshared-b"))
    assert [rc for rc, _ in results] == [1, 1]
    assert all(error_lines(t) for _, t in results)  # (a node that loses node 0 meanwhile may say that instead)
    assert any("needs a shared file system" in ln for _, t in results for ln in error_lines(t)), [t[-2000:] for _, t in results]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the check compares with the node's CUDA devices")
def test_more_processes_than_cuda_devices_on_a_node_is_one_line(ws):
    n = torch.cuda.device_count() + 1
    params = params_file(ws, "too-many", devices=n, train={"device": "cuda"})
    [(rc, text)] = finish(start(ws, params, ws / "too-many"))
    assert rc == 1
    assert any(f"runs {n} training processes (train.devices / --nproc-per-node) but has {n - 1} CUDA devices" in ln
               for ln in error_lines(text)), text[-2000:]
    assert not (ws / "too-many" / "ckpt.pt").exists()
