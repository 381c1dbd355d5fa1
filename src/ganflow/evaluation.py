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
DIGITS = 6  # significant digits of the floats written to eval.json and per_class.json
PROTOCOL_FILE = "protocol.json"  # beside eval.json: the protocol's fields (DVC does not read it as metrics)


@dataclass
class Report:
    results: dict[str, Any]  # metrics/eval.json: scores, N and the protocol hash
    protocol: dict[str, Any]  # metrics/protocol.json: the fields the hash is of (not a metrics file)
    per_class: list[dict[str, Any]]  # metrics/per_class.json: one row per class
    pairs: torch.Tensor  # uint8 2k×C×H×W: the k samples nearest a training image, then those images


def rounded(obj: Any, digits: int = DIGITS) -> Any:
    """Floats (nested in dicts and lists too) to `digits` significant digits: what the result files hold.
    The last bits of a float sum depend on how BLAS and torch split it over threads, so unrounded
    scores differ at ~1e-11 between machines and re-runs and would dirty `git status` for nothing."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    return obj


def protocol_file(report: Report) -> dict[str, Any]:
    """metrics/protocol.json: the protocol's hash and its fields, read back by `load_results`."""
    return {m.KEY_PROTOCOL: report.results[m.KEY_PROTOCOL], m.KEY_PROTOCOL_DETAIL: report.protocol}


def load_results(path: str | Path) -> dict[str, Any]:
    """An eval.json, with its protocol's fields from the protocol.json beside it when that file holds
    the same protocol hash (files written by `ganflow evaluate --out` carry the fields themselves)."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GanflowError(f"{path}: unreadable results ({err})") from None
    beside = path.with_name(PROTOCOL_FILE)
    if m.KEY_PROTOCOL_DETAIL not in results and beside.is_file():
        try:
            proto = json.loads(beside.read_text())
        except ValueError:
            proto = {}
        if proto.get(m.KEY_PROTOCOL) == results.get(m.KEY_PROTOCOL):
            results[m.KEY_PROTOCOL_DETAIL] = proto.get(m.KEY_PROTOCOL_DETAIL, {})
    return results


def protocol_hash(protocol: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:12]


def use_cas(cfg: EvaluateConfig, device: torch.device) -> bool:
    """evaluate.cas: auto trains the CAS classifier on CUDA only (on 2 CPU cores it costs ~30 s)."""
    if cfg.cas == "auto" and device.type != "cuda":
        log.info("CAS skipped on %s (evaluate.cas: auto runs it on CUDA; set it to on to run it here)", device.type)
    return cfg.cas == "on" or (cfg.cas == "auto" and device.type == "cuda")


def evaluate(samples: Dataset, ds: ImageSet, evaluator_path: str | Path, inception: Path | None,
             cfg: EvaluateConfig, device: torch.device, sample_seed: int | None = None) -> Report:
    """Score `samples` (uint8 C×H×W tensors, read lazily) against the prepared set `ds`."""
    n = len(samples)
    if n < m.MIN_SAMPLES:
        raise GanflowError(f"{n} samples: the scores need at least {m.MIN_SAMPLES} (the k-NN metrics use k = {m.DC_K})")
    if ds.labels is None:
        raise GanflowError("the prepared data has no labels: the classifier feature space needs class sub-folders")
    _, info = evaluator.load(evaluator_path)
    data_sha256 = content_hash(ds)
    heldout, train = evaluator.reference_split(info, evaluator_path, data_sha256, len(ds.images))
    n_classes = len(ds.classes)

    # one pass of each image set through the classifier; every score below reuses these features
    real = m.real_features(ds.images, "classifier", evaluator_path, cfg, device)
    fake = m.extract(samples, "classifier", evaluator_path, cfg, device)
    space = "classifier"
    results: dict[str, Any] = {m.KEY_N_SAMPLES: n, m.KEY_N_REAL: len(real), m.KEY_N_HELDOUT: min(len(heldout), len(train))}
    results |= m.scores(fake, real, space, cfg)
    if cfg.bootstrap:
        lo, hi = m.fid_interval(fake.emb, real.emb, cfg.bootstrap, SEED)
        results |= {m.key(m.FID_LOW, space): lo, m.key(m.FID_HIGH, space): hi}
    dc, covered = m.density_coverage(fake.emb, real.emb, space)
    results |= dc
    results |= m.train_heldout(fake.emb, real.emb[train], real.emb[heldout], SEED)
    memo, nn_dist, nn_index = m.memorization(fake.emb, real.emb[train], real.emb[heldout])
    results |= memo
    intra = m.intra_class_fid(fake, real.emb, ds.labels, n_classes)
    results[m.key(m.FID_INTRA, space)] = float(np.mean([f for f in intra if f is not None]))
    pred = fake.logits.argmax(1).numpy()
    real_hist = m.class_histogram(ds.labels, n_classes)
    results |= m.class_stats(pred, real_hist)
    cas_per_class, cas = None, use_cas(cfg, device)
    if cas:
        recipe = EvaluatorConfig(**info["recipe"])
        acc, cas_per_class = class_accuracy_score(samples, pred, ds.images[heldout], ds.labels[heldout], n_classes,
                                                  recipe, device)
        results |= {m.KEY_CAS: acc, m.KEY_CAS_REAL: float(info["accuracy"])}

    if inception is not None:
        real_i = m.real_features(ds.images, "inception", inception, cfg, device)
        fake_i = m.extract(samples, "inception", inception, cfg, device)
        results |= m.scores(fake_i, real_i, "inception", cfg) | m.density_coverage(fake_i.emb, real_i.emb, "inception")[0]

    protocol = {
        "torch_fidelity": torch_fidelity.__version__,
        "classifier_extractor": m.CLASSIFIER_EXTRACTOR,
        "classifier_weights_sha256": m.file_sha256(evaluator_path)[:16],
        "classifier_resize": m.RESIZE["classifier"],
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
    if inception is not None:
        protocol |= {"inception_extractor": m.INCEPTION_EXTRACTOR, "inception_weights_sha256": m.file_sha256(inception)[:16],
                     "inception_resize": m.RESIZE["inception"]}
    results[m.KEY_PROTOCOL] = protocol_hash(protocol)
    if n < m.UNBIASED_FROM:
        log.warning("only %d samples: FID is biased below %d; compare FIDs only at equal N", n, m.UNBIASED_FROM)

    per_class = [
        {"class": c, "name": ds.classes[c], "real": int((ds.labels == c).sum()), "real_share": float(real_hist[c]),
         "sample_share": float((pred == c).mean()), "coverage": float(covered[torch.from_numpy(ds.labels == c)].float().mean()),
         "fid_intra": intra[c]} | ({"cas": cas_per_class[c]} if cas_per_class else {})
        for c in range(n_classes)
    ]
    closest = nn_dist.argsort()[:N_PAIRS]
    pairs = torch.cat([torch.stack([samples[int(i)] for i in closest]),
                       torch.from_numpy(ds.images[train[nn_index[closest].numpy()]])])
    return Report(results, protocol, per_class, pairs)


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
    """The protocol fields in which two results differ (empty: their scores compare). Each is an
    eval.json's dict, with the protocol's fields under protocol_detail when they are known."""
    pa, pb = a.get(m.KEY_PROTOCOL_DETAIL, {}), b.get(m.KEY_PROTOCOL_DETAIL, {})
    if a.get(m.KEY_PROTOCOL) == b.get(m.KEY_PROTOCOL) and a.get(m.KEY_PROTOCOL):
        return []
    diff = [f"{k}: {pa.get(k)} vs {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    return diff or [f"protocol: {a.get(m.KEY_PROTOCOL)} vs {b.get(m.KEY_PROTOCOL)}"]
