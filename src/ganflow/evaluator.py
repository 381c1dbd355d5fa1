"""A small classifier trained on the prepared data: its penultimate layer is the feature space
ganflow owns (FID/KID/precision/recall there), its logits feed IS and the class histogram."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ganflow import GanflowError, checkpoint, progress
from ganflow.data import ImageArray, holdout_size, split, split_with  # noqa: F401 - split, holdout_size: re-exported
from ganflow.pixels import to_float

if TYPE_CHECKING:
    from ganflow.config import EvaluatorConfig

log = logging.getLogger("ganflow.evaluator")
FORMAT = "ganflow-evaluator-v1"


class Classifier(nn.Module):
    def __init__(self, channels: int, n_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.arch = dict(channels=channels, n_classes=n_classes, width=width, feature_dim=feature_dim)

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        w = width
        self.body = nn.Sequential(
            *block(channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 N×C×H×W -> (features N×feature_dim, logits N×n_classes)."""
        feats = self.body(to_float(x_uint8))
        return feats, self.head(feats)


class StackedClassifier(nn.Module):
    """A digit classifier applied to each channel of a stacked image (StackedMNIST): features = the
    channels' digit features concatenated (C·feature_dim); logits over the n_classes^C digit tuples,
    log p(tuple) = the sum of the channels' log-probabilities (tuple (a, b, c) = 100a + 10b + c), so
    the argmax is the tuple of the channels' argmaxes."""

    def __init__(self, digit: Classifier):
        super().__init__()
        self.digit = digit
        self.arch = digit.arch

    def forward(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x_uint8.shape
        feats, logits = self.digit(x_uint8.reshape(n * c, 1, h, w))
        logp = logits.float().log_softmax(1).view(n, c, -1)
        joint = logp[:, 0]
        for i in range(1, c):  # outer sum: the last channel varies fastest
            joint = (joint[:, :, None] + logp[:, i, None, :]).flatten(1)
        return feats.reshape(n, -1), joint


def _shift(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to `pad` pixels: cheap augmentation that lifts held-out accuracy."""
    n, _, h, w = x.shape
    xp = F.pad(x, [pad] * 4)
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return xp[:, :, dy : dy + h, dx : dx + w]


def train(images: np.ndarray, labels: np.ndarray, n_classes: int, cfg: EvaluatorConfig, gen: torch.Generator,
          order: torch.Tensor | None = None, desc: str = "evaluator", device: torch.device | str = "cpu") -> Classifier:
    """The classifier trained with `cfg`'s recipe on images[order] (all images when None), in eval mode,
    on `device` (the images are held there). Its weights are drawn from torch's global (CPU) RNG;
    batches and shifts from `gen`."""
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(labels).to(device)
    tr = torch.arange(len(images)) if order is None else order
    model = Classifier(images.shape[1], n_classes, cfg.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps = cfg.epochs * -(-len(tr) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    with progress.bar(steps, desc, "step") as bar:
        for _ in range(cfg.epochs):
            batch_order = tr[torch.randperm(len(tr), generator=gen)]
            for i in range(0, len(batch_order), cfg.batch_size):
                idx = batch_order[i : i + cfg.batch_size]
                _, logits = model(_shift(x[idx], gen))
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def fit(images: np.ndarray, labels: np.ndarray, n_classes: int, cfg: EvaluatorConfig, seed: int) -> tuple[Classifier, float]:
    """Train on a split seeded by `seed`; return (model in eval mode, held-out accuracy). The weights
    are drawn from torch's global RNG: seed it first (accel.seed_everything) for a repeatable model."""
    if labels is None:
        raise GanflowError("the prepared data has no labels: the classifier feature space needs class sub-folders")
    gen = torch.Generator().manual_seed(seed)
    val, tr = split_with(len(images), cfg.holdout, gen)
    model = train(images, labels, n_classes, cfg, gen, tr)
    return model, accuracy(model, images[val.numpy()], labels[val.numpy()])


def refuse_failed_fit(acc: float, labels: np.ndarray, holdout: float, seed: int) -> None:
    """One line when `fit`'s held-out accuracy is no better than naming the commonest held-out class (a
    diverged fit predicts one class for all): its feature space would score anything as perfect."""
    val, _ = split(len(labels), holdout, seed)
    chance = np.bincount(labels[val]).max() / len(val)
    if acc <= chance:
        raise GanflowError(f"evaluator: held-out accuracy {acc:.3f} is no better than naming the commonest class ({chance:.3f}), "
                           f"so the classifier's fit failed; lower evaluator.lr or raise evaluator.epochs")


def accuracy(model: Classifier, images, labels: np.ndarray) -> float:
    return float((predict(model, images) == labels).mean())


def scoring_form(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode scoring net (a Classifier, a StackedClassifier or the label-free encoder:
    convs and batch norms in `body`) as scoring runs it: each batch norm folded into the conv before it,
    ReLUs in place, and every layer in channels-last layout (oneDNN's fast path). 2.6x as fast on a CPU
    (docs/performance.md); outputs equal the model's up to float32 rounding (about 4e-7 relative). The
    weights saved stay the model's own."""
    if isinstance(model, StackedClassifier):
        return StackedClassifier(scoring_form(model.digit))
    if model.training:
        raise ValueError("scoring_form needs a net in eval mode (batch norm folds its running statistics)")
    fast = copy.deepcopy(model)
    layers: list[nn.Module] = []
    for layer in fast.body:
        if isinstance(layer, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d):
            layers[-1] = fuse_conv_bn_eval(layers[-1], layer)
        elif isinstance(layer, nn.ReLU):
            layers.append(nn.ReLU(inplace=True))  # no new tensor: scoring keeps no activation
        else:
            layers.append(layer)
    fast.body = nn.Sequential(*layers)
    return fast.to(memory_format=torch.channels_last)


@torch.no_grad()
def predict(model: Classifier, images, batch_size: int = 500) -> np.ndarray:
    """Predicted classes of a uint8 N×C×H×W array or a Dataset of uint8 C×H×W tensors, in batches
    (by the model's `scoring_form`)."""
    from torch.utils.data import DataLoader

    model = scoring_form(model)
    device = next(model.parameters()).device
    loader = DataLoader(ImageArray(images), batch_size=batch_size)
    return torch.cat([model(x.to(device))[1].argmax(1).cpu() for x in loader]).numpy()


def save(model: Classifier | None, path: str | Path, accuracy: float | None, data_sha256: str, resolution: int,
         cfg: EvaluatorConfig, seed: int, encoder: dict | None = None) -> None:
    """The weights, plus what evaluation needs to know of the fit: the data it saw (content hash),
    the recipe and the seed of its held-out split. `model` None: no classifier (unlabelled data); a
    StackedClassifier is saved as its digit classifier, flagged; `encoder`: the label-free encoder's
    state (simclr.state), kept beside it."""
    obj = {"format": FORMAT, "resolution": resolution, "accuracy": accuracy, "data_sha256": data_sha256,
           "recipe": recipe(cfg, model is not None, encoder is not None), "seed": seed}
    if model is not None:
        stacked = isinstance(model, StackedClassifier)
        obj |= {"arch": model.arch, "state_dict": (model.digit if stacked else model).state_dict()}
        obj |= {"stacked": True} if stacked else {}
    if encoder is not None:
        obj["encoder"] = encoder
    checkpoint.save(obj, path)


CLASSIFIER_KEYS = ("epochs", "batch_size", "lr", "width")  # evaluator.* of the classifier's fit (simclr_*: the encoder's)


def recipe(cfg: EvaluatorConfig, classifier: bool, encoder: bool) -> dict:
    """The evaluator.* values the file was made with: the split's holdout and each fitted space's own. A knob
    of a space not fitted leaves the file byte-equal, so what depends on it (train, evaluate, the protocol
    hash that decides which scores compare) does not change with it."""
    return {k: v for k, v in cfg.model_dump().items()
            if k == "holdout" or (classifier and k in CLASSIFIER_KEYS) or (encoder and k.startswith("simclr_"))}


def spaces(info: dict) -> list[str]:
    """The feature spaces an evaluator file holds, the primary one (model selection, nearest pairs) first."""
    return (["classifier"] if "arch" in info else []) + (["simclr"] if "encoder" in info else [])


def info(path: str | Path) -> dict:
    """The evaluator file's contents, no net built (building one draws its initial weights from torch's
    global RNG: a resumed run must not)."""
    return checkpoint.load(path, FORMAT, map_location="cpu")


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier | None, dict]:
    """The classifier (None when the file holds only a label-free encoder) and the file's info."""
    obj = checkpoint.load(path, FORMAT, map_location=device)
    if "arch" not in obj:
        return None, obj
    model = Classifier(**obj["arch"])
    model.load_state_dict(obj["state_dict"])
    if obj.get("stacked"):
        model = StackedClassifier(model)
    return model.to(device).eval(), obj


def reference_split(info: dict, path: str | Path, data_sha256: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, training) indices of the prepared data as the evaluator saved at `path` (its `info`)
    split it. Refuses an evaluator fitted on other data, or saved before splits were recorded."""
    if "recipe" not in info:
        raise GanflowError(f"{path}: made by an older ganflow (no recorded split); rerun the fit_evaluator stage")
    if info["data_sha256"] != data_sha256:
        raise GanflowError(f"{path}: fitted on other data than the prepared set; rerun the fit_evaluator stage")
    return split(n, info["recipe"]["holdout"], info["seed"])
