import pickle
import urllib.error
from unittest import mock

import numpy as np
import pytest
import torch

from conftest import Payload
from ganflow import GanflowError, metrics
from ganflow.config import EvaluateConfig

CPU = torch.device("cpu")
CFG = EvaluateConfig(batch_size=100, kid_subset_size=100)


def halves(mnist):
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(mnist.images))
    return mnist.images[idx[:500]], mnist.images[idx[500:]]


@pytest.mark.stage
def test_classifier_space_real_vs_real_far_below_noise(mnist, evaluator_file):
    a, b = halves(mnist)
    noise = np.random.default_rng(1).integers(0, 256, size=a.shape, dtype=np.uint8)
    real = metrics.fidelity(a, b, "classifier", evaluator_file, CFG, CPU)
    fake = metrics.fidelity(noise, b, "classifier", evaluator_file, CFG, CPU)
    assert set(real) == {"fid_classifier", "is_classifier", "is_std_classifier", "kid_classifier",
                         "kid_std_classifier", "precision_classifier", "recall_classifier",
                         "density_classifier", "coverage_classifier"}
    assert real["fid_classifier"] * 20 < fake["fid_classifier"]
    assert real["kid_classifier"] < fake["kid_classifier"]
    assert real["precision_classifier"] > 0.5 > fake["precision_classifier"]
    assert real["coverage_classifier"] > 0.5 > fake["coverage_classifier"]
    assert real["is_classifier"] > 3 * fake["is_classifier"]  # real digits: confident and diverse


@pytest.mark.stage
def test_kid_subset_is_clamped_to_the_sample_count(mnist, evaluator_file):
    a, b = halves(mnist)
    out = metrics.fidelity(a[:40], b, "classifier", evaluator_file, EvaluateConfig(kid_subset_size=1000), CPU)
    assert np.isfinite(out["kid_classifier"])


@pytest.fixture
def inception_weights(tmp_path):
    """The real Inception-v3 architecture of torch-fidelity with random weights, saved as a state dict."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None), \
            mock.patch.object(fe.torch, "load", lambda *a, **k: {}):
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="x")
    path = tmp_path / "inception.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.stage
def test_inception_space_from_a_local_weights_file(mnist, inception_weights):
    a, b = halves(mnist)
    out = metrics.fidelity(a[:24], b[:24], "inception", inception_weights, EvaluateConfig(batch_size=24, kid_subset_size=24), CPU)
    assert set(out) == {"fid_inception", "is_inception", "is_std_inception", "kid_inception",
                        "kid_std_inception", "precision_inception", "recall_inception",
                        "density_inception", "coverage_inception"}
    assert all(np.isfinite(v) for v in out.values())


@pytest.mark.stage
def test_inception_runs_in_float64_when_asked(mnist, inception_weights):
    """evaluate.feature_extractor_internal_dtype float64 runs Inception in float64 (torch-fidelity's own text_to_dtype
    maps it to float32): its features move in the last float32 bits, not more."""
    x = mnist.images[:8]
    f32, f64 = (metrics.extract(x, "inception", inception_weights, EvaluateConfig(batch_size=8, feature_extractor_internal_dtype=d), CPU)
                for d in (None, "float64"))
    assert not torch.equal(f32.emb, f64.emb) and torch.allclose(f32.emb, f64.emb, rtol=1e-3, atol=1e-5)


def _offline(*a, **k):
    raise urllib.error.URLError("offline")


@pytest.mark.stage
def test_inception_weights_resolution(tmp_path, inception_weights, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    assert metrics.resolve_inception_weights(EvaluateConfig(inception="off", inception_weights=str(inception_weights))) is None
    assert metrics.resolve_inception_weights(EvaluateConfig(inception="on", inception_weights=str(inception_weights))) == inception_weights
    assert metrics.resolve_inception_weights(EvaluateConfig(inception="auto")) is None  # offline, nothing cached
    with pytest.raises(GanflowError, match="evaluate.inception is on but no Inception weights can be had"):
        metrics.resolve_inception_weights(EvaluateConfig(inception="on"))
    with pytest.raises(GanflowError, match="evaluate.inception_weights .*: no such file"):
        metrics.resolve_inception_weights(EvaluateConfig(inception_weights=str(tmp_path / "missing.pth")))
    # torch-fidelity's own cache is used when present
    cached = metrics.inception_cache_path()
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(inception_weights.read_bytes())
    assert metrics.resolve_inception_weights(EvaluateConfig(inception="on")) == cached


def test_weights_with_a_pickle_payload_are_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        torch.save({"w": Payload()}, f, pickle_module=pickle)
    with pytest.raises(GanflowError, match="not a plain weights file"):
        metrics.check_weights_file(bad)


def test_class_stats_detect_mode_collapse():
    real = np.full(10, 0.1)
    balanced = metrics.class_stats(np.repeat(np.arange(10), 50), real)
    assert balanced == {"class_coverage": 10, "class_kl": pytest.approx(0.0, abs=1e-6)}
    collapsed = metrics.class_stats(np.array([3] * 490 + [4] * 10), real)
    assert collapsed["class_coverage"] == 2 and collapsed["class_kl"] > 1.5


@pytest.mark.stage
def test_scores_match_torch_fidelity_calculate_metrics(mnist, evaluator_file):
    """Features once, metrics from them: the same numbers as torch-fidelity's one-call API."""
    import torch_fidelity

    from ganflow.data import ImageArray

    a, b = halves(mnist)
    ours = metrics.fidelity(a, b, "classifier", evaluator_file, CFG, CPU)
    metrics.register()
    theirs = torch_fidelity.calculate_metrics(
        input1=ImageArray(a), input2=ImageArray(b), fid=True, isc=True, kid=True, prc=True, cache=False, cuda=False,
        feature_extractor=metrics.CLASSIFIER_EXTRACTOR, feature_extractor_weights_path=str(evaluator_file),
        kid_subset_size=CFG.kid_subset_size, batch_size=CFG.batch_size, save_cpu_ram=True, verbose=False)
    for k, stem in [("frechet_inception_distance", "fid"), ("inception_score_mean", "is"), ("kernel_inception_distance_mean", "kid"),
                    ("precision", "precision"), ("recall", "recall")]:
        assert ours[f"{stem}_classifier"] == pytest.approx(theirs[k], rel=1e-6), stem


@pytest.mark.stage
def test_real_features_cache_is_keyed_by_content_and_safe(mnist, evaluator_file, caplog):
    a, b = halves(mnist)
    first = metrics.real_features(b, "classifier", evaluator_file, CFG, CPU)
    files = list(metrics.cache_dir().glob("*.npz"))
    assert len(files) == 1
    assert torch.equal(metrics.real_features(b, "classifier", evaluator_file, CFG, CPU).emb, first.emb)
    inverted = metrics.real_features(255 - b, "classifier", evaluator_file, CFG, CPU)  # other pixels: another entry
    assert len(list(metrics.cache_dir().glob("*.npz"))) == 2 and not torch.equal(inverted.emb, first.emb)
    with open(files[0], "wb") as f:  # a planted pickle in its place
        np.savez(f, emb=np.array([Payload()], dtype=object), logits=np.zeros(1))
    again = metrics.real_features(b, "classifier", evaluator_file, CFG, CPU)
    assert torch.equal(again.emb, first.emb) and "ignoring the feature cache" in caplog.text


def _plant(path, emb, logits, key=None):
    with open(path, "wb") as f:
        np.savez(f, emb=emb, logits=logits, **({} if key is None else {"key": np.array(key)}))


@pytest.mark.stage  # fits a classifier / encoder (session fixture): too slow for the unit tier
def test_a_planted_well_formed_cache_is_not_trusted(mnist, evaluator_file, caplog):
    """S3: an npz of the right shapes planted under the cache name gave FID 0.0; C7: one with the wrong row
    count gave an IndexError. Each is ignored with a warning and rewritten, also when it copies the key."""
    a, b = halves(mnist)
    fake = metrics.extract(a, "classifier", evaluator_file, CFG, CPU)
    honest = metrics.fidelity(a, b, "classifier", evaluator_file, CFG, CPU)
    (path,) = metrics.cache_dir().glob("classifier-*.npz")
    with np.load(path) as z:
        key = str(z["key"])
    forged = [(fake.emb.numpy(), fake.logits.numpy(), None),  # the samples' own features: FID 0
              (fake.emb.numpy(), fake.logits.numpy(), key),  # ... claiming the right key
              (fake.emb[:7].numpy(), fake.logits[:7].numpy(), key)]  # C7: 7 rows for 500 images
    for emb, logits, k in forged:
        _plant(path, emb, logits, k)
        caplog.clear()
        out = metrics.fidelity(a, b, "classifier", evaluator_file, CFG, CPU)
        assert out["fid_classifier"] == pytest.approx(honest["fid_classifier"], rel=1e-5), k
        assert "ignoring the feature cache" in caplog.text
        with np.load(path) as z:  # rewritten with the real features
            assert len(z["emb"]) == len(b) and str(z["key"]) == key


def test_a_foreign_state_dict_as_inception_weights_is_one_line(mnist, tmp_path):
    """C8: a state dict of another net at torch-fidelity's Inception weights path gave a 29-line traceback."""
    path = tmp_path / metrics.INCEPTION_FILE
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(GanflowError) as err:
        metrics.extract(mnist.images[:8], "inception", path, CFG, CPU)
    assert str(err.value).startswith(f"{path}: not the weights of the inception feature extractor") and "\n" not in str(err.value)


def _streamed_before(fake, real, train, heldout):
    """The k-NN scores as ganflow computed them before one pass per matrix (commit 3793ec5): k-th
    neighbours by kthvalue, each score over its own distance matrices (torch-fidelity's for PRC)."""
    from torch_fidelity.metric_prc import calc_cdist_part

    def nearest(a, b):
        best = [calc_cdist_part(c, b).min(1) for c in a.split(512)]
        return torch.cat([m.values for m in best]), torch.cat([m.indices for m in best])

    radii = torch.cat([calc_cdist_part(c, real).kthvalue(6, dim=1).values for c in real.split(512)])
    inside, near_fake = 0, torch.full((len(real),), float("inf"))
    for c in fake.split(512):
        d = calc_cdist_part(c, real)
        inside += int((d < radii).sum())
        near_fake = torch.minimum(near_fake, d.min(0).values)
    d_fake, idx = nearest(fake, real[train])
    d_real, _ = nearest(real[heldout], real[train])
    threshold = torch.quantile(d_real, metrics.MEMORIZATION_QUANTILE)
    return (inside / (5 * len(fake)), float((near_fake < radii).float().mean()), near_fake < radii, d_fake, idx,
            float((d_fake < threshold).float().mean()), float(d_fake.median() / d_real.median().clamp_min(1e-12)))


@pytest.mark.parametrize("n, n_real, dim", [(1300, 1100, 384), (700, 900, 128)])
def test_neighbours_give_exactly_the_scores_of_the_per_score_computation(n, n_real, dim):
    """One pass per distance matrix, k-th neighbours by topk: bit for bit torch-fidelity's precision and
    recall and ganflow's earlier density, coverage and nearest training images, on features with copies
    of real points and repeated samples (exact ties), several CHUNKs long, at the stacked space's width."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(dim)
    real = torch.randn(n_real, dim, generator=g).relu()
    fake = 1.1 * torch.randn(n, dim, generator=g).relu()
    fake[: n // 4] = real[torch.randint(0, n_real, (n // 4,), generator=g)]
    fake[n // 4 : n // 2] = fake[: n // 4]
    perm = torch.randperm(n_real, generator=g).numpy()
    heldout, train = perm[: n_real // 5], perm[n_real // 5 :]
    near = metrics.neighbours(fake, real, "classifier", train)
    prc = prc_features_to_metric(fake, real, prc_neighborhood=3, prc_batch_size=512, save_cpu_ram=True, verbose=False)
    density, coverage, covered, d_fake, idx, memorized, ratio = _streamed_before(fake, real, train, heldout)
    assert near.scores == {"precision_classifier": prc["precision"], "recall_classifier": prc["recall"],
                           "density_classifier": density, "coverage_classifier": coverage}
    assert torch.equal(near.covered, covered) and torch.equal(near.nn_dist, d_fake) and torch.equal(near.nn_index, idx)
    assert metrics.memorization(near.nn_dist, real[train], real[heldout]) == {
        "memorized_share_classifier": memorized, "nn_distance_ratio_classifier": ratio}
    assert 0.1 < prc["precision"] < 0.9 and 0.1 < coverage < 0.9 and memorized > 0.2  # the data tests something
