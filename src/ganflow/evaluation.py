"""The evaluation protocol: every score of a set of samples against the prepared data, and the
record of how they were computed (the protocol, hashed, so that scores made under different
protocols are never compared by mistake). Used by the evaluate stage and `ganflow evaluate`."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset

from ganflow import GanflowError, evaluator, metrics as m
from ganflow.config import EvaluatorConfig
from ganflow.data import ImageSet, content_hash

if TYPE_CHECKING:
    from ganflow.config import EvaluateConfig

log = logging.getLogger("ganflow.evaluation")
SEED = m.TF_DEFAULTS["rng_seed"]  # every resample and subset of the protocol draws from it
N_PAIRS = 8  # sample/training pairs shown in nearest_pairs.png


@dataclass
class Report:
    results: dict[str, Any]  # metrics/eval.json: scores, N, the protocol hash and its fields
    per_class: list[dict[str, Any]]  # metrics/per_class.json: one row per class
    pairs: torch.Tensor  # uint8 2k×C×H×W: the k samples nearest a training image, then those images


def protocol_hash(protocol: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:12]


def use_cas(cfg: EvaluateConfig, device: torch.device) -> bool:
    """evaluate.cas: auto trains the CAS classifier on CUDA only (on 2 CPU cores it costs ~30 s)."""
    if cfg.cas == "auto" and device.type != "cuda":
        log.info("CAS skipped on %s (evaluate.cas: auto runs it on CUDA; set it to on to run it here)", device.type)
    return cfg.cas == "on" or (cfg.cas == "auto" and device.type == "cuda")


def space_scores(fake: m.Features, real: m.Features, space: m.Space, train: np.ndarray, heldout: np.ndarray,
                 cfg: EvaluateConfig) -> tuple[dict[str, float], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scores that need no classes, in one feature space: FID (and its bootstrap interval), IS when
    the space has logits, KID, precision/recall, density/coverage, train vs held-out FID and
    memorization. Also which real points are covered and each sample's nearest training image."""
    results = m.scores(fake, real, space, cfg)
    if cfg.bootstrap:
        lo, hi = m.fid_interval(fake.emb, real.emb, cfg.bootstrap, SEED)
        results |= {m.key(m.FID_LOW, space): lo, m.key(m.FID_HIGH, space): hi}
    dc, covered = m.density_coverage(fake.emb, real.emb, space)
    results |= dc
    results |= m.train_heldout(fake.emb, real.emb[train], real.emb[heldout], SEED, space)
    memo, nn_dist, nn_index = m.memorization(fake.emb, real.emb[train], real.emb[heldout], space)
    return results | memo, covered, nn_dist, nn_index


def primary_fid_key(results: dict[str, Any]) -> str:
    """The FID that selects and promotes models: the classifier's when it scored `results`, else the
    label-free encoder's."""
    return next((k for k in (m.key(m.FID, "classifier"), m.key(m.FID, "simclr")) if k in results), m.key(m.FID, "classifier"))


def evaluate(samples: Dataset, ds: ImageSet, evaluator_path: str | Path, inception: Path | None,
             cfg: EvaluateConfig, device: torch.device, sample_seed: int | None = None) -> Report:
    """Score `samples` (uint8 C×H×W tensors, read lazily) against the prepared set `ds`, in every
    feature space the evaluator file holds (the classifier and/or the label-free encoder)."""
    n = len(samples)
    if n < m.MIN_SAMPLES:
        raise GanflowError(f"{n} samples: the scores need at least {m.MIN_SAMPLES} (the k-NN metrics use k = {m.DC_K})")
    _, info = evaluator.load(evaluator_path)
    spaces = evaluator.spaces(info)
    data_sha256 = content_hash(ds)
    heldout, train = evaluator.reference_split(info, evaluator_path, data_sha256, len(ds.images))
    results: dict[str, Any] = {m.KEY_N_SAMPLES: n, m.KEY_N_REAL: len(ds.images), m.KEY_N_HELDOUT: min(len(heldout), len(train))}

    # one pass of each image set through each space's extractor; every score below reuses these features
    feats = {}
    for space in spaces:
        feats[space] = m.extract(samples, space, evaluator_path, cfg, device), m.real_features(ds.images, space, evaluator_path, cfg, device)
        scored, *found = space_scores(*feats[space], space, train, heldout, cfg)
        results |= scored
        if space == spaces[0]:
            covered, nn_dist, nn_index = found
    per_class, cas = [], False
    if "classifier" in spaces:
        per_class, cas = class_scores(samples, ds, feats["classifier"], covered, info, results, cfg, device)
    else:
        log.info("IS, class coverage, class KL, intra-class FID and CAS skipped: they need classes, and %s",
                 "the data has no labels" if ds.labels is None else "evaluator.space fitted no classifier")

    if inception is not None:
        real_i = m.real_features(ds.images, "inception", inception, cfg, device)
        fake_i = m.extract(samples, "inception", inception, cfg, device)
        results |= m.scores(fake_i, real_i, "inception", cfg) | m.density_coverage(fake_i.emb, real_i.emb, "inception")[0]

    protocol = {"torch_fidelity": torch_fidelity.__version__}
    for space in spaces:
        protocol |= {f"{space}_extractor": m.EXTRACTORS[space], f"{space}_weights_sha256": m.file_sha256(evaluator_path)[:16],
                     f"{space}_resize": m.RESIZE[space]}
    protocol |= {
        "data_sha256": data_sha256[:16],
        "reference": f"all {len(ds.images)} prepared images",
        "heldout": f"the evaluator's split (seed {info['seed']}, holdout {info['recipe']['holdout']}): "
                   f"{len(train)} train / {len(heldout)} held-out, both scored at N = {results[m.KEY_N_HELDOUT]}",
        "n_samples": n,
        "n_real": len(ds.images),
        "sample_seed": sample_seed,
        "kid": f"{m.TF_DEFAULTS['kid_subsets']} subsets of {min(cfg.kid_subset_size, n, len(ds.images))}",
        "prc_k": m.PRC_K,
        "dc_k": m.DC_K,
        "fid_interval": f"basic bootstrap, {cfg.bootstrap} resamples of both sets, {m.CONFIDENCE:.0%}" if cfg.bootstrap else "none",
        "memorization_quantile": m.MEMORIZATION_QUANTILE,
        "seed": SEED,
        "cas": json.dumps(info["recipe"], sort_keys=True) if cas else "off",
    }
    # fields a classifier-only protocol never had are added only when they say something, so its hash
    # (and the comparability of earlier results) stays as it was
    if spaces != ["classifier"]:
        protocol |= {"feature_spaces": ",".join(spaces), "labelled": ds.labels is not None}
        if "simclr" in spaces:
            recipe = info["recipe"]
            protocol["simclr_recipe"] = json.dumps({k: v for k, v in recipe.items() if k.startswith("simclr_")}, sort_keys=True)
    if ds.preprocess:
        protocol["prepare"] = ds.preprocess
    if inception is not None:
        protocol |= {"inception_extractor": m.INCEPTION_EXTRACTOR, "inception_weights_sha256": m.file_sha256(inception)[:16],
                     "inception_resize": m.RESIZE["inception"]}
    results |= {m.KEY_PROTOCOL: protocol_hash(protocol), m.KEY_PROTOCOL_DETAIL: protocol}
    if n < m.UNBIASED_FROM:
        log.warning("only %d samples: FID is biased below %d; compare FIDs only at equal N", n, m.UNBIASED_FROM)

    closest = nn_dist.argsort()[:N_PAIRS]
    pairs = torch.cat([torch.stack([samples[int(i)] for i in closest]),
                       torch.from_numpy(ds.images[train[nn_index[closest].numpy()]])])
    return Report(results, per_class, pairs)


def class_scores(samples: Dataset, ds: ImageSet, feats: tuple[m.Features, m.Features], covered: torch.Tensor,
                 info: dict, results: dict[str, Any], cfg: EvaluateConfig, device: torch.device) -> tuple[list[dict[str, Any]], bool]:
    """The scores that need classes, in the classifier's space (added to `results`): intra-class FID,
    class coverage and KL, CAS; and the per-class table. Returns (the table, whether CAS ran)."""
    fake, real = feats
    n_classes = len(ds.classes)
    heldout, _ = evaluator.split(len(ds.images), info["recipe"]["holdout"], info["seed"])
    intra = m.intra_class_fid(fake, real.emb, ds.labels, n_classes)
    results[m.key(m.FID_INTRA, "classifier")] = float(np.mean([f for f in intra if f is not None]))
    pred = fake.logits.argmax(1).numpy()
    real_hist = m.class_histogram(ds.labels, n_classes)
    results |= m.class_stats(pred, real_hist)
    cas_per_class, cas = None, use_cas(cfg, device)
    if cas:
        recipe = EvaluatorConfig(**info["recipe"])
        acc, cas_per_class = class_accuracy_score(samples, pred, ds.images[heldout], ds.labels[heldout], n_classes,
                                                  recipe, device)
        results |= {m.KEY_CAS: acc, m.KEY_CAS_REAL: float(info["accuracy"])}
    per_class = [
        {"class": c, "name": ds.classes[c], "real": int((ds.labels == c).sum()), "real_share": float(real_hist[c]),
         "sample_share": float((pred == c).mean()), "coverage": float(covered[torch.from_numpy(ds.labels == c)].float().mean()),
         "fid_intra": intra[c]} | ({"cas": cas_per_class[c]} if cas_per_class else {})
        for c in range(n_classes)
    ]
    return per_class, cas


def class_accuracy_score(samples: Dataset, pred: np.ndarray, images: np.ndarray, labels: np.ndarray,
                         n_classes: int, recipe: EvaluatorConfig, device: torch.device) -> tuple[float, list[float | None]]:
    """CAS (Ravuri & Vinyals 2019): the evaluator's architecture and recipe trained on the samples,
    labelled with the evaluator's predictions, then its accuracy on the held-out real images
    (overall and per class). Compare with the evaluator's own held-out accuracy (cas_real)."""
    x = np.stack([samples[i].numpy() for i in range(len(samples))])
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = evaluator.train(x, pred.astype(np.int64), n_classes, recipe, torch.Generator().manual_seed(SEED),
                                desc="CAS", device=device)
    hit = evaluator.predict(model, images) == labels
    per_class = [float(hit[labels == c].mean()) if (labels == c).any() else None for c in range(n_classes)]
    return float(hit.mean()), per_class


def comparable(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The protocol fields in which two eval.json results differ (empty: their scores compare)."""
    pa, pb = a.get(m.KEY_PROTOCOL_DETAIL, {}), b.get(m.KEY_PROTOCOL_DETAIL, {})
    if a.get(m.KEY_PROTOCOL) == b.get(m.KEY_PROTOCOL) and a.get(m.KEY_PROTOCOL):
        return []
    diff = [f"{k}: {pa.get(k)} vs {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    return diff or [f"protocol: {a.get(m.KEY_PROTOCOL)} vs {b.get(m.KEY_PROTOCOL)}"]
