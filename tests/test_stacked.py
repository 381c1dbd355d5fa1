"""StackedMNIST (issue 18): the prepare source, its params, the digit classifier per channel and the
mode-coverage benchmark on known answers (real stacks, a collapsed generator)."""

import numpy as np
import pytest
import torch

from ganflow import evaluator, stacked
from ganflow.config import EvaluateConfig, EvaluatorConfig, PrepareConfig, parse_params
from ganflow.data import content_hash, load_source
from ganflow.evaluation import evaluate

STACKED = {"source": "stacked-mnist", "channels": 3}
CPU = torch.device("cpu")


def build(n=1000, seed=0, holdout=0.1, **kw):
    return load_source(PrepareConfig(**STACKED, stacked_n=n, **kw), "unused", holdout, seed)


@pytest.mark.stage
def test_build_is_deterministic_and_draws_only_the_evaluators_training_digits(mnist_5k):
    a, b = build(), build()
    assert a.images.shape == (1000, 3, 28, 28) and a.images.dtype == np.uint8
    assert content_hash(a) == content_hash(b)
    assert content_hash(build(seed=1)) != content_hash(a)
    assert a.labels.min() >= 0 and a.labels.max() < 1000 and len(a.classes) == 1000
    heldout, train = evaluator.split(5000, 0.1, 0)  # what evaluator.fit holds out of mnist-5k
    assert a.info["digits"] | {} == {"source": "mnist-5k", "holdout": 0.1, "seed": 0, "train": 4500, "heldout": 500}
    index = {mnist_5k.images[i].tobytes(): i for i in range(5000)}
    seen = np.array([[index[x[c : c + 1].tobytes()] for c in range(3)] for x in a.images])  # each channel is a digit
    assert np.isin(seen, train).all() and not np.isin(seen, heldout).any()
    assert (mnist_5k.labels[seen] @ [100, 10, 1] == a.labels).all()  # label = the triple
    assert build(resolution=32).images.shape == (1000, 3, 32, 32)


@pytest.mark.parametrize("prepare, train, message", [
    ({"channels": 1}, {}, "prepare.channels must be 3 when prepare.source is stacked-mnist"),
    ({"resolution": 64}, {}, "prepare.resolution must be 28 or 32 when prepare.source is stacked-mnist"),
    ({"stacked_n": 999}, {}, "prepare.stacked_n must be greater than or equal to 1000"),
    ({}, {"conditional": True}, "train.conditional is true, but prepare.source stacked-mnist is benchmarked unconditionally"),
])
def test_bad_input_is_one_line_naming_the_key(prepare, train, message):
    from ganflow.config import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_params({"prepare": STACKED | prepare, "train": train})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_stacked_mnist_trains_unconditionally_under_auto():
    assert parse_params({"prepare": STACKED}).train.conditional is False
    assert parse_params({"prepare": STACKED, "train": {"conditional": False}}).train.conditional is False
    assert parse_params({}).train.conditional == "auto"  # other sources keep auto


def test_sample_n_auto_is_the_benchmarks_protocol_on_stacked_mnist():
    # sample.n auto: the published protocol's 26,000 on stacked-mnist, else 5,000; a number is kept
    assert parse_params({"prepare": STACKED}).sample.n == 26_000 and parse_params({}).sample.n == 5000
    assert parse_params({"prepare": STACKED, "sample": {"n": 300}}).sample.n == 300


@pytest.fixture(scope="module")
def digit_evaluator(tmp_path_factory):
    """The digit classifier as fit_evaluator makes it for stacked-mnist (a short recipe), saved."""
    prepared = build(n=10_000)
    cfg = EvaluatorConfig(epochs=2, width=16, batch_size=64, lr=0.005)
    torch.manual_seed(0)
    meta = {"digits": prepared.info["digits"], "shape": [3, 28, 28]}
    model, acc = stacked.fit_evaluator(meta, cfg, 0)
    assert acc > 0.9, acc
    path = tmp_path_factory.mktemp("stacked") / "evaluator.pt"
    evaluator.save(model, path, acc, content_hash(prepared), 28, cfg, 0)
    return prepared, path


def test_the_digit_split_must_be_the_one_the_digits_were_drawn_with():
    from ganflow import GanflowError

    with pytest.raises(GanflowError, match="rerun prepare"):
        stacked.fit_evaluator({"digits": build().info["digits"], "shape": [3, 28, 28]}, EvaluatorConfig(holdout=0.2), 0)


@pytest.mark.stage
def test_real_stacks_hit_every_mode_with_kl_near_the_floor(digit_evaluator):
    prepared, path = digit_evaluator
    model, info = evaluator.load(path)
    assert isinstance(model, evaluator.StackedClassifier)
    pred = evaluator.predict(model, prepared.images)  # 10,000 real stacks, every channel classified
    first = prepared.images[:500]
    per_channel = np.stack([evaluator.predict(model.digit, first[:, c : c + 1]) for c in range(3)], 1)
    assert (pred[:500] == per_channel @ [100, 10, 1]).all()  # the triple's argmax is the channels' argmaxes
    scores, protocol = stacked.benchmark(pred, model, info)
    assert scores["modes_stacked"] >= 995 and scores["modes_stacked_real"] >= 995
    # finite N alone gives KL ~ 999 / (2 · 10,000) = 0.05 (± 0.002); the classifier's errors add a little
    assert abs(scores["kl_stacked"] - scores["kl_stacked_real"]) < 0.02, scores
    assert 0.04 < scores["kl_stacked"] < 0.08
    assert "26000" in protocol["stacked"]


@pytest.mark.stage
def test_a_generator_of_one_digit_per_channel_scores_one_mode(digit_evaluator):
    prepared, path = digit_evaluator
    model, info = evaluator.load(path)
    collapsed = np.repeat(prepared.images[:1], 2000, axis=0)
    scores, _ = stacked.benchmark(evaluator.predict(model, collapsed), model, info)
    assert scores["modes_stacked"] == 1 and scores["kl_stacked"] == pytest.approx(np.log(1000))


@pytest.mark.stage
def test_evaluate_reports_the_benchmark_in_the_stacked_digit_space(digit_evaluator, tmp_path):
    _, path = digit_evaluator
    model, info = evaluator.load(path)
    ds = build(n=2000)  # a smaller prepared set: the same digit classifier, fitted "on" it
    evaluator.save(model, tmp_path / "evaluator.pt", info["accuracy"], content_hash(ds), 28, EvaluatorConfig(**info["recipe"]), 0)
    samples = [torch.from_numpy(x) for x in build(n=1000, seed=7).images]  # fresh stacks of training digits
    cfg = EvaluateConfig(batch_size=250, kid_subset_size=100, bootstrap=0)
    report = evaluate(samples, ds, tmp_path / "evaluator.pt", None, cfg, CPU, sample_seed=1)
    r = report.results
    assert r["modes_stacked"] > 600 and r["modes_stacked_real"] > 600  # 1,000 samples: ~632 modes expected
    assert r["fid_classifier"] < 5 and "fid_intra_classifier" not in r
    assert "stacked" in report.protocol and "stacked digits" in report.protocol["classifier_space"]
    assert len(report.per_class) == 1000


@pytest.mark.slow
def test_stacked_mnist_through_the_whole_pipeline_with_dvc_repro(tmp_path):
    """prepare -> fit_evaluator -> train -> sample -> evaluate on stacked-mnist, by a real `dvc repro`."""
    import json

    from conftest import dvc, make_project

    root = tmp_path / "proj"
    env = make_project(root, {"prepare": {"source": "stacked-mnist", "channels": 3, "stacked_n": 1000},
                              "train": {"eval_every": 0}, "tracking": {"enabled": False}})
    dvc(root, env, "repro")
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["source"] == "stacked-mnist" and meta["shape"] == [3, 28, 28] and meta["digits"]["heldout"] == 500
    assert torch.load(root / "models/evaluator.pt", weights_only=True)["stacked"] is True
    ev = json.loads((root / "metrics/eval.json").read_text())
    assert {"modes_stacked", "kl_stacked", "modes_stacked_real", "kl_stacked_real", "fid_classifier"} <= set(ev)
    n = ev["n_samples"]  # 128: real stacks hit ~ 1000 · (1 - e^(-n/1000)) = 120 modes
    assert 1 <= ev["modes_stacked"] <= n and 100 < ev["modes_stacked_real"] <= n
    assert "stacked" in json.loads((root / "metrics/protocol.json").read_text())["protocol_detail"]
