"""The evaluation protocol: every score of a set of samples against the prepared data, and the
record of how they were computed (the protocol, hashed, so that scores made under different
protocols are never compared by mistake). Used by the evaluate stage and `ganflow evaluate`."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset

from ganflow import GanflowError, data, evaluator, metrics as m, stacked
from ganflow.accel import select_device
from ganflow.config import EvaluatorConfig
from ganflow.data import ImageSet, content_hash
from ganflow.sampling import PngFolder

if TYPE_CHECKING:
    from ganflow.config import EvaluateConfig, Params

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
    near = m.neighbours(fake.emb, real.emb, space, train)  # first: it refuses too few samples in one line
    results = m.scores(fake, real, space, cfg) | near.scores  # FID first, as people read it
    if cfg.bootstrap:
        lo, hi = m.fid_interval(fake.emb, real.emb, cfg.bootstrap, SEED)
        results |= {m.key(m.FID_LOW, space): lo, m.key(m.FID_HIGH, space): hi}
    results |= m.train_heldout(fake.emb, real.emb[train], real.emb[heldout], SEED, space)
    results |= m.memorization(near.nn_dist, real.emb[train], real.emb[heldout], space)
    return results, near.covered, near.nn_dist, near.nn_index


def evaluate(samples: Dataset, ds: ImageSet, evaluator_path: str | Path, inception: Path | None,
             cfg: EvaluateConfig, device: torch.device, sample_seed: int | None = None) -> Report:
    """Score `samples` (uint8 C×H×W tensors, read lazily) against the prepared set `ds`, in every
    feature space the evaluator file holds (the classifier and/or the label-free encoder)."""
    n = len(samples)
    if n < m.MIN_SAMPLES:
        raise GanflowError(f"{n} samples: the scores need at least {m.MIN_SAMPLES} (the k-NN metrics use k = {m.DC_K})")
    classifier, info = evaluator.load(evaluator_path)
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
    per_class, cas, stacked_protocol = [], False, {}
    if "classifier" in spaces:
        per_class, cas, stacked_protocol = class_scores(samples, ds, feats["classifier"], covered, classifier, info, results,
                                                        cfg, device)
    else:
        log.info("IS, class coverage, class KL, intra-class FID and CAS skipped: they need classes, and %s",
                 "the data has no labels" if ds.labels is None else "evaluator.space fitted no classifier")

    if inception is not None:
        real_i = m.real_features(ds.images, "inception", inception, cfg, device)
        fake_i = m.extract(samples, "inception", inception, cfg, device)
        near_i = m.neighbours(fake_i.emb, real_i.emb, "inception")
        results |= m.scores(fake_i, real_i, "inception", cfg) | near_i.scores

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
    if stacked_protocol:
        protocol |= stacked_protocol
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
                     "inception_resize": m.RESIZE["inception"], "inception_dtype": cfg.feature_extractor_internal_dtype or "float32"}
    results[m.KEY_PROTOCOL] = protocol_hash(protocol)
    if n < m.UNBIASED_FROM:
        log.warning("only %d samples: FID is biased below %d; compare FIDs only at equal N", n, m.UNBIASED_FROM)

    closest = nn_dist.argsort()[:N_PAIRS]
    pairs = torch.cat([torch.stack([samples[int(i)] for i in closest]),
                       torch.from_numpy(ds.images[train[nn_index[closest].numpy()]])])
    return Report(results, protocol, per_class, pairs)


def class_scores(samples: Dataset, ds: ImageSet, feats: tuple[m.Features, m.Features], covered: torch.Tensor,
                 classifier: torch.nn.Module, info: dict, results: dict[str, Any], cfg: EvaluateConfig,
                 device: torch.device) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
    """The scores that need classes, in the classifier's space (added to `results`): intra-class FID
    (StackedMNIST: its 1,000-mode benchmark instead), class coverage and KL, CAS; and the per-class
    table. Returns (the table, whether CAS ran, the benchmark's protocol fields)."""
    fake, real = feats
    n_classes = len(ds.classes)
    heldout, _ = evaluator.split(len(ds.images), info["recipe"]["holdout"], info["seed"])
    pred = fake.logits.argmax(1).numpy()
    is_stacked, stacked_protocol = bool(info.get("stacked")), {}
    if is_stacked:  # 1,000 modes of ~5 samples each: no intra-class FID, the benchmark instead
        intra = [None] * n_classes
        bench, stacked_protocol = stacked.benchmark(pred, classifier, info)
        results |= bench
    else:
        intra = m.intra_class_fid(fake, real.emb, ds.labels, n_classes)
        results[m.key(m.FID_INTRA, "classifier")] = float(np.mean([f for f in intra if f is not None]))
    real_hist = m.class_histogram(ds.labels, n_classes)
    results |= m.class_stats(pred, real_hist)
    cas_per_class, cas = None, use_cas(cfg, device)
    if cas:
        recipe = EvaluatorConfig(**info["recipe"])
        acc, cas_per_class = class_accuracy_score(samples, pred, ds.images[heldout], ds.labels[heldout], n_classes,
                                                  recipe, device)
        # the baseline: the evaluator's accuracy on the same held-out images (stacked: on the triples)
        real_acc = evaluator.accuracy(classifier, ds.images[heldout], ds.labels[heldout]) if is_stacked else info["accuracy"]
        results |= {m.KEY_CAS: acc, m.KEY_CAS_REAL: float(real_acc)}
    per_class = [
        {"class": c, "name": ds.classes[c], "real": int((ds.labels == c).sum()), "real_share": float(real_hist[c]),
         "sample_share": float((pred == c).mean()), "coverage": float(covered[torch.from_numpy(ds.labels == c)].float().mean()),
         "fid_intra": intra[c]} | ({"cas": cas_per_class[c]} if cas_per_class else {})
        for c in range(n_classes)
    ]
    return per_class, cas, stacked_protocol


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


MAX_RESULTS_BYTES = 10 << 20  # an eval.json is a few kB


def load_results(path: str | Path) -> dict[str, Any]:
    """An eval.json, checked: a regular file of at most MAX_RESULTS_BYTES holding a JSON object whose
    `protocol` is the hash of its `protocol_detail` (its own, as `ganflow evaluate --out` writes it, or
    that of the protocol.json beside it, as the evaluate stage writes them), recomputed here: an edited
    protocol, or a hash copied from another file, is refused. Anything else is one GanflowError naming the file."""
    path = Path(path)
    try:
        if not path.is_file():
            raise GanflowError(f"{path}: not a regular file (an eval.json is)")
        with open(path, "rb") as f:
            raw = f.read(MAX_RESULTS_BYTES + 1)
        if len(raw) > MAX_RESULTS_BYTES:
            raise GanflowError(f"{path}: over {MAX_RESULTS_BYTES >> 20} MB, not an eval.json")
        results = json.loads(raw)
    except OSError as err:
        raise GanflowError(f"{path}: unreadable ({err.strerror or type(err).__name__})") from None
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, nested past the parser's depth
        raise GanflowError(f"{path}: not valid JSON ({type(err).__name__})") from None
    if not isinstance(results, dict):
        raise GanflowError(f"{path}: holds a JSON {type(results).__name__}, not an eval.json's object (per_class.json is a table)")
    beside = path.with_name(PROTOCOL_FILE)  # the evaluate stage's eval.json holds the hash, protocol.json the fields
    if m.KEY_PROTOCOL_DETAIL not in results and beside.is_file() and beside.stat().st_size <= MAX_RESULTS_BYTES:
        try:
            proto = json.loads(beside.read_bytes())
        except (ValueError, RecursionError):
            proto = None
        if isinstance(proto, dict) and proto.get(m.KEY_PROTOCOL) == results.get(m.KEY_PROTOCOL):
            results[m.KEY_PROTOCOL_DETAIL] = proto.get(m.KEY_PROTOCOL_DETAIL)
    detail, claimed = results.get(m.KEY_PROTOCOL_DETAIL), results.get(m.KEY_PROTOCOL)
    if not isinstance(detail, dict) or not isinstance(claimed, str):
        raise GanflowError(f"{path}: no {m.KEY_PROTOCOL} and {m.KEY_PROTOCOL_DETAIL} (not an eval.json of ganflow evaluate, "
                           f"nor one with its {PROTOCOL_FILE} beside it)")
    if protocol_hash(detail) != claimed:
        raise GanflowError(f"{path}: its {m.KEY_PROTOCOL} {claimed!r} is not the hash of its {m.KEY_PROTOCOL_DETAIL} "
                           f"({protocol_hash(detail)}): the file was edited; refused")
    return results


def comparable(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The protocol fields in which two results differ (empty: their scores compare). Each is an
    eval.json's dict, with the protocol's fields under protocol_detail when they are known."""
    pa, pb = a.get(m.KEY_PROTOCOL_DETAIL, {}), b.get(m.KEY_PROTOCOL_DETAIL, {})
    if a.get(m.KEY_PROTOCOL) == b.get(m.KEY_PROTOCOL) and a.get(m.KEY_PROTOCOL):
        return []
    diff = [f"{k}: {pa.get(k)} vs {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    return diff or [f"protocol: {a.get(m.KEY_PROTOCOL)} vs {b.get(m.KEY_PROTOCOL)}"]


def evaluate_folder(samples_dir: str | Path, prepared: str | Path, evaluator_path: str | Path, params: Params,
                    sample_seed: int | None = None) -> Report:
    """The evaluate flow on a folder of PNGs, shared by the evaluate stage and `ganflow evaluate`:
    Inception weights resolved first (fails when evaluate.inception is on and none can be had), the
    prepared data, the samples read lazily batch by batch, scored on train.device."""
    inception = m.resolve_inception_weights(params.evaluate)
    ds, meta = data.load_prepared(prepared)
    samples = PngFolder(samples_dir, meta["shape"])
    t0 = time.perf_counter()
    report = evaluate(samples, ds, evaluator_path, inception, params.evaluate, select_device(params.train.device), sample_seed)
    log.info("scored %d samples in %.1f s", len(samples), time.perf_counter() - t0)
    return report
