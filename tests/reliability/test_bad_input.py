"""Bad input: each case gives a one-line error naming the key or file, exit status 1, and leaves
earlier outputs untouched. Stages run in this process through their stage wrapper (`call_stage`); the
tests marked `stage` prove the same in a separate process, as the pipeline runs them."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import Payload, call_stage, closed_port, run_stage, stage_workspace
from ganflow import data
from ganflow.outputs import TRAIN_FILE_NAMES

INJECT = Path(__file__).parent / "inject"


def inject_path() -> str:
    """PYTHONPATH with the fault-injection hooks first (keeping any path that finds ganflow)."""
    return os.pathsep.join(filter(None, [str(INJECT), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="module")
def ws(tmp_path_factory, mnist):
    """A workspace with prepared data, an evaluator and a params.yaml of tiny values, tracking off."""
    return stage_workspace(tmp_path_factory.mktemp("ws"), mnist, {"tracking": {"enabled": False}})


def with_params(ws: Path, tmp_path: Path, **sections) -> str:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    return str(f)


def earlier(*paths: Path) -> dict[Path, bytes]:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"earlier output of " + p.name.encode())
    return {p: p.read_bytes() for p in paths}


def fails_with(r, message: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert message in lines[0], lines[0]


def untouched(before: dict[Path, bytes]) -> None:
    for p, content in before.items():
        assert p.read_bytes() == content, f"{p} was overwritten"


STAGE_ARGS = {
    "prepare": ["prepared", "real.png"],
    "fit_evaluator": ["PREPARED", "evaluator2.pt", "evaluator.json"],
    "train": ["PREPARED", "EVALUATOR", *TRAIN_FILE_NAMES],
    "sample": ["g.pt", "best.pt", "samples", "sgrid.png"],
    "evaluate": ["samples", "PREPARED", "EVALUATOR", "g.pt", "eval.json", "per_class.json", "pairs.png"],
}


def args_for(stage, ws, tmp_path):
    out = []
    for a in STAGE_ARGS[stage]:
        out.append(str(ws / "prepared") if a == "PREPARED" else str(ws / "evaluator.pt") if a == "EVALUATOR" else str(tmp_path / a))
    return out


@pytest.mark.parametrize(
    "stage, section, values, message",
    [
        ("prepare", "prepare", {"resolution": 48}, "prepare.resolution must be 28, 32, 64 or 128 (got 48)"),
        ("fit_evaluator", "evaluator", {"holdout": 1.5}, "evaluator.holdout must be less than 1 (got 1.5)"),
        ("fit_evaluator", "evaluator", {"lr": 1e6, "epochs": 1}, "is no better than naming the commonest class"),  # a diverged fit
        ("train", "train", {"lr_g": "fast"}, "train.lr_g must be a valid number (got 'fast')"),
        ("sample", "sample", {"nn": 3}, "unknown key sample.nn (did you mean sample.n?)"),
        ("evaluate", "evaluate", {"batch_size": -5}, "evaluate.batch_size must be greater than 0 (got -5)"),
    ],
)
def test_bad_params_stop_every_stage(ws, tmp_path, stage, section, values, message):
    args = args_for(stage, ws, tmp_path)
    before = earlier(*(Path(a) for a in args if a.startswith(str(tmp_path)) and "." in Path(a).name))
    r = call_stage(stage, "--params", with_params(ws, tmp_path, **{section: values}), *args)
    fails_with(r, message)
    untouched(before)


def test_folder_source_errors(ws, tmp_path):
    before = earlier(tmp_path / "prepared" / "images.npy", tmp_path / "real.png")
    cases = {
        "missing": (tmp_path / "nope", "no such folder"),
        "empty": (tmp_path / "empty", "no image files in it"),
        "corrupt": (tmp_path / "corrupt", "1 unreadable file(s): a/bad.png (UnidentifiedImageError)"),
    }
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt" / "a").mkdir(parents=True)
    (tmp_path / "corrupt" / "a" / "bad.png").write_bytes(b"not a png at all")
    (tmp_path / "corrupt" / "b").mkdir()  # two classes: one class alone is an error of its own
    for folder, message in cases.values():
        p = with_params(ws, tmp_path, prepare={"source": "folder", "folder": str(folder)})
        r = call_stage("prepare", "--params", p, str(tmp_path / "prepared"), str(tmp_path / "real.png"))
        fails_with(r, f"prepare.folder {folder}: {message}")
        untouched(before)


def test_mixed_image_modes_are_converted(ws, tmp_path):
    from PIL import Image

    for i, mode in enumerate(["L", "RGB", "RGBA", "P", "I;16"]):
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new(mode, (30 + i, 40), color=10 * i).save(tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png")
    p = with_params(ws, tmp_path, prepare={"source": "folder", "folder": str(tmp_path / "imgs"), "channels": 3})
    r = call_stage("prepare", "--params", p, str(tmp_path / "prepared"), str(tmp_path / "real.png"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert data.load_prepared(tmp_path / "prepared")[0].images.shape == (5, 3, 28, 28)


def _generator_file(ws, tmp_path) -> Path:
    from ganflow.checkpoint import GENERATOR_FORMAT
    from ganflow.nets import NetConfig, build

    G, _ = build("dcgan", NetConfig(28, 1, 16, 8))
    path = tmp_path / "g.pt"
    torch.save({"format": GENERATOR_FORMAT, "arch": "dcgan", "net": NetConfig(28, 1, 16, 8).to_dict(),
                "state_dict": G.state_dict(), "step": 1}, path)
    return path


@pytest.mark.parametrize("damage, message", [
    ("truncate", "unreadable or truncated"),
    ("other-program", "not a ganflow-generator-v1 file"),
    ("pickle", "refused by weights_only loading"),
])
def test_damaged_generator_files(ws, tmp_path, damage, message):
    g = _generator_file(ws, tmp_path)
    if damage == "truncate":
        g.write_bytes(g.read_bytes()[:1000])
    elif damage == "other-program":
        torch.save({"weights": torch.zeros(3)}, g)
    else:
        torch.save({"format": "ganflow-generator-v1", "payload": Payload(os.system, ("touch /tmp/ganflow-pwned",))}, g)
    before = earlier(tmp_path / "samples" / "000000.png", tmp_path / "sgrid.png")
    r = call_stage("sample", "--params", str(ws / "params.yaml"), str(g), str(g), str(tmp_path / "samples"), str(tmp_path / "sgrid.png"))
    fails_with(r, f"{g}: {message}")
    untouched(before)
    assert not Path("/tmp/ganflow-pwned").exists()


def test_truncated_training_checkpoint(ws, tmp_path):
    args = args_for("train", ws, tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    r = call_stage("train", "--params", str(ws / "params.yaml"), *args)
    fails_with(r, f"{tmp_path / 'checkpoint.pt'}: unreadable or truncated")


@pytest.mark.stage  # a proof in a real process (its fault injection needs one)
def test_inception_on_without_weights_offline(ws, tmp_path):
    G = _generator_file(ws, tmp_path)
    assert call_stage("sample", "--params", str(ws / "params.yaml"), str(G), str(G), str(tmp_path / "samples"),
                     str(tmp_path / "sgrid.png")).returncode == 0
    before = earlier(tmp_path / "eval.json")
    p = with_params(ws, tmp_path, evaluate={"inception": "on"})
    r = run_stage("evaluate", "--params", p, *args_for("evaluate", ws, tmp_path),
                  env={"PYTHONPATH": inject_path(), "GANFLOW_TEST_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "th")})
    fails_with(r, "evaluate.inception is on but no Inception weights can be had")
    untouched(before)


@pytest.mark.stage  # a proof in a real process
def test_unreachable_tracking_server_fails_before_training(ws, tmp_path):
    port = closed_port()
    p = with_params(ws, tmp_path, tracking={"enabled": True, "uri": f"http://127.0.0.1:{port}"})
    r = run_stage("train", "--params", p, *args_for("train", ws, tmp_path), env={"MLFLOW_TRACKING_URI": ""})
    fails_with(r, f"tracking.uri http://127.0.0.1:{port}: MLflow server unreachable")
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "train_log.tsv").exists()


def test_unwritable_output_location(ws, tmp_path):
    (tmp_path / "blocked").write_text("a file where a folder should be")
    r = call_stage("prepare", "--params", str(ws / "params.yaml"), str(tmp_path / "blocked" / "prepared"), str(tmp_path / "real.png"))
    fails_with(r, f"{tmp_path / 'blocked' / 'prepared'}: cannot write")


def real_pngs(folder: Path, images, start: int = 0) -> Path:
    """Real digits written as sample PNGs (000000.png …), as the sample stage names them."""
    from ganflow.io import to_pil

    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images, start):
        to_pil(torch.from_numpy(x)).save(folder / f"{i:06d}.png")
    return folder


def run_evaluate(ws, tmp_path, prepared=None, **env):
    (tmp_path / "g.pt").write_bytes(b"a generator")  # its training run is looked up only when tracking is on
    args = args_for("evaluate", ws, tmp_path)
    if prepared:
        args[1] = str(prepared)
    return call_stage("evaluate", "--params", str(ws / "params.yaml"), *args, env=env)


def test_prepared_data_changed_behind_meta_json(ws, tmp_path, mnist):
    """B1: the statistics cache was keyed by meta.json's hash, so inverted images scored the old FID."""
    import shutil

    shutil.copytree(ws / "prepared", tmp_path / "prepared")
    images = tmp_path / "prepared" / "images.npy"
    np.save(images, 255 - np.load(images))
    real_pngs(tmp_path / "samples", mnist.images[:64])
    before = earlier(tmp_path / "eval.json")
    r = run_evaluate(ws, tmp_path, tmp_path / "prepared")
    fails_with(r, f"{images}")
    assert "does not match the sha256 in" in r.stderr
    untouched(before)


@pytest.mark.parametrize("damage", ["truncated", "other-size", "16-bit"])
@pytest.mark.stage
def test_a_bad_sample_png_is_named(ws, tmp_path, mnist, damage):
    from PIL import Image

    samples = real_pngs(tmp_path / "samples", mnist.images[:64])
    bad = samples / "000017.png"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:60])
        message = f"{bad}: unreadable PNG"
    elif damage == "other-size":
        Image.new("L", (32, 32)).save(bad)
        message = f"{bad}: 32×32 pixels, expected 28×28"
    else:
        Image.new("I;16", (28, 28)).save(bad)
        message = f"{bad}: I;16 pixels (more than 8 bits), expected 8-bit"
    before = earlier(tmp_path / "eval.json", tmp_path / "per_class.json")
    fails_with(run_evaluate(ws, tmp_path), message)
    untouched(before)


@pytest.mark.stage
def test_too_few_samples(ws, tmp_path, mnist):
    r = call_stage("sample", "--params", with_params(ws, tmp_path, sample={"n": 2}), *args_for("sample", ws, tmp_path))
    fails_with(r, "sample.n must be greater than or equal to 6 (got 2)")
    real_pngs(tmp_path / "samples", mnist.images[:2])  # a folder made by other means
    fails_with(run_evaluate(ws, tmp_path), "2 samples: the scores need at least 6")
    real_pngs(tmp_path / "samples", mnist.images[:100])
    r = run_evaluate(ws, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "only 100 samples: FID is biased below 2048" in r.stderr

@pytest.mark.stage
def test_a_missing_generator_file_stops_evaluate_before_any_output(ws, tmp_path, mnist):
    real_pngs(tmp_path / "samples", mnist.images[:20])
    args = args_for("evaluate", ws, tmp_path)  # g.pt is not there
    fails_with(call_stage("evaluate", "--params", str(ws / "params.yaml"), *args),
               f"{tmp_path / 'g.pt'}: no such generator file (the one the samples came from)")
    assert not any((tmp_path / f).exists() for f in ("eval.json", "per_class.json", "pairs.png"))


@pytest.mark.parametrize("damage, message", [
    (lambda im, lb: (im[:, 0], lb), "images must be uint8 N×C×H×W, got uint8 (1000, 28, 28)"),
    (lambda im, lb: (im.astype("float32"), lb), "images must be uint8 N×C×H×W, got float32"),
    (lambda im, lb: (im, lb[:10]), "labels of shape (10,) for 1000 images"),
])
def test_damaged_prepared_data_is_one_line(ws, tmp_path, damage, message):
    import shutil

    import numpy as np

    prepared = tmp_path / "prepared"
    shutil.copytree(ws / "prepared", prepared)
    images, labels = damage(np.load(prepared / "images.npy"), np.load(prepared / "labels.npy"))
    np.save(prepared / "images.npy", images)
    np.save(prepared / "labels.npy", labels)
    r = call_stage("fit_evaluator", "--params", str(ws / "params.yaml"), str(prepared), str(tmp_path / "e.pt"), str(tmp_path / "e.json"))
    fails_with(r, f"{prepared}: not a prepared data set ({message}")


def test_folder_sources_that_cannot_be_scored_stop_at_prepare(ws, tmp_path):
    from PIL import Image

    def images(folder: Path, n: int) -> None:
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("L", (28, 28), color=i).save(folder / f"{i}.png")

    for name, sizes in {"one": (1, 3), "bomb": (3, 3)}.items():  # two classes each
        for c, n in enumerate(sizes):
            images(tmp_path / name / f"c{c}", n)
    Image.new("L", (14000, 14000)).save(tmp_path / "bomb" / "c0" / "huge.png")  # 196 Mpx, a few kB of PNG
    cases = {
        "one": "every class needs at least 2 images; too few in c0 (1)",
        "bomb": "1 unreadable file(s): c0/huge.png (DecompressionBombError)",
    }
    for name, message in cases.items():
        p = with_params(ws, tmp_path, prepare={"source": "folder", "folder": str(tmp_path / name)})
        r = call_stage("prepare", "--params", p, str(tmp_path / "prepared"), str(tmp_path / "real.png"))
        fails_with(r, f"prepare.folder {tmp_path / name}: {message}")
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda g: g["net"].update(width=200_000), "not a usable generator (its net (dcgan, width 200000) would have 1,280,318,000,001 parameters"),
    (lambda g: g.update(arch="stylegan9"), "not a usable generator (unknown architecture 'stylegan9'"),
    (lambda g: g["net"].update(z_dim=-4), "not a usable generator (net z_dim must be a positive integer, got -4)"),
    (lambda g: g["state_dict"].pop(next(iter(g["state_dict"]))), "not a usable generator (Error(s) in loading state_dict"),
])
def test_crafted_generator_files_are_refused_before_allocating(ws, tmp_path, edit, message):
    g = _generator_file(ws, tmp_path)
    obj = torch.load(g, weights_only=True)
    edit(obj)
    torch.save(obj, g)
    r = call_stage("sample", "--params", str(ws / "params.yaml"), str(g), str(g), str(tmp_path / "samples"), str(tmp_path / "sgrid.png"))
    fails_with(r, f"{g}: {message}")
