import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_AUTHOR_NAME", "ganflow tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@ganflow.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "ganflow tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@ganflow.invalid")

# `make test` runs a pytest-xdist worker per CPU: each of them, and every process it starts, computes on one thread
# (workers on torch's default threads would oversubscribe the machine, which slows training 5-10x)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

# small but real: every test that trains uses these
TINY_TRAIN = {
    "arch": "dcgan", "loss": "hinge", "steps": 20, "batch_size": 16, "width": 8, "z_dim": 16,
    "ema": 200.0, "log_every": 5, "sample_every": 10, "checkpoint_every": 10, "device": "cpu",
}
TINY = {
    "prepare": {"source": "mnist-5k"},
    "evaluator": {"epochs": 2, "width": 8, "batch_size": 64, "lr": 0.005},
    "train": TINY_TRAIN,
    "sample": {"n": 128, "batch_size": 64},
    "evaluate": {"inception": "off", "batch_size": 64, "kid_subset_size": 50},
}


# Test tiers (pyproject.toml registers them): `make test-fast` runs `-m unit`, `make test` runs all.
#   unit:  in-process and quick: under a minute in all on 2 cores (the default: a test with no tier mark
#          is unit, and may not start Python or dvc)
#   stage: a stage's worth of work (training, scoring thousands of images), in this process or not, or a
#          stage script, the ganflow CLI or another Python in its own process
#   dvc:   runs real dvc in a temporary project
TIERS = ("unit", "stage", "dvc")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by mark
def pytest_collection_modifyitems(config, items):
    """Every test gets exactly one tier: its own mark, or its module's, else dvc when it is marked slow
    (the heavy subprocess tier: real dvc, torchrun, a tracking server), else unit."""
    for item in items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid}: more than one tier mark ({', '.join(sorted(tiers))})")
        if not tiers:
            item.add_marker("dvc" if item.get_closest_marker("slow") else "unit")


@pytest.fixture(autouse=True)
def _in_process_only(request, monkeypatch):
    """A unit test that starts Python or dvc belongs to the stage or dvc tier: say so instead of running it."""
    if request.node.get_closest_marker("unit") is None:
        return
    import subprocess

    popen_init = subprocess.Popen.__init__

    def guarded(self, args, *a, **kw):
        argv = [args] if isinstance(args, (str, Path)) else list(args)
        program = Path(str(argv[0]).split()[0]).name if argv else ""
        if program.startswith("python") or program == "dvc" or str(argv[0]) == sys.executable:
            raise AssertionError(f"a unit test started {program}: mark it stage or dvc (tests/conftest.py)")
        popen_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@pytest.fixture(scope="session")
def mlflow_template(request, tmp_path_factory) -> Path:
    """An MLflow sqlite store already migrated to this MLflow's schema (a migration takes ~10 s), kept in
    pytest's cache per MLflow version: each test gets a copy instead of migrating its own."""
    from importlib.metadata import version

    cache = getattr(request.config, "cache", None)  # none under -p no:cacheprovider: then one per session
    folder = cache.mkdir("mlflow-template") if cache else tmp_path_factory.mktemp("mlflow-template")
    path = folder / f"mlflow-{version('mlflow')}.db"
    if not path.exists():
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        SqlAlchemyStore(f"sqlite:///{tmp}", str(path.parent / "mlruns")).engine.dispose()
        os.replace(tmp, path)  # atomic: a concurrent session sees the whole file or none
    return path


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, tmp_path_factory, monkeypatch, mlflow_template):
    """No test touches the network, the user's torch cache or the project's MLflow DB. The test's MLflow
    DB is a copy of the migrated template, in a folder of its own (tmp_path stays empty)."""
    import shutil

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    db = shutil.copy(mlflow_template, tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    if "mlflow" in sys.modules:  # MLflow's globals outlive a test: an earlier test's URI or unended run stays set
        mlflow = sys.modules["mlflow"]
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(f"sqlite:///{db}")


@pytest.fixture(scope="session")
def mnist_5k():
    from ganflow.config import PrepareConfig
    from ganflow.data import load_source

    return load_source(PrepareConfig(), "unused")


@pytest.fixture(scope="session")
def mnist(mnist_5k):
    """A 1,000-image real MNIST subset (100 per class) as a prepared ImageSet."""
    idx = np.concatenate([np.flatnonzero(mnist_5k.labels == c)[:100] for c in range(10)])
    return mnist_5k.subset(idx)


@pytest.fixture(scope="session")
def fresh_mnist(mnist_5k):
    """The other 4,000 real digits: images of the same distribution that `mnist` does not hold."""
    idx = np.concatenate([np.flatnonzero(mnist_5k.labels == c)[100:] for c in range(10)])
    return mnist_5k.subset(idx)


@pytest.fixture(scope="session")
def evaluator_file(tmp_path_factory, mnist):
    """A classifier trained briefly on the subset, saved as models/evaluator.pt would be."""
    from ganflow import evaluator
    from ganflow.config import EvaluatorConfig
    from ganflow.data import content_hash

    path = tmp_path_factory.mktemp("evaluator") / "evaluator.pt"
    import torch

    cfg = EvaluatorConfig(epochs=10, width=16, batch_size=32, lr=0.005)
    torch.manual_seed(0)  # the weights come from the global RNG: the same classifier whatever ran before
    model, acc = evaluator.fit(mnist.images, mnist.labels, 10, cfg, seed=0)
    assert acc > 0.85, acc  # good enough for its feature space to tell digits from noise
    evaluator.save(model, path, acc, content_hash(mnist), 28, cfg, 0)
    return path


def paths(d: Path):
    """The train stage's outputs, all under the folder `d`."""
    from ganflow.outputs import TrainOutputs, TrainPaths

    return TrainOutputs(TrainPaths.under(d))


def train(mnist, out, resume=True, **overrides):
    """What the train stage does: seed, build, resume when the checkpoint matches, run."""
    from ganflow import accel
    from ganflow.config import parse_params
    from ganflow.training import Trainer

    params = parse_params({"train": {**TINY_TRAIN, **overrides}})
    accel.seed_everything(params.seed, accel.select_device(params.train.device))
    t = Trainer(params, mnist, "sha-test")
    if resume:
        t.try_resume(out / "checkpoint.pt")
    t.run(paths(out))
    return t


class Killed(Exception):
    pass


def killed_then_resumed(mnist, out, knobs: dict):
    """A run of TINY_TRAIN + knobs into `out`, killed right after its step-10 checkpoint (reports run after
    that step's checkpoint), then run again: the resumed Trainer."""
    from ganflow import accel
    from ganflow.config import parse_params
    from ganflow.training import Hooks, Trainer

    def kill_at_10(metrics, step):
        if step == 10:
            raise Killed

    params = parse_params({"train": {**TINY_TRAIN, **knobs}})
    accel.seed_everything(params.seed, accel.select_device(params.train.device))
    with pytest.raises(Killed):
        Trainer(params, mnist, "sha-test").run(paths(out), Hooks(on_metrics=kill_at_10))
    return train(mnist, out, **knobs)


class Payload:
    """An object whose pickle runs `fn(*args)` when it is loaded: what weights_only loading must refuse."""

    def __init__(self, fn=print, args=("pwned",)):
        self.fn, self.args = fn, tuple(args)

    def __reduce__(self):
        return (self.fn, self.args)


def closed_port() -> int:
    """A local TCP port that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stage(name: str, *args: str, cwd: Path = ROOT, env: dict | None = None, new_session: bool = False):
    """A stage as dvc.yaml runs it: its own process (in its own process group with new_session, so a
    fault-injected SIGKILL of the group stops the stage and not the tests)."""
    import subprocess

    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{name}.py"), *args],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, start_new_session=new_session,
    )


def call_stage(name: str, *args: str, env: dict | None = None):
    """A stage in this process, through its stage wrapper (ganflow.stage), returned as `run_stage` returns
    it: exit status, stdout, and stderr with the stage's log lines. No new Python (and torch) per call;
    keep `run_stage` for the few proofs that the real process exits 1 with one line."""
    import contextlib
    import importlib.util
    import io
    import logging
    import subprocess

    module = sys.modules.get(f"ganflow_stage_{name}")
    if module is None:
        spec = importlib.util.spec_from_file_location(f"ganflow_stage_{name}", ROOT / "stages" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(ROOT / "stages"))  # for its `import _checkout`
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(ROOT / "stages"))
        sys.modules[spec.name] = module
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root, level, argv = logging.getLogger(), logging.getLogger().level, sys.argv
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    sys.argv = [module.__file__, *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            module.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
        root.removeHandler(handler)
        root.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess([name, *args], code, out.getvalue(), err.getvalue())


def call_cli(*args, cwd: Path | None = None):
    """The `ganflow` command's main in this process (in `cwd`), returned as a subprocess run would be."""
    import contextlib
    import io
    import subprocess

    from ganflow.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(["ganflow", *map(str, args)], code, out.getvalue(), err.getvalue())


def sh(*cmd, cwd, env, check=True):
    import subprocess

    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def dvc(root: Path, env: dict, *args: str, check: bool = True):
    return sh(sys.executable, "-m", "dvc", *args, cwd=root, env=env, check=check)


def make_project(root: Path, overrides: dict | None = None) -> dict:
    """Copy the project (code, dvc.yaml, .dvc/config, params.yaml with TINY values and `overrides`) into a
    new git + DVC repo at `root`; return the environment to run dvc in (MLflow: the default <root>/mlflow.db)."""
    import shutil

    import yaml

    root.mkdir(parents=True, exist_ok=True)
    for name in ("src", "stages"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".gitignore", "data/images/.gitkeep"):  # data/images: prepare.folder's default, a dep
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(overrides), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "TORCH_HOME": str(root / ".torch"), "DVC_NO_ANALYTICS": "1"}
    sh("git", "init", "-q", cwd=root, env=env)
    dvc(root, env, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", root / ".dvc" / "config")  # the shipped default remote too
    shutil.copy(ROOT / ".dvcignore", root / ".dvcignore")  # bytecode caches are no part of a dep
    sh("git", "add", "-A", cwd=root, env=env)
    sh("git", "commit", "-qm", "tiny project", cwd=root, env=env)
    return env


def copy_project(src: Path, dst: Path, env: dict) -> dict:
    """Copy a project made by `make_project` (git repo, DVC cache, outputs, MLflow DB) to `dst`, for a
    test that changes it; return the environment to run dvc in there. MLflow stores artifact locations
    as absolute paths, so artifacts the copy logs still go under `src`'s mlruns/ (new run ids only)."""
    import shutil

    shutil.copytree(src, dst, dirs_exist_ok=True)
    return {**env, "TORCH_HOME": str(dst / ".torch")}


def mlflow_runs(root: Path, experiment: str = "ganflow"):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list", order_by=["start_time ASC"])


def tiny_params(overrides: dict | None = None) -> dict:
    """The project's params.yaml with the TINY values and `overrides` applied."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in [*TINY.items(), *(overrides or {}).items()]:
        params[section].update(values)
    return params


def stage_workspace(d: Path, images, overrides: dict | None = None) -> Path:
    """A folder holding prepared data, a quickly fitted evaluator and a tiny params.yaml: what the
    train, sample and evaluate stages read."""
    import yaml

    from ganflow import data, evaluator
    from ganflow.config import EvaluatorConfig

    meta = data.save_prepared(images, d / "prepared", "mnist-5k")
    cfg = EvaluatorConfig(epochs=1, width=8)
    model, acc = evaluator.fit(images.images, images.labels, 10, cfg, 0)
    evaluator.save(model, d / "evaluator.pt", acc, meta["sha256"], 28, cfg, 0)
    (d / "params.yaml").write_text(yaml.safe_dump(tiny_params(overrides)))
    return d


def peak_rss(p) -> int:
    """Wait for the subprocess `p` (a Popen) and return the peak RSS it reached, polled every 50 ms."""
    import time

    import psutil

    peak, proc = 0, psutil.Process(p.pid)
    while p.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    p.wait()
    return peak
