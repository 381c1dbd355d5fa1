"""Scores in two feature spaces, computed with torch-fidelity:

- `classifier`: ganflow's own classifier (models/evaluator.pt), registered with torch-fidelity as
  the feature extractor "ganflow-classifier". Always available, offline too.
- `inception`: torch-fidelity's Inception-v3, when its weights can be had.
- `simclr`: ganflow's own label-free encoder (the "encoder" in models/evaluator.pt, ganflow.simclr),
  registered as "ganflow-simclr": the space of unlabelled data, and an option beside the classifier.
  It has no logits, so no IS in it.

Each image set goes through the feature extractor once (torch-fidelity's `create_feature_extractor`
and `get_featuresdict_from_dataset`); every score is then computed from those features by
torch-fidelity's own metric functions (`fid_statistics_to_metric`, `kid_features_to_metric`, ...),
except the k-NN scores: precision/recall (torch-fidelity's formulas), density/coverage (prdc's) and
nearest training images come from one streamed pass over each distance matrix (`neighbours`), which
torch-fidelity's `prc_features_to_metric` recomputes per score and scans with a slow `kthvalue` (tests
check that the numbers are its own, exactly). So the real set's features are computed once and
reused for every reference, resample and neighbour search.

torch-fidelity's cache is never used (`cache=False` everywhere): it unpickles files found under a
predictable name in $TORCH_HOME with weights_only=False. ganflow's own cache of real features is
npz (loaded with allow_pickle=False), keyed by the content of everything that changes the features.

Every result key names its space (fid_classifier, fid_inception, ...); these constants are the
only spelling, shared by metrics/eval.json, MLflow and the tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from ganflow import GanflowError, evaluator, simclr
from ganflow.data import ImageArray
from ganflow.io import write_bytes

if TYPE_CHECKING:
    from ganflow.config import EvaluateConfig

log = logging.getLogger("ganflow.metrics")

Space = Literal["classifier", "inception", "simclr"]
CLASSIFIER_EXTRACTOR = "ganflow-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"
SIMCLR_EXTRACTOR = "ganflow-simclr"
EXTRACTORS = {"classifier": CLASSIFIER_EXTRACTOR, "inception": INCEPTION_EXTRACTOR, "simclr": SIMCLR_EXTRACTOR}
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# how images reach each extractor: part of the protocol
RESIZE = {
    "classifier": "none: samples must have the prepared data's C×H×W",
    "inception": "grayscale repeated to RGB, then torch-fidelity's TF-compatible bilinear resize to 299×299",
    "simclr": "none: samples must have the prepared data's C×H×W",
}

# every torch-fidelity call gets these: never its cache, no worker processes, no prints
TF_KWARGS = {"cache": False, "save_cpu_ram": True, "verbose": False}
TF_DEFAULTS = torch_fidelity.defaults.DEFAULTS
PRC_K = TF_DEFAULTS["prc_neighborhood"]  # 3: precision/recall (Kynkäänniemi et al. 2019)
DC_K = 5  # density/coverage (Naeem et al. 2020)
CONFIDENCE = 0.95  # of the FID interval
MEMORIZATION_QUANTILE = 0.05  # "too close": nearer a training image than 95 % of held-out images are
MIN_SAMPLES = DC_K + 1  # the k-NN metrics need k + 1 points
UNBIASED_FROM = 2048  # below this many samples FID's covariance estimate is biased: warn
CHUNK = 512  # rows of a distance matrix held at once (512 × 50,000 floats: 100 MB)


def key(stem: str, space: Space) -> str:
    return f"{stem}_{space}"


# stems: each is suffixed with its space (fid -> fid_classifier)
FID, FID_LOW, FID_HIGH = "fid", "fid_low", "fid_high"
IS, IS_STD, KID, KID_STD = "is", "is_std", "kid", "kid_std"
PRECISION, RECALL, DENSITY, COVERAGE = "precision", "recall", "density", "coverage"
FID_TRAIN, FID_HELDOUT, FID_RATIO = "fid_train", "fid_heldout", "fid_train_heldout_ratio"
MEMORIZED, NN_RATIO = "memorized_share", "nn_distance_ratio"
FID_INTRA = "fid_intra"

KEY_N_SAMPLES = "n_samples"
KEY_N_REAL = "n_real"
KEY_N_HELDOUT = "n_heldout"
KEY_COVERAGE = "class_coverage"
KEY_CLASS_KL = "class_kl"
KEY_CAS = "cas"
KEY_CAS_REAL = "cas_real"
KEY_PROTOCOL = "protocol"
KEY_PROTOCOL_DETAIL = "protocol_detail"

# torch-fidelity key -> our stem
_TF_KEYS = {
    torch_fidelity.KEY_METRIC_FID: FID,
    torch_fidelity.KEY_METRIC_ISC_MEAN: IS,
    torch_fidelity.KEY_METRIC_ISC_STD: IS_STD,
    torch_fidelity.KEY_METRIC_KID_MEAN: KID,
    torch_fidelity.KEY_METRIC_KID_STD: KID_STD,
    torch_fidelity.KEY_METRIC_PRECISION: PRECISION,
    torch_fidelity.KEY_METRIC_RECALL: RECALL,
}


class ClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over ganflow's classifier: 'features' (penultimate) and 'logits'."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise GanflowError(f"{CLASSIFIER_EXTRACTOR} needs feature_extractor_weights_path (models/evaluator.pt)")
        model, _ = evaluator.load(feature_extractor_weights_path)
        if model is None:
            raise GanflowError(f"{feature_extractor_weights_path}: holds no classifier (the data has no labels)")
        self.model = evaluator.scoring_form(model)
        self.requires_grad_(False)

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"{CLASSIFIER_EXTRACTOR} expects uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}")
        feats, logits = self.model(x)
        out = {"features": feats.float(), "logits": logits.float()}
        return tuple(out[f] for f in self.features_list)


class SimCLRExtractor(ClassifierExtractor):
    """torch-fidelity feature extractor over ganflow's label-free encoder: 'features' (the encoder's
    pooled output, before the projection head) and 'logits' (N×0: there are no classes)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        FeatureExtractorBase.__init__(self, name, features_list)
        if feature_extractor_weights_path is None:
            raise GanflowError(f"{SIMCLR_EXTRACTOR} needs feature_extractor_weights_path (models/evaluator.pt)")
        self.model = evaluator.scoring_form(simclr.load(feature_extractor_weights_path))
        self.requires_grad_(False)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "features", "kid": "features", "prc": "features"}.get(metric, "logits")

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"{SIMCLR_EXTRACTOR} expects uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}")
        feats = self.model(x).float()
        out = {"features": feats, "logits": feats[:, :0]}
        return tuple(out[f] for f in self.features_list)


def register() -> None:
    """Register ganflow's own extractors with torch-fidelity (once per process)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    for name, cls in ((CLASSIFIER_EXTRACTOR, ClassifierExtractor), (SIMCLR_EXTRACTOR, SimCLRExtractor)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, cls)


def inception_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def resolve_inception_weights(cfg: EvaluateConfig) -> Path | None:
    """The Inception weights file to use, or None (inception: auto and none to be had).

    Order: evaluate.inception_weights, torch-fidelity's cache, a download (when online).
    """
    if cfg.inception == "off":
        return None
    if cfg.inception_weights:
        path = Path(cfg.inception_weights)
        if not path.is_file():
            raise GanflowError(f"evaluate.inception_weights {path}: no such file")
        return path
    cached = inception_cache_path()
    if not cached.is_file():
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(cached), progress=False)
        except Exception as err:  # offline: URLError; a proxy page: anything
            cached.unlink(missing_ok=True)
            why = f"no evaluate.inception_weights, nothing at {cached}, and the download failed ({type(err).__name__})"
            if cfg.inception == "on":
                raise GanflowError(f"evaluate.inception is on but no Inception weights can be had: {why}") from None
            log.warning("Inception metrics skipped: %s", why)
            return None
    return cached


def check_weights_file(path: Path) -> None:
    """torch-fidelity loads weights with weights_only=False: refuse pickle payloads before it sees the file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise GanflowError(f"{path}: not a plain weights file ({type(err).__name__}); refused") from None
    if not isinstance(obj, dict):
        raise GanflowError(f"{path}: not a state dict; refused")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def array_sha256(a: np.ndarray) -> str:
    h = hashlib.sha256(repr((a.dtype.str, a.shape)).encode())
    h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


# -- features ----------------------------------------------------------------------------------
@dataclass
class Features:
    """One image set in one feature space: `emb` (the layer of FID/KID/PRC) and `logits` (IS's)."""

    emb: torch.Tensor  # N×D float32
    logits: torch.Tensor  # N×classes float32

    def __len__(self) -> int:
        return len(self.emb)


def _layers(space: Space) -> tuple[str, str]:
    """(embedding layer, logits layer): the extractor's defaults for FID (also KID, PRC) and IS."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    register()
    cls = FEATURE_EXTRACTORS_REGISTRY[EXTRACTORS[space]]
    emb = cls.get_default_feature_layer_for_metric("fid")
    assert emb == cls.get_default_feature_layer_for_metric("kid") == cls.get_default_feature_layer_for_metric("prc")
    return emb, cls.get_default_feature_layer_for_metric("isc")


def extract(images: np.ndarray | Dataset, space: Space, weights: str | Path, cfg: EvaluateConfig,
            device: torch.device) -> Features:
    """Features of uint8 N×C×H×W images (an array, or a Dataset read lazily) in batches of
    evaluate.batch_size: memory holds one batch of images and the N feature rows."""
    rgb = space == "inception"
    if rgb:
        check_weights_file(Path(weights))
    emb, logits = _layers(space)
    cuda = device.type == "cuda"
    try:
        fe = create_feature_extractor(
            EXTRACTORS[space], [emb, logits], cuda=cuda, feature_extractor_weights_path=str(weights),
            feature_extractor_internal_dtype=cfg.feature_extractor_internal_dtype if rgb else None, **TF_KWARGS,
        )
    except (RuntimeError, KeyError, ValueError, TypeError) as err:  # a state dict of another net
        why = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise GanflowError(f"{weights}: not the weights of the {space} feature extractor ({why})") from None
    if rgb and cfg.feature_extractor_internal_dtype == "float64":  # torch-fidelity 0.4.0 maps "float64" to float32
        fe.feature_extractor_internal_dtype = torch.float64  # what its forward casts the input to
        fe.double()
    out = get_featuresdict_from_dataset(ImageArray(images, rgb), fe, cfg.batch_size, cuda, True, False)
    return Features(out[emb].float(), out[logits].float())


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()).parent / "ganflow_cache"


SPOT_CHECK = 16  # cached rows recomputed, at random, before a cache entry is trusted


def real_features(images: np.ndarray, space: Space, weights: str | Path, cfg: EvaluateConfig,
                  device: torch.device) -> Features:
    """`extract` of the real images, cached as npz under a hash of the pixels actually passed in, the
    extractor's file and every setting that changes the numbers (a stale or foreign entry cannot match).

    An entry is trusted only when it is bound to this content: it holds that key itself, one row per
    image in both arrays, and SPOT_CHECK rows picked at random (a fresh pick each time, so a planted
    file cannot know them) agree with the extractor run on those images now. Anything else (damaged,
    planted, the wrong row count) is ignored with a warning and rewritten."""
    parts = {  # v3: the classifier's scoring form (evaluator.scoring_form) computes them
        "format": "ganflow-features-v3", "space": space, "layers": _layers(space), "weights": file_sha256(weights),
        "images": array_sha256(images), "torch_fidelity": torch_fidelity.__version__, "device": device.type,
        "batch_size": cfg.batch_size, "dtype": cfg.feature_extractor_internal_dtype if space == "inception" else None,
    }
    cache_key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    path = cache_dir() / f"{space}-{cache_key[:32]}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            cached = Features(torch.from_numpy(z["emb"]), torch.from_numpy(z["logits"]))
            why = _unbound(cached, str(z["key"]) if "key" in z else "", cache_key, images, space, weights, cfg, device)
        if not why:
            return cached
        log.warning("ignoring the feature cache %s (%s); recomputing it", path, why)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:  # damaged or planted: recompute
        log.warning("ignoring the feature cache %s (%s); recomputing it", path, type(err).__name__)
    f = extract(images, space, weights, cfg, device)
    buf = io.BytesIO()
    np.savez(buf, emb=f.emb.numpy(), logits=f.logits.numpy(), key=np.array(cache_key))
    write_bytes(path, buf.getvalue())
    return f


def _unbound(f: Features, stored_key: str, cache_key: str, images: np.ndarray, space: Space, weights: str | Path,
             cfg: EvaluateConfig, device: torch.device) -> str:
    """Why a cache entry is not the features of these images (empty: it is)."""
    n = len(images)
    if stored_key != cache_key:
        return "not made for these images and extractor"
    if f.emb.dim() != 2 or f.logits.dim() != 2 or len(f.emb) != n or len(f.logits) != n:
        return f"shapes {tuple(f.emb.shape)} / {tuple(f.logits.shape)} for {n} images"
    if f.emb.dtype != torch.float32 or f.logits.dtype != torch.float32:
        return f"{f.emb.dtype} / {f.logits.dtype} rows, expected float32"
    idx = np.sort(np.random.default_rng().choice(n, min(SPOT_CHECK, n), replace=False))
    now = extract(images[idx], space, weights, cfg, device)
    # (a space without logits, the label-free encoder's, has N×0 of them: nothing to compare there)
    ok = all(torch.allclose(a[torch.from_numpy(idx)], b, rtol=1e-3, atol=1e-3 * max(1.0, float(b.abs().max()) if b.numel() else 0.0))
             for a, b in ((f.emb, now.emb), (f.logits, now.logits)))
    return "" if ok else f"its rows differ from the extractor's output on {len(idx)} of these images"


# -- scores from features -------------------------------------------------------------------------
def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """torch-fidelity's FID between two feature matrices."""
    stats = fid_features_to_statistics(a), fid_features_to_statistics(b)
    return float(fid_statistics_to_metric(*stats, verbose=False)[torch_fidelity.KEY_METRIC_FID])


def fid_interval(fake: torch.Tensor, real: torch.Tensor, reps: int, seed: int) -> tuple[float, float]:
    """Basic (reverse-percentile) bootstrap interval of FID, resampling both sets `reps` times.
    FID is biased upward at finite N and a resample more so (duplicates); reflecting the resampled
    FIDs about the point estimate cancels that bias to first order, so for two samples of one
    distribution the interval reaches down to 0.

    The resamples are the same draws as indexing rows (`rng.integers`), held as counts: a resample's
    mean and covariance are the count-weighted ones of the original rows (Efron & Tibshirani 1993,
    §6.2, the resampling vector), so all resamples' covariances are one matrix product (see
    `_resampled_stats`). tr√(Σ₁Σ₂) comes from the eigenvalues of Lᵀ Σ₂ L with Σ₁ = L Lᵀ (Cholesky;
    the same nonzero eigenvalues as Σ₁Σ₂, and symmetric, so batched `eigvalsh`).

    The FIDs run on one thread: on a loaded CPU the thread pool's waiting made batched `eigvalsh` 100x
    slower (0.1 s on one thread, 0.4-38 s on two, 200 matrices of 128², bench/bootstrap_time.py). The
    matrix product, a few large calls, uses torch's threads."""
    point = fid(fake, real)
    rng = np.random.default_rng(seed)
    draws = [(rng.integers(0, len(fake), len(fake)), rng.integers(0, len(real), len(real))) for _ in range(reps)]
    mu_f, cov_f = _resampled_stats(fake, [d[0] for d in draws])
    mu_r, cov_r = _resampled_stats(real, [d[1] for d in draws])
    with simclr.one_cpu_thread("cpu"):
        boot = _fid_batch(mu_f, cov_f, mu_r, cov_r).numpy()
    lo, hi = np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return 2 * point - float(hi), 2 * point - float(lo)


PACKED_BYTES = 2**27  # rows' packed outer products held at a time by _resampled_stats (128 MiB)


def _resampled_stats(x: torch.Tensor, draws: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Means (B×D) and covariances (B×D×D, float64, ddof 1: np.cov's) of the rows x[d] for each index
    array d, as count-weighted statistics of x's rows. Σ_i w_i x_i x_iᵀ for all B count vectors w at
    once: the counts (B×N) times each row's outer product, packed to its D(D+1)/2 upper-triangle
    entries (N×D(D+1)/2, a block of rows at a time): one large matrix product, half the multiplications
    of B separate Xᵀ·diag(w)·X and far faster than them on a CPU (they are memory-bound).

    The rows are centred in float64 first; the product then runs in float32 (twice float64's speed):
    on the stacked benchmark's 26,000 × 384 features the interval moved by 3e-8 relative, far below the
    6 digits eval.json keeps and the bootstrap's own resampling noise."""
    x = x.double()
    centre = x.mean(0)
    x = x - centre
    n, d = x.shape
    counts = torch.from_numpy(np.stack([np.bincount(i, minlength=n) for i in draws])).double()  # B×N
    mu = counts @ x / n
    x, counts = x.float(), counts.float()  # counts are small integers: exact in float32
    iu = torch.triu_indices(d, d)
    packed = torch.zeros(len(counts), iu.shape[1])
    step = max(1, PACKED_BYTES // (4 * iu.shape[1]))
    products = torch.empty(min(n, step), iu.shape[1])
    ends = np.cumsum(np.arange(d, 0, -1))  # triu_indices' order: row i of the triangle holds (i, i) … (i, d-1)
    for s in range(0, n, step):
        rows, out = x[s : s + step], products[: min(step, n - s)]
        for i in range(d):  # one slice product per triangle row: 20x faster than gathering rows[:, iu[0]] * rows[:, iu[1]]
            torch.mul(rows[:, i : i + 1], rows[:, i:], out=out[:, ends[i] - (d - i) : ends[i]])
        packed.addmm_(counts[:, s : s + step], out)
    cov = torch.empty(len(counts), d, d, dtype=torch.float64)
    packed = packed.double()
    cov[:, iu[0], iu[1]] = packed
    cov[:, iu[1], iu[0]] = packed
    cov = (cov - n * mu[:, :, None] * mu[:, None, :]) / (n - 1)
    return mu + centre, cov


def _fid_batch(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """FID of B pairs of Gaussians: ‖μ₁-μ₂‖² + tr Σ₁ + tr Σ₂ - 2 tr√(Σ₁Σ₂), batched. Σ₁ = L Lᵀ by
    Cholesky; where Σ₁ is singular (fewer distinct rows than dimensions, dead features) L = √Σ₁
    from its eigen-decomposition instead. Either way Lᵀ Σ₂ L has Σ₁Σ₂'s eigenvalues."""
    low, info = torch.linalg.cholesky_ex(s1)
    if (bad := info > 0).any():
        lam, v = torch.linalg.eigh(s1[bad])
        low[bad] = (v * lam.clamp_min(0).sqrt()[:, None, :]) @ v.mT
    m = low.mT @ s2 @ low
    tr_covmean = torch.linalg.eigvalsh((m + m.mT) / 2).clamp_min(0).sqrt().sum(1)
    diff = mu1 - mu2
    return (diff * diff).sum(1) + s1.diagonal(dim1=1, dim2=2).sum(1) + s2.diagonal(dim1=1, dim2=2).sum(1) - 2 * tr_covmean


def _distances(a: torch.Tensor, b: torch.Tensor) -> Iterator[torch.Tensor]:
    """The distances from a's rows to b's, CHUNK rows of a at a time. torch.cdist gives each entry the
    same bits however a and b are split into blocks (torch-fidelity's calc_cdist_part splits both), but
    not always those of its transpose: cdist(b, a)ᵀ may differ in the last bit."""
    return (torch.cdist(rows, b) for rows in a.split(CHUNK))


def _kth_nearest(x: torch.Tensor, ks: list[int]) -> list[torch.Tensor]:
    """For each k of ks, the distance of each row of x to its k-th nearest other row (the row itself
    is the 1st): one pass. topk, not kthvalue: the same values, 10x faster on a CPU."""
    near = torch.cat([d.topk(max(ks) + 1, dim=1, largest=False).values for d in _distances(x, x)])
    return [near[:, k] for k in ks]


@dataclass
class Neighbours:
    """The k-NN scores of samples against real points, and what the report shows of them."""

    scores: dict[str, float]  # precision, recall (k = PRC_K), density, coverage (k = DC_K)
    covered: torch.Tensor  # per real point: a sample inside its DC_K ball
    nn_dist: torch.Tensor | None  # per sample: distance to its nearest training image (None: no `train` given)
    nn_index: torch.Tensor | None  # ... and that image's position in `train`


def neighbours(fake: torch.Tensor, real: torch.Tensor, space: Space, train: np.ndarray | None = None) -> Neighbours:
    """Precision and recall (Kynkäänniemi et al. 2019; torch-fidelity's formulas, k = PRC_K), density
    and coverage (Naeem et al. 2020; the authors' prdc formulas, k = DC_K) and, with `train` (indices of
    real), each sample's nearest training image: one streamed pass over each of the four distance
    matrices (fake×fake, real×real, real×fake for recall as torch-fidelity orients it, fake×real for
    the rest), where computing each score on its own made six, three of them fake×real."""
    if len(fake) < MIN_SAMPLES or len(real) < MIN_SAMPLES:
        raise GanflowError(f"{len(fake)} samples against {len(real)} real images: the k-NN metrics need at least {MIN_SAMPLES} of each")
    (r_fake,) = _kth_nearest(fake, [PRC_K])
    r_prc, r_dc = _kth_nearest(real, [PRC_K, DC_K])
    recalled = torch.cat([(d <= r_fake).any(1) for d in _distances(real, fake)])  # inside some sample's ball
    precise, inside, nearest_fake, best = [], 0, torch.full((len(real),), float("inf")), []
    cols = None if train is None else torch.as_tensor(train)
    for d in _distances(fake, real):
        precise.append((d <= r_prc).any(1))  # inside some real point's ball
        inside += int((d < r_dc).sum())
        nearest_fake = torch.minimum(nearest_fake, d.min(0).values)
        if cols is not None:
            best.append(d[:, cols].min(1))
    covered = nearest_fake < r_dc
    scores = {key(PRECISION, space): torch.cat(precise).float().mean().item(), key(RECALL, space): recalled.float().mean().item(),
              key(DENSITY, space): inside / (DC_K * len(fake)), key(COVERAGE, space): float(covered.float().mean())}
    nn = (torch.cat([b.values for b in best]), torch.cat([b.indices for b in best])) if best else (None, None)
    return Neighbours(scores, covered, *nn)


def nearest(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of a: the distance to its nearest row of b, and that row's index."""
    best = [d.min(1) for d in _distances(a, b)]
    return torch.cat([m.values for m in best]), torch.cat([m.indices for m in best])


def scores(fake: Features, real: Features, space: Space, cfg: EvaluateConfig) -> dict[str, float]:
    """FID, IS and KID of fake against real, by torch-fidelity (the k-NN scores: `neighbours`)."""
    kid_n = min(cfg.kid_subset_size, len(fake), len(real))
    out = {torch_fidelity.KEY_METRIC_FID: fid(fake.emb, real.emb)}
    if fake.logits.shape[1]:  # a space without classes (simclr) has no IS
        out |= isc_features_to_metric(fake.logits, TF_DEFAULTS["isc_splits"], TF_DEFAULTS["samples_shuffle"], TF_DEFAULTS["rng_seed"])
    out |= kid_features_to_metric(fake.emb, real.emb, kid_subset_size=kid_n, **TF_KWARGS)
    return {key(_TF_KEYS[k], space): float(v) for k, v in out.items() if k in _TF_KEYS}


def train_heldout(fake: torch.Tensor, train: torch.Tensor, heldout: torch.Tensor, seed: int,
                  space: Space = "classifier") -> dict[str, float]:
    """FID against the training images and against the held-out ones at equal N (the held-out count):
    the training side averages disjoint subsets of that size. A ratio well below 1 means the samples
    sit closer to the images the generator saw than to unseen ones of the same distribution."""
    n = min(len(train), len(heldout))
    rng = np.random.default_rng(seed)
    heldout = heldout[torch.from_numpy(rng.permutation(len(heldout))[:n])]
    parts = torch.from_numpy(rng.permutation(len(train))).split(n)
    fid_train = float(np.mean([fid(fake, train[p]) for p in parts if len(p) == n]))
    fid_heldout = fid(fake, heldout)
    return {key(FID_TRAIN, space): fid_train, key(FID_HELDOUT, space): fid_heldout,
            key(FID_RATIO, space): fid_train / max(fid_heldout, 1e-12)}


def memorization(d_fake: torch.Tensor, train: torch.Tensor, heldout: torch.Tensor, space: Space = "classifier") -> dict[str, float]:
    """Each sample's distance to its nearest training image (`d_fake`: `neighbours(...).nn_dist`), against
    the same distance for held-out real images (`train`, `heldout`: their features).
    memorized_share: samples nearer their nearest training image than MEMORIZATION_QUANTILE of the
    held-out images are to theirs (fresh real data scores MEMORIZATION_QUANTILE; a copier 1).
    nn_distance_ratio: median nearest distance, samples over held-out (copier 0, like-real 1)."""
    d_real, _ = nearest(heldout, train)
    threshold = torch.quantile(d_real, MEMORIZATION_QUANTILE)
    return {key(MEMORIZED, space): float((d_fake < threshold).float().mean()),
            key(NN_RATIO, space): float(d_fake.median() / d_real.median().clamp_min(1e-12))}


def intra_class_fid(fake: Features, real: torch.Tensor, labels: np.ndarray, n_classes: int) -> list[float | None]:
    """FID of each class c: real images of c against the n_c samples the classifier finds most like c
    (highest p(c | x)), n_c = N × the real share of c. Every class is scored at its own fixed N, so a
    class the generator never draws still gets its (high) FID instead of none."""
    p = fake.logits.softmax(1)
    out: list[float | None] = []
    for c in range(n_classes):
        real_c = real[torch.from_numpy(labels == c)]
        n_c = min(len(fake), max(2, round(len(fake) * len(real_c) / len(real))))
        out.append(fid(fake.emb[p[:, c].topk(n_c).indices], real_c) if len(real_c) >= 2 else None)
    return out


class TrainingFID:
    """FID in the evaluator file's primary space (`primary_space`) of a generator's first n samples, for
    model selection during training: the same features and FID as the evaluate stage's fid_<space>,
    so the two agree exactly."""

    def __init__(self, real: np.ndarray, evaluator_path: str | Path, n: int, seed: int,
                 cfg: EvaluateConfig, device: torch.device):
        self.space = primary_space(evaluator_path)
        self.real, self.weights = real, evaluator_path
        self.n, self.seed, self.cfg, self.device = n, seed, cfg, device
        self._real_emb: torch.Tensor | None = None

    def __call__(self, G: torch.nn.Module) -> float:
        from ganflow.sampling import generate

        if self._real_emb is None:
            self._real_emb = real_features(self.real, self.space, self.weights, self.cfg, self.device).emb
        x = generate(G, self.seed, 0, self.n, self.device).numpy()
        return fid(extract(x, self.space, self.weights, self.cfg, self.device).emb, self._real_emb)


def primary_space(evaluator_path: str | Path) -> Space:
    """The space that selects models and names the training FID: the classifier when the evaluator
    file holds one, else the label-free encoder. Reads the file without building a net, so it never
    draws from torch's RNG (the train stage calls it after a resume restored that RNG)."""
    return evaluator.spaces(evaluator.info(evaluator_path))[0]


def primary_fid_key(results: dict) -> str:
    """The FID that selects and promotes models: the classifier's when it scored `results`, else the
    label-free encoder's."""
    return next((k for k in (key(FID, "classifier"), key(FID, "simclr")) if k in results), key(FID, "classifier"))


def fidelity(samples: np.ndarray | Dataset, real: np.ndarray, space: Space, weights: str | Path,
             cfg: EvaluateConfig, device: torch.device) -> dict[str, float]:
    """`neighbours` and `scores` of two image sets (the real set's features cached): for benches."""
    fake = extract(samples, space, weights, cfg, device)
    ref = real_features(real, space, weights, cfg, device)
    near = neighbours(fake.emb, ref.emb, space)
    return scores(fake, ref, space, cfg) | near.scores


def class_histogram(pred: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(pred, minlength=n_classes) / max(1, len(pred))


def class_stats(pred_fake: np.ndarray, real_hist: np.ndarray, min_share: float = 0.02) -> dict[str, float]:
    """Mode-collapse detectors: classes holding ≥ min_share of the samples, and KL(fake ‖ real) of the
    predicted class histograms (0 when the generator draws classes as often as the data has them)."""
    fake = class_histogram(pred_fake, len(real_hist))
    eps = 1e-8
    kl = float(np.sum(fake * (np.log(fake + eps) - np.log(real_hist + eps))))
    return {KEY_COVERAGE: int((fake >= min_share).sum()), KEY_CLASS_KL: kl}
