"""The evaluation protocol on known answers: real against real, a copier, a one-class generator;
the protocol hash; training-time FID against the evaluate path; `ganflow evaluate` and `compare`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, call_cli
from ganflow import evaluator, metrics as m
from ganflow.config import EvaluateConfig, EvaluatorConfig
from ganflow.data import content_hash
from ganflow.evaluation import evaluate
from ganflow.outputs import TRAIN_FILE_NAMES
from ganflow.io import to_pil

CPU = torch.device("cpu")
CFG = EvaluateConfig(batch_size=100, kid_subset_size=100, bootstrap=50)


class Images(torch.utils.data.Dataset):
    """In-memory samples, as the evaluate stage reads a PNG folder."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i])


def run(samples: np.ndarray, mnist, evaluator_file, cfg=CFG):
    return evaluate(Images(samples), mnist, evaluator_file, None, cfg, CPU, sample_seed=1)


@pytest.mark.stage
def test_real_against_real_scores_fid_near_zero_with_an_interval_holding_zero(mnist, fresh_mnist, evaluator_file):
    real = m.real_features(mnist.images, "classifier", evaluator_file, CFG, CPU).emb
    other = m.extract(fresh_mnist.images[::4], "classifier", evaluator_file, CFG, CPU).emb  # 1,000 unseen digits
    noise = m.extract(np.random.default_rng(0).integers(0, 256, (1000, 1, 28, 28), dtype=np.uint8),
                      "classifier", evaluator_file, CFG, CPU).emb
    lo, hi = m.fid_interval(other, real, 100, 0)
    point = m.fid(other, real)
    assert lo <= 0 <= hi  # bias-corrected: the interval may lie below the (upward-biased) point estimate
    assert point * 20 < m.fid(noise, real)


@pytest.fixture(scope="module")
def half_evaluator(tmp_path_factory, mnist):
    """An evaluator holding out half of `mnist`: 500 images a side, so FIDs at equal N mean something."""
    cfg = EvaluatorConfig(epochs=6, width=16, batch_size=32, lr=0.005, holdout=0.5)
    torch.manual_seed(0)
    model, acc = evaluator.fit(mnist.images, mnist.labels, 10, cfg, seed=0)
    path = tmp_path_factory.mktemp("half") / "evaluator.pt"
    evaluator.save(model, path, acc, content_hash(mnist), 28, cfg, 0)
    return path


@pytest.mark.stage
def test_a_copier_is_flagged_by_memorization_and_the_train_heldout_ratio(mnist, fresh_mnist, half_evaluator):
    _, info = evaluator.load(half_evaluator)
    heldout, train = evaluator.reference_split(info, half_evaluator, content_hash(mnist), len(mnist.images))
    copier = run(mnist.images[train], mnist, half_evaluator).results
    fresh = run(fresh_mnist.images[::8], mnist, half_evaluator).results  # 50 unseen digits per class
    assert copier["memorized_share_classifier"] == 1.0 and copier["nn_distance_ratio_classifier"] < 0.01
    assert fresh["memorized_share_classifier"] < 0.15 and fresh["nn_distance_ratio_classifier"] > 0.7
    # the copy is the very training set: FID(train) is 0 at equal N; fresh digits score 0.8-2.4 over seeds
    assert copier["fid_train_heldout_ratio_classifier"] < 0.1 < 0.5 < fresh["fid_train_heldout_ratio_classifier"]
    assert copier["n_heldout"] == len(heldout) == 500


@pytest.mark.stage
def test_a_one_class_generator_has_low_coverage_and_high_intra_class_fid(mnist, fresh_mnist, evaluator_file):
    threes = np.resize(fresh_mnist.images[fresh_mnist.labels == 3], (1000, 1, 28, 28))  # 400 threes, repeated
    varied = fresh_mnist.images[::4]  # 100 per class: N per class as for the threes
    one, many = run(threes, mnist, evaluator_file), run(varied, mnist, evaluator_file)
    assert one.results["class_coverage"] <= 3 and many.results["class_coverage"] == 10  # a few 3s pass for other digits
    assert one.results["coverage_classifier"] < 0.2 < many.results["coverage_classifier"]
    rows = {r["class"]: r for r in one.per_class}
    assert rows[3]["coverage"] > 0.5 and max(r["coverage"] for c, r in rows.items() if c != 3) < 0.2
    missing = [r["fid_intra"] for c, r in rows.items() if c != 3]
    assert min(missing) > 2 * rows[3]["fid_intra"]
    assert one.results["fid_intra_classifier"] > 2 * many.results["fid_intra_classifier"]
    assert [r["class"] for r in one.per_class] == list(range(10))
    assert one.pairs.shape == (16, 1, 28, 28) and one.pairs.dtype == torch.uint8


@pytest.mark.stage
def test_the_protocol_hash_changes_with_n_and_the_extractor(mnist, fresh_mnist, evaluator_file, tmp_path):
    x = fresh_mnist.images[:300]
    first = run(x, mnist, evaluator_file)
    base = first.results | {"protocol_detail": first.protocol}
    assert run(x, mnist, evaluator_file).results["protocol"] == base["protocol"]  # stable
    assert run(x[:200], mnist, evaluator_file).results["protocol"] != base["protocol"]
    other = tmp_path / "evaluator.pt"
    model, info = evaluator.load(evaluator_file)
    model.head.bias.data += 0.01
    evaluator.save(model, other, info["accuracy"], info["data_sha256"], 28, EvaluatorConfig(**info["recipe"]), info["seed"])
    report = run(x, mnist, other)
    changed = report.results | {"protocol_detail": report.protocol}
    assert changed["protocol"] != base["protocol"] and "protocol_detail" not in report.results
    assert changed["protocol_detail"]["classifier_weights_sha256"] != base["protocol_detail"]["classifier_weights_sha256"]
    for field in ("n_samples", "n_real", "sample_seed", "torch_fidelity", "classifier_resize", "reference", "heldout"):
        assert field in base["protocol_detail"]


@pytest.mark.stage  # fits a classifier / encoder (session fixture): too slow for the unit tier
def test_a_knob_of_a_space_not_fitted_leaves_the_evaluator_file_and_the_protocol_as_they_were(mnist, fresh_mnist, evaluator_file,
                                                                                                tmp_path):
    """evaluator.pt keeps the recipe of the spaces it holds: a SimCLR knob (or evaluator.space) does not move a
    classifier's file, so train and evaluate do not re-run for it and its scores stay comparable; its own knobs do."""
    model, info = evaluator.load(evaluator_file)
    cfg = EvaluatorConfig(**info["recipe"])

    def saved(name: str, c: EvaluatorConfig) -> bytes:
        evaluator.save(model, tmp_path / name, info["accuracy"], info["data_sha256"], 28, c, info["seed"])
        return (tmp_path / name).read_bytes()

    base = saved("a.pt", cfg)
    assert saved("b.pt", cfg.model_copy(update={"simclr_epochs": 3, "space": "classifier"})) == base
    assert saved("c.pt", cfg.model_copy(update={"epochs": cfg.epochs + 1})) != base
    x = fresh_mnist.images[:300]
    assert run(x, mnist, tmp_path / "b.pt").results["protocol"] == run(x, mnist, tmp_path / "a.pt").results["protocol"]


def test_a_classifier_fit_no_better_than_chance_is_refused(mnist):
    """A diverged fit (a learning rate far too high) predicts one class; its feature space would rate noise as
    perfect, so fit_evaluator stops with one line instead of saving it."""
    from ganflow import GanflowError

    torch.manual_seed(0)
    _, acc = evaluator.fit(mnist.images, mnist.labels, 10, EvaluatorConfig(epochs=1, width=8, batch_size=64, lr=1e6), seed=0)
    with pytest.raises(GanflowError, match=r"^evaluator: held-out accuracy 0\.\d+ is no better than naming the commonest "
                                           r"class \(0\.\d+\), so the classifier's fit failed; lower evaluator.lr"):
        evaluator.refuse_failed_fit(acc, mnist.labels, 0.1, 0)
    evaluator.refuse_failed_fit(0.85, mnist.labels, 0.1, 0)  # a working fit passes


@pytest.mark.stage
def test_training_fid_equals_the_evaluate_path(mnist, evaluator_file, tmp_path):
    from ganflow.nets import NetConfig, build
    from ganflow.sampling import PngFolder, write_samples

    torch.manual_seed(0)
    G, _ = build("dcgan", NetConfig(28, 1, z_dim=16, width=8))
    G.eval()
    write_samples(G, tmp_path / "samples", 300, 7, 128)
    during_training = m.TrainingFID(mnist.images, evaluator_file, 300, 7, CFG, CPU)(G)
    offline = evaluate(PngFolder(tmp_path / "samples"), mnist, evaluator_file, None, CFG, CPU, 7).results
    assert during_training == offline["fid_classifier"]


def test_density_and_coverage_match_the_authors_prdc_package():
    prdc = pytest.importorskip("prdc")
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(0.3, 1.1, size=(200, 16)).astype(np.float32)
    near = m.neighbours(torch.from_numpy(fake), torch.from_numpy(real), "classifier")
    theirs = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    assert near.scores["density_classifier"] == pytest.approx(theirs["density"], abs=1e-6)
    assert near.scores["coverage_classifier"] == pytest.approx(theirs["coverage"], abs=1e-6)
    assert near.covered.shape == (300,)


@pytest.mark.stage
def test_class_accuracy_score_trains_on_samples_and_tests_on_held_out(mnist, fresh_mnist, evaluator_file):
    cfg = CFG.model_copy(update={"cas": "on"})
    good = run(fresh_mnist.images[::8], mnist, evaluator_file, cfg)
    one = run(fresh_mnist.images[fresh_mnist.labels == 3][:500], mnist, evaluator_file, cfg)
    assert good.results["cas"] > 0.6 > 0.2 > one.results["cas"]
    assert 0 < good.results["cas_real"] <= 1
    assert "cas" in good.per_class[0] and good.protocol["cas"] != "off"


def _pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        to_pil(torch.from_numpy(x)).save(folder / f"{i:06d}.png")
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist, fresh_mnist, evaluator_file):
    """prepared data and an evaluator in a folder, and two sample folders: what `ganflow evaluate` reads."""
    import shutil

    from ganflow import data

    d = tmp_path_factory.mktemp("proj")
    data.save_prepared(mnist, d / "data/prepared", "mnist-5k")
    shutil.copy(evaluator_file, d / "evaluator.pt")
    _pngs(d / "a", fresh_mnist.images[:200])
    _pngs(d / "b", fresh_mnist.images[200:400])
    _pngs(d / "c", fresh_mnist.images[400:500])
    return d


def ganflow(*args, cwd):
    return call_cli(*args, cwd=cwd)


@pytest.mark.stage
def test_ganflow_evaluate_scores_any_folder_and_compare_refuses_another_protocol(project, tmp_path):
    ev = ("--prepared", project / "data/prepared", "--evaluator", project / "evaluator.pt")
    for name in "abc":
        r = ganflow("evaluate", "--samples", project / name, *ev, "--out", tmp_path / f"{name}.json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["n_samples"] == 200 and len(a["protocol"]) == 12 and a["protocol_detail"]["sample_seed"] is None
    same = ganflow("compare", tmp_path / "a.json", tmp_path / "b.json", cwd=tmp_path)
    assert same.returncode == 0 and "fid_classifier" in same.stdout
    other = ganflow("compare", tmp_path / "a.json", tmp_path / "c.json", cwd=tmp_path)
    lines = other.stderr.strip().splitlines()
    assert other.returncode == 1 and len(lines) == 1 and "different protocols" in lines[0] and "n_samples: 200 vs 100" in lines[0]
    forced = ganflow("compare", tmp_path / "a.json", tmp_path / "c.json", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "NOT COMPARABLE" in forced.stderr and "fid_classifier" in forced.stdout


def test_min_sample_count_agrees_with_the_config_bound():
    from ganflow.config import ConfigError, parse_params

    assert parse_params({"sample": {"n": m.MIN_SAMPLES}}).sample.n == m.MIN_SAMPLES
    with pytest.raises(ConfigError, match=f"sample.n must be greater than or equal to {m.MIN_SAMPLES}"):
        parse_params({"sample": {"n": m.MIN_SAMPLES - 1}})
    assert ROOT.joinpath("params.yaml").read_text().count("at least 6") == 1


@pytest.mark.slow
@pytest.mark.stage
def test_50k_samples_evaluate_with_bounded_memory(tmp_path, mnist, fresh_mnist):
    """The evaluate stage streams the samples: 50,000 PNGs (1,000 distinct digits, repeated) stay
    under the same RSS bound as sampling them."""
    import shutil

    from conftest import peak_rss, stage_workspace

    ws = stage_workspace(tmp_path / "ws", mnist, {"tracking": {"enabled": False}, "evaluate": {"bootstrap": 20}})
    distinct = _pngs(tmp_path / "distinct", fresh_mnist.images[::4])
    samples = tmp_path / "samples"
    samples.mkdir()
    files = sorted(distinct.iterdir())
    for i in range(50_000):
        shutil.copyfile(files[i % len(files)], samples / f"{i:06d}.png")
    (tmp_path / "g.pt").write_bytes(b"a generator")  # tracking is off: only a dep, never read
    out = [tmp_path / n for n in ("eval.json", "per_class.json", "pairs.png")]
    p = subprocess.Popen([sys.executable, str(ROOT / "stages/evaluate.py"), "--params", str(ws / "params.yaml"), str(samples),
                          str(ws / "prepared"), str(ws / "evaluator.pt"), str(tmp_path / "g.pt"), *map(str, out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = peak_rss(p)
    assert p.returncode == 0, p.stderr.read()[-2000:]
    assert json.loads(out[0].read_text())["n_samples"] == 50_000
    assert 0 < peak < 2 * 2**30, f"peak RSS {peak / 2**20:.0f} MiB"


@pytest.mark.stage
def test_the_generator_never_sees_the_held_out_images(tmp_path, mnist):
    from conftest import call_stage, stage_workspace

    ws = stage_workspace(tmp_path / "ws", mnist, {"tracking": {"enabled": False}, "train": {"steps": 2, "eval_every": 0}})
    outs = [tmp_path / n for n in TRAIN_FILE_NAMES]
    r = call_stage("train", "--params", str(ws / "params.yaml"), str(ws / "prepared"), str(ws / "evaluator.pt"), *map(str, outs))
    assert r.returncode == 0, r.stderr[-2000:]
    _, info = evaluator.load(ws / "evaluator.pt")
    heldout, train = evaluator.reference_split(info, ws / "evaluator.pt", content_hash(mnist), len(mnist.images))
    trained_on = torch.load(outs[0], weights_only=True)["data_sha256"]
    assert trained_on == content_hash(mnist.subset(train)) != content_hash(mnist)
    assert len(heldout) == 100 and len(train) == 900


@pytest.mark.stage  # fits a classifier / encoder (session fixture): too slow for the unit tier
def test_compare_reads_the_protocol_beside_eval_json(project, tmp_path):
    """The evaluate stage writes the protocol's fields to protocol.json beside eval.json (not a metrics file):
    compare names the differing fields from there, and only when that file holds the same protocol hash
    (else the eval.json is refused: its scores' protocol cannot be checked)."""
    from ganflow.evaluation import PROTOCOL_FILE

    ev = ("--prepared", project / "data/prepared", "--evaluator", project / "evaluator.pt")
    for name in "ac":
        out = tmp_path / name / "eval.json"
        out.parent.mkdir()
        assert ganflow("evaluate", "--samples", project / name, *ev, "--out", out, cwd=tmp_path).returncode == 0
        full = json.loads(out.read_text())
        out.write_text(json.dumps({k: v for k, v in full.items() if k != "protocol_detail"}))
        (out.parent / PROTOCOL_FILE).write_text(json.dumps({"protocol": full["protocol"], "protocol_detail": full["protocol_detail"]}))
    r = ganflow("compare", tmp_path / "a/eval.json", tmp_path / "c/eval.json", cwd=tmp_path)
    assert r.returncode == 1 and "n_samples: 200 vs 100" in r.stderr
    (tmp_path / "c" / PROTOCOL_FILE).write_text(json.dumps({"protocol": "another", "protocol_detail": {"n_samples": 1}}))
    r = ganflow("compare", tmp_path / "a/eval.json", tmp_path / "c/eval.json", cwd=tmp_path)
    # a stale protocol.json is not read: without the fields its hash stands for, the file is refused
    assert r.returncode == 1 and f"{tmp_path / 'c/eval.json'}: no protocol and protocol_detail" in r.stderr


@pytest.mark.parametrize("net", ["classifier", "stacked", "encoder"])
def test_the_scoring_form_folds_batch_norm_and_gives_the_nets_outputs(net):
    """evaluator.scoring_form: no batch norm left, channels-last convs, the original net untouched, and
    the same features and logits up to float32 rounding (batch norms with non-trivial statistics)."""
    from ganflow import simclr

    torch.manual_seed(0)
    model = {"classifier": lambda: evaluator.Classifier(3, 10), "stacked": lambda: evaluator.StackedClassifier(evaluator.Classifier(1, 10)),
             "encoder": lambda: simclr.Encoder(3, 16)}[net]()
    for bn in (mod for mod in model.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.3, 3), bn.weight.data.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = evaluator.scoring_form(model)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in fast.modules())
    convs = [mod for mod in fast.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randint(0, 256, (40, 3, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        want, got = model(x), fast(x)
    for a, b in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()))
    with pytest.raises(ValueError, match="eval mode"):
        evaluator.scoring_form(model.train())
