"""Validation holes: every value that cannot work stops `ganflow check` and the stages in one line,
before any work, naming the key (or the line and column of a YAML error)."""

import re
import pytest

from conftest import ROOT, call_cli
from ganflow import GanflowError
from ganflow.config import ConfigError, load_params, parse_params

PARAMS = (ROOT / "params.yaml").read_text()


def params_file(tmp_path, text: str):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    return f


def check(f) -> tuple[int, str]:
    """`ganflow check FILE` as a user runs it (its main, in this process): exit status and what it printed."""
    r = call_cli("check", f)
    return r.returncode, (r.stdout + r.stderr).strip()


# the line of train.steps in params.yaml (a duplicate is inserted right after it)
STEPS_LINE = next(i for i, line in enumerate((ROOT / "params.yaml").read_text().splitlines(), 1) if line.startswith("  steps: "))


@pytest.mark.parametrize("edit, message", [
    (lambda t: "", "empty; it must hold the sections seed, prepare"),
    (lambda t: t.split("train:")[0] + "sample:" + t.split("sample:")[1], "missing key train (params.yaml lists every key"),
    (lambda t: t.replace("  lr_g: ", "  lrg: ", 1), "unknown key train.lrg (did you mean train.lr_g?)"),  # README's example
    (lambda t: re.sub(r"(  steps: \d+) ", r"\1\n  steps: 100 ", t, count=1), f"line {STEPS_LINE + 1}, column 3: duplicate key 'steps' (first at line {STEPS_LINE})"),
    (lambda t: t.replace("train:\n", "train: [\n", 1), "not valid YAML at line"),
    (lambda t: t.replace("  ema: 5000.0 ", "  ema: .inf ", 1), "train.ema must be a finite number (got inf)"),
    (lambda t: t.replace("  batch_size: 64 ", "  batch_size: 100000000 ", 1), "train.batch_size must be less than or equal to 65536"),
    (lambda t: t.replace("  eval_samples: 1000 ", "  eval_samples: 100000000 ", 1), "train.eval_samples must be less than or equal to 50000"),
    (lambda t: t.replace("  n: auto ", "  n: 1000000000 ", 1), "sample.n must be less than or equal to 10000000"),
])
def test_check_refuses_what_dvc_or_the_stages_would_refuse(tmp_path, edit, message):
    f = params_file(tmp_path, edit(PARAMS))
    code, out = check(f)
    assert code == 1 and out.startswith("error: ") and "\n" not in out, out
    assert message in out, out


def test_floats_are_read_as_yaml_1_2_and_dvc_read_them(tmp_path):
    f = params_file(tmp_path, re.sub(r"  lr_d: [0-9.]+ ", "  lr_d: 2E-4 ", re.sub(r"  lr_g: [0-9.]+ ", "  lr_g: 1e-4 ", PARAMS)))
    p = load_params(f)
    assert p.train.lr_g == 0.0001 and p.train.lr_d == 0.0002 and type(p.train.steps) is int  # ints stay ints
    assert check(f) == (0, f"{f}: ok")


def test_a_batch_larger_than_the_data_is_refused_before_training(mnist):
    from ganflow.training import Trainer

    params = parse_params({"train": {"batch_size": 2000, "device": "cpu"}})
    with pytest.raises(GanflowError, match=r"train.batch_size 2000 is larger than the prepared data \(1000 images\)"):
        Trainer(params, mnist, "x")


def test_sample_n_that_cannot_fit_on_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from ganflow import sampling
    from ganflow.nets import NetConfig, build

    G, _ = build("dcgan", NetConfig(28, 1, 16, 8))
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 3_000_000, 3_000_000))
    with pytest.raises(GanflowError, match=r"sample.n 1,000,000: up to 0.88 GB of PNGs, but only 0.00 GB free"):
        sampling.write_samples(G.eval(), tmp_path / "samples", 1_000_000, 0, 64)
    assert not (tmp_path / "samples").exists() and not list(tmp_path.iterdir())
    sampling.write_samples(G.eval(), tmp_path / "samples", 100, 0, 64)  # 100 fit in 3 MB
    assert len(list((tmp_path / "samples").iterdir())) == 100


def test_net_sizes_are_bounded():
    with pytest.raises(ConfigError, match="train.z_dim must be less than or equal to 4096"):
        parse_params({"train": {"z_dim": 10**6}})
    with pytest.raises(ConfigError, match="train.width must be less than or equal to 1024"):
        parse_params({"train": {"width": 200000}})
