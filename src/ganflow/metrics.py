"""Scores through torch-fidelity, in two feature spaces:

- `classifier`: ganflow's own classifier (models/evaluator.pt), registered with torch-fidelity as
  the feature extractor "ganflow-classifier". Always available, offline too.
- `inception`: torch-fidelity's Inception-v3, when its weights can be had.

Every result key names its space (fid_classifier, fid_inception, ...); these constants are the
only spelling, shared by metrics/eval.json, MLflow and the tests.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from ganflow import GanflowError, evaluator
from ganflow.data import ImageArray

if TYPE_CHECKING:
    from ganflow.config import EvaluateConfig

log = logging.getLogger("ganflow.metrics")

Space = Literal["classifier", "inception"]
CLASSIFIER_EXTRACTOR = "ganflow-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"

# torch-fidelity key -> our key stem (the space is appended: fid -> fid_classifier)
_TF_KEYS = {
    torch_fidelity.KEY_METRIC_FID: "fid",
    torch_fidelity.KEY_METRIC_ISC_MEAN: "is",
    torch_fidelity.KEY_METRIC_ISC_STD: "is_std",
    torch_fidelity.KEY_METRIC_KID_MEAN: "kid",
    torch_fidelity.KEY_METRIC_KID_STD: "kid_std",
    torch_fidelity.KEY_METRIC_PRECISION: "precision",
    torch_fidelity.KEY_METRIC_RECALL: "recall",
}


def key(stem: str, space: Space) -> str:
    return f"{stem}_{space}"


KEY_N_SAMPLES = "n_samples"
KEY_N_REAL = "n_real"
KEY_COVERAGE = "class_coverage"
KEY_CLASS_KL = "class_kl"


class ClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over ganflow's classifier: 'features' (penultimate) and 'logits'."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise GanflowError(f"{CLASSIFIER_EXTRACTOR} needs feature_extractor_weights_path (models/evaluator.pt)")
        self.model, _ = evaluator.load(feature_extractor_weights_path)
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


def register() -> None:
    """Register the classifier with torch-fidelity (once per process)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierExtractor)


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


def fidelity(
    samples: np.ndarray | Dataset,
    real: np.ndarray | Dataset,
    space: Space,
    weights: str | Path,
    cfg: EvaluateConfig,
    device: torch.device,
    which: tuple[str, ...] = ("fid", "isc", "kid", "prc"),
    real_sha256: str | None = None,
) -> dict[str, float]:
    """FID, IS, KID, precision and recall of `samples` against `real`, keys suffixed with the space.
    Both are streamed through the feature extractor in batches of evaluate.batch_size.

    With `real_sha256` (the prepared data's content hash) the statistics of the real images are
    cached by torch-fidelity under a name made of that hash and the feature extractor's file hash,
    so a cache entry can never describe other data or another extractor.
    """
    register()
    n = min(len(samples), len(real))
    rgb = space == "inception"
    if rgb:
        check_weights_file(Path(weights))
    cache = {"cache": False}  # torch-fidelity keys its cache by name alone: only content-hash names are safe
    if real_sha256:
        cache = {"cache": True, "input2_cache_name": f"ganflow-{space}-{real_sha256[:16]}-{file_sha256(weights)[:16]}"}
    out = torch_fidelity.calculate_metrics(
        input1=ImageArray(samples, rgb),
        input2=ImageArray(real, rgb),
        **{m: m in which for m in ("fid", "isc", "kid", "prc")},
        feature_extractor=CLASSIFIER_EXTRACTOR if space == "classifier" else INCEPTION_EXTRACTOR,
        feature_extractor_weights_path=str(weights),
        kid_subset_size=min(cfg.kid_subset_size, n),
        batch_size=cfg.batch_size,
        feature_extractor_internal_dtype=cfg.feature_extractor_internal_dtype if rgb else None,
        cuda=device.type == "cuda",
        save_cpu_ram=True,
        verbose=False,
        **cache,
    )
    return {key(_TF_KEYS[k], space): float(v) for k, v in out.items() if k in _TF_KEYS}


class TrainingFID:
    """Classifier-space FID of a generator's first n samples, for model selection during training."""

    def __init__(self, real: np.ndarray, real_sha256: str, evaluator_path: str | Path, n: int, seed: int,
                 cfg: EvaluateConfig, device: torch.device):
        self.real, self.real_sha256, self.weights = real, real_sha256, evaluator_path
        self.n, self.seed, self.cfg, self.device = n, seed, cfg, device

    def __call__(self, G: torch.nn.Module) -> float:
        from ganflow.sampling import generate

        x = generate(G, self.seed, 0, self.n, self.device).numpy()
        out = fidelity(x, self.real, "classifier", self.weights, self.cfg, self.device, ("fid",), self.real_sha256)
        return out[key("fid", "classifier")]


def class_histogram(pred: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(pred, minlength=n_classes) / max(1, len(pred))


def class_stats(pred_fake: np.ndarray, real_hist: np.ndarray, min_share: float = 0.02) -> dict[str, float]:
    """Mode-collapse detectors: classes holding ≥ min_share of the samples, and KL(fake ‖ real) of the
    predicted class histograms (0 when the generator draws classes as often as the data has them)."""
    fake = class_histogram(pred_fake, len(real_hist))
    eps = 1e-8
    kl = float(np.sum(fake * (np.log(fake + eps) - np.log(real_hist + eps))))
    return {KEY_COVERAGE: int((fake >= min_share).sum()), KEY_CLASS_KL: kl}
