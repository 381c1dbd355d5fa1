"""RGB end to end: a folder of coloured shapes the test makes (a red-ish square or a blue-ish disc on a
green-ish ground, at a random place) runs `dvc repro` through every stage, unlabelled (flat), at 32 and
64 px, in a test-sized configuration; MLflow gets RGB grids; `ganflow sample` / `ganflow evaluate
--samples` work on it; the same images in class sub-folders score in the classifier space instead,
and `dvc metrics diff` shows the different key names."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import dvc, make_project, mlflow_runs, sh

pytestmark = pytest.mark.slow

N = 320  # images: the evaluator's held-out split (10 %) must hold at least 6


def shapes(root: Path, n: int = N, side: int = 64, labelled: bool = False, seed: int = 0) -> Path:
    """n RGB images side×side: even i a square, odd i a disc (the class), each 1/4 of the side wide."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    r = side // 8
    for i in range(n):
        img = np.empty((side, side, 3), np.uint8)
        img[:] = (rng.integers(0, 60), rng.integers(120, 200), rng.integers(0, 60))  # green-ish ground
        cy, cx = rng.integers(r, side - r, 2)
        if i % 2 == 0:
            img[cy - r:cy + r, cx - r:cx + r] = (rng.integers(180, 256), rng.integers(0, 60), rng.integers(0, 60))
        else:
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (rng.integers(0, 60), rng.integers(0, 60), rng.integers(180, 256))
        sub = root / ("square" if i % 2 == 0 else "disc") if labelled else root
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"{i:04d}.png")
    return root


def tiny(folder: Path, resolution: int) -> dict:
    return {
        "prepare": {"source": "folder", "folder": str(folder), "resolution": resolution, "channels": 3},
        "evaluator": {"epochs": 4, "width": 8, "batch_size": 64, "simclr_epochs": 1, "simclr_batch_size": 64, "simclr_width": 8},
        "train": {"steps": 10, "log_every": 5, "sample_every": 5, "checkpoint_every": 5, "eval_every": 10, "eval_samples": 64},
        "sample": {"n": 96, "batch_size": 64},
        "evaluate": {"kid_subset_size": 32, "bootstrap": 10},
    }


def rgb_grid_logged(root: Path) -> np.ndarray:
    from mlflow import MlflowClient

    run = mlflow_runs(root)[0]
    client = MlflowClient()
    png = next(a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png"))
    local = client.download_artifacts(run.info.run_id, png, str(root / "dl"))
    return np.asarray(Image.open(local))


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_rgb_folder_runs_every_stage_unlabelled(tmp_path, resolution):
    images = shapes(tmp_path / "imgs", side=resolution + 8)  # resized on the way in: stated in the protocol
    root = tmp_path / "proj"
    env = make_project(root, tiny(images, resolution))
    dvc(root, env, "repro")
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["labelled"] is False and meta["shape"] == [3, resolution, resolution]
    ev = json.loads((root / "metrics/eval.json").read_text())
    assert "fid_simclr" in ev and "memorized_share_simclr" in ev and not any(k.endswith("_classifier") for k in ev)
    proto = json.loads((root / "metrics/protocol.json").read_text())["protocol_detail"]
    assert proto["labelled"] is False and f"resized to {resolution}" in proto["prepare"]
    assert "fid_simclr" in (root / "metrics/fid_curve.tsv").read_text().splitlines()[0]
    plot = json.loads(dvc(root, env, "plots", "show", "--json", "metrics/fid_curve.tsv").stdout)
    assert "errors" not in plot and '"field": "fid_simclr"' in json.dumps(plot["data"])  # the FID plot draws this space
    for png in ("real_grid", "train_grid", "sample_grid", "nearest_pairs"):
        g = np.asarray(Image.open(root / f"metrics/{png}.png")).astype(int)
        assert g.ndim == 3 and g.shape[2] == 3 and (g[..., 0] != g[..., 2]).any(), png  # colour, not gray
    real = np.asarray(Image.open(root / "metrics/real_grid.png")).astype(int)
    assert (real[..., 0] - real[..., 1] > 100).any() and (real[..., 2] - real[..., 0] > 100).any()  # red squares, blue discs
    grid = rgb_grid_logged(root).astype(int)
    assert grid.ndim == 3 and grid.shape[2] >= 3 and (grid[..., 0] != grid[..., 2]).any()
    run = mlflow_runs(root)[0]
    assert run.data.tags["protocol.feature_spaces"] == "simclr" and run.data.tags["protocol.labelled"] == "False"
    assert "fid_simclr" in run.data.metrics

    # the CLI on the same project
    py = sys.executable
    sh(py, "-m", "ganflow.cli", "sample", "--model", "models/generator.pt", "-n", "12", "--out", "more.png", cwd=root, env=env)
    assert np.asarray(Image.open(root / "more.png")).shape[2] == 3
    out = sh(py, "-m", "ganflow.cli", "evaluate", "--samples", "samples", cwd=root, env=env).stdout
    assert json.loads(out)["fid_simclr"] == pytest.approx(ev["fid_simclr"], rel=1e-5)


def test_labelled_and_unlabelled_runs_of_the_same_images_differ_where_they_should(tmp_path):
    flat, classes = shapes(tmp_path / "flat", side=32), shapes(tmp_path / "classes", side=32, labelled=True)
    root = tmp_path / "proj"
    env = make_project(root, tiny(flat, 32))
    dvc(root, env, "repro")
    sh("git", "add", "-A", cwd=root, env=env)
    sh("git", "commit", "-qm", "unlabelled run", cwd=root, env=env)
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prepare"]["folder"] = str(classes)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(root, env, "repro")
    unl = json.loads(sh("git", "show", "HEAD:metrics/eval.json", cwd=root, env=env).stdout)
    lab = json.loads((root / "metrics/eval.json").read_text())
    assert json.loads((root / "data/prepared/meta.json").read_text())["classes"] == ["disc", "square"]
    # the same images (sorted differently on disk: the arrays differ in order only)
    stems = lambda ev, space: {k.removesuffix(f"_{space}") for k in ev if k.endswith(f"_{space}")}  # noqa: E731
    assert stems(unl, "simclr") <= stems(lab, "classifier") and "is" in stems(lab, "classifier") - stems(unl, "simclr")
    assert not any(k.endswith("_classifier") for k in unl) and not any(k.endswith("_simclr") for k in lab)
    assert {"class_coverage", "class_kl"} <= set(lab) - set(unl)
    diff = json.loads(dvc(root, env, "metrics", "diff", "HEAD", "--json").stdout)["metrics/eval.json"]
    assert diff["fid_simclr"]["new"] is None and diff["fid_classifier"]["old"] is None  # different names, never mixed
    assert unl["n_samples"] == lab["n_samples"] and unl["n_real"] == lab["n_real"]

    # the folder is a dep of prepare: a new image in it re-runs prepare, however the params stand
    assert "Data and pipelines are up to date" in dvc(root, env, "status").stdout
    (classes / "disc" / "0001.png").rename(classes / "disc" / "new.png")
    assert json.loads(dvc(root, env, "status", "--json").stdout)["prepare"] == [{"changed deps": {str(classes): "modified"}}]


@pytest.mark.parametrize("arch", ["seed", "dcgan", "sngan"])
def test_every_arch_trains_at_64_px_rgb(arch):
    from conftest import TINY_TRAIN
    from ganflow.config import parse_params
    from ganflow.data import ImageSet
    from ganflow.training import Trainer

    ds = ImageSet(np.random.default_rng(0).integers(0, 256, (8, 3, 64, 64), dtype=np.uint8), None, [])
    t = Trainer(parse_params({"train": {**TINY_TRAIN, "arch": arch, "batch_size": 4}}), ds, "x")
    before = [p.detach().clone() for p in t.gs.G.parameters()]
    t.gs.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, t.gs.G.parameters()))
    assert t.gs.G(torch.randn(2, t.cfg.z_dim)).shape == (2, 3, 64, 64)
