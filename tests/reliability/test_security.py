"""Safe loading everywhere, and no network listener opened by the pipeline."""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from conftest import ROOT, Payload, make_project, run_stage, stage_workspace


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
@pytest.mark.dvc
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


@pytest.mark.stage
def test_no_library_unpickles_a_planted_cache_during_evaluate(tmp_path, mnist):
    """B2: torch-fidelity loads its cache with weights_only=False from names anyone can predict (the old
    ganflow chose `ganflow-classifier-<data hash>-<weights hash>`). Plant a pickle under every such name,
    and in ganflow's own npz cache; evaluate twice; no unpickler may resolve a single global."""
    from ganflow import metrics
    from ganflow.io import to_pil

    ws = stage_workspace(tmp_path / "ws", mnist, {"tracking": {"enabled": False}})
    samples = tmp_path / "samples"
    samples.mkdir()
    for i, x in enumerate(mnist.images[:64]):
        to_pil(torch.from_numpy(x)).save(samples / f"{i:06d}.png")
    (tmp_path / "g.pt").write_bytes(b"a generator")  # tracking is off: only a dep, never read
    torch_home, marker, audit = tmp_path / "th", tmp_path / "pwned", tmp_path / "audit.log"
    payload = Payload(os.system, (f"touch {marker}",))
    data_sha = json.loads((ws / "prepared/meta.json").read_text())["sha256"]
    name = f"ganflow-classifier-{data_sha[:16]}-{metrics.file_sha256(ws / 'evaluator.pt')[:16]}-{metrics.CLASSIFIER_EXTRACTOR}"
    (torch_home / "fidelity_cache").mkdir(parents=True)
    for suffix in ("features-features", "features-logits", "stat-fid-features"):
        torch.save({"mu": payload}, torch_home / "fidelity_cache" / f"{name}-{suffix}.pt")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent / "inject"), os.environ.get("PYTHONPATH")])),
           "GANFLOW_TEST_AUDIT": str(audit), "TORCH_HOME": str(torch_home)}
    args = [str(samples), str(ws / "prepared"), str(ws / "evaluator.pt"), str(tmp_path / "g.pt"),
            str(tmp_path / "eval.json"), str(tmp_path / "per_class.json"), str(tmp_path / "pairs.png")]
    for attempt in range(2):
        r = run_stage("evaluate", "--params", str(ws / "params.yaml"), *args, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        cached = list((torch_home / "ganflow_cache").glob("*.npz"))
        assert cached  # ganflow's cache: written on the first run, planted over before the second
        for f in cached:
            with open(f, "wb") as out:
                np.savez(out, emb=np.array([payload], dtype=object), logits=np.zeros(1))
    assert not marker.exists()
    assert not audit.exists() or audit.read_text() == "", audit.read_text()
    assert "ignoring the feature cache" in r.stderr
    # control: had torch-fidelity's cache been used, this is what its load would have done
    planted = torch_home / "fidelity_cache" / f"{name}-stat-fid-features.pt"
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(planted)!r}, weights_only=False)"],
                   env={**os.environ, **env}, capture_output=True)
    assert marker.exists() and "pickle.find_class" in audit.read_text()


def test_registry_model_in_pickle_format_never_runs_its_payload(tmp_path, capsys):
    """S1: a pickled module registered and made @champion: `ganflow sample --model` refuses it in one line,
    and the payload in it never runs (mlflow.pytorch.load_model would unpickle it)."""
    import mlflow
    from mlflow import MlflowClient

    from ganflow.cli import main

    marker = tmp_path / "pwned"
    module = torch.nn.Linear(2, 2)
    module.payload = Payload(os.system, (f"touch {marker}",))
    mlflow.set_experiment("attacker")  # in this test's store (an earlier test's active experiment is another store's)
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(module, name="generator", serialization_format="pickle", pip_requirements=[],
                                        registered_model_name="evil", metadata={"z_dim": 2})
    MlflowClient().set_registered_model_alias("evil", "champion", info.registered_model_version)
    capsys.readouterr()
    for uri in ("models:/evil@champion", f"runs:/{info.run_id}/generator"):
        with pytest.raises(SystemExit):
            main(["sample", "--model", uri, "--params", str(ROOT / "params.yaml"), "--out", str(tmp_path / "g.png")])
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: --model {uri}: it holds a pickled module (serialization_format='pickle'); refused"), err
    assert not marker.exists() and not (tmp_path / "g.png").exists()


def test_sample_model_errors_name_what_is_missing(tmp_path, capsys):
    """`ganflow sample --model`: a missing model or alias is named; a path is never read as an MLflow URI."""
    import mlflow

    from ganflow.cli import main

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.MlflowClient().create_registered_model("ganflow-generator")
    capsys.readouterr()
    cases = {"models:/nosuch@champion": "nosuch", "models:/ganflow-generator@champion": "champion",
             "/etc/passwd": "/etc/passwd: unreadable or truncated (not a PyTorch zip file)"}
    for uri, named in cases.items():
        with pytest.raises(SystemExit):
            main(["sample", "--model", uri, "--params", str(ROOT / "params.yaml"), "--out", str(tmp_path / "g.png")])
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and named in err, err


def test_a_generator_file_loads_only_g(tmp_path, monkeypatch, mnist):
    """A crafted generator file with d_width 3000 made load_generator build the unused D (2.96 GB)."""
    from ganflow import checkpoint
    from ganflow.generator import load_generator
    from ganflow.nets import NetConfig, build, dcgan

    net = NetConfig(28, 1, 16, 8)
    G, _ = build("dcgan", net)
    path = tmp_path / "generator.pt"
    checkpoint.save({"format": checkpoint.GENERATOR_FORMAT, "arch": "dcgan", "net": net.to_dict() | {"d_width": 3000},
                     "state_dict": G.state_dict()}, path)
    built = []
    real = dcgan.Discriminator
    monkeypatch.setattr(dcgan, "Discriminator", lambda cfg: built.append(cfg.disc_width) or real(cfg))
    loaded, _ = load_generator(path)
    assert set(built) == {1}  # D built at width 1 (and dropped), never at the file's 3000
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), G.state_dict().values()))
