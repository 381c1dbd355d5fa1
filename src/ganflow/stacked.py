"""StackedMNIST, the mode-coverage benchmark (VEEGAN 2017, PacGAN 2018, R3GAN 2024): each image
stacks three MNIST digits as its R, G and B channels, so the data has 1,000 modes (the triples).

- the prepare source (`data._stacked_mnist`): every digit comes from the training split of mnist-5k
  that the evaluator makes (`data.split` with evaluator.holdout and the seed), so the held-out digits
  stay unseen by the generator and by the digit classifier.
- `fit_evaluator`: the digit classifier (1 channel, 10 classes) trained on that same split; wrapped in
  `evaluator.StackedClassifier`, it classifies each channel and gives the feature space (the three
  channels' digit features concatenated) and the triple's logits.
- `benchmark`: modes hit (triples with at least one sample) and KL(sample mode histogram ‖ uniform),
  on all the samples, beside the real-data floor: random stacks of held-out digits at the same N.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ganflow import GanflowError, data, evaluator
from ganflow.config import STACKED_SOURCE

if TYPE_CHECKING:
    from ganflow.config import EvaluatorConfig

N_MODES = data.STACK_MODES
PROTOCOL_N = 26_000  # samples the published rows are scored on
FLOOR_STREAM = 2  # the floor's stacks: an RNG stream of the seed apart from the data's (data.STACK_STREAM)
KEY_MODES, KEY_KL = "modes_stacked", "kl_stacked"
KEY_MODES_REAL, KEY_KL_REAL = "modes_stacked_real", "kl_stacked_real"  # the floor: held-out digits


def fit_evaluator(meta: dict, cfg: EvaluatorConfig, seed: int) -> tuple[evaluator.StackedClassifier, float]:
    """The digit classifier, trained as `evaluator.fit` trains mnist-5k's (same recipe, same split),
    wrapped to classify each channel; and its held-out digit accuracy. Refuses a prepared set whose
    digits were drawn with another split than this recipe's."""
    drawn = meta.get("digits", {})
    if (drawn.get("holdout"), drawn.get("seed")) != (cfg.holdout, seed):
        raise GanflowError(f"data/prepared: {STACKED_SOURCE} drew its digits with evaluator.holdout {drawn.get('holdout')} and "
                           f"seed {drawn.get('seed')}, but these params say {cfg.holdout} and {seed}; rerun prepare")
    d = data.mnist_digits(meta["shape"][-1])
    model, acc = evaluator.fit(d.images, d.labels, len(d.classes), cfg, seed)
    evaluator.refuse_failed_fit(acc, d.labels, cfg.holdout, seed)
    return evaluator.StackedClassifier(model), acc


def mode_stats(modes: np.ndarray) -> tuple[int, float]:
    """(modes hit: those with at least one sample, KL(histogram ‖ uniform) in nats) of predicted modes."""
    p = np.bincount(modes, minlength=N_MODES) / len(modes)
    hit = p > 0
    return int(hit.sum()), float(np.sum(p[hit] * np.log(p[hit] * N_MODES)))


def real_floor(model: evaluator.StackedClassifier, info: dict, n: int) -> tuple[int, float]:
    """mode_stats of n random stacks of held-out digits as the classifier labels them: what real data
    scores at this N (finite N and the classifier's errors both count)."""
    d = data.mnist_digits(info["resolution"])
    heldout, _ = data.split(len(d.images), info["recipe"]["holdout"], info["seed"])
    index = data.draw_stacks(d.labels, heldout, n, np.random.default_rng([info["seed"], FLOOR_STREAM]))
    # a stack's channels are classified one by one: classify each held-out digit once, then stack the labels
    pred = np.zeros(len(d.images), np.int64)
    pred[heldout] = evaluator.predict(model.digit, d.images[heldout])
    return mode_stats(pred[index] @ data.STACK_PLACES)


def benchmark(pred_modes: np.ndarray, model: evaluator.StackedClassifier, info: dict) -> tuple[dict[str, float], dict[str, Any]]:
    """The benchmark's scores of the samples' predicted modes, with the floor at the same N; and the
    protocol fields that define them."""
    n = len(pred_modes)
    modes, kl = mode_stats(pred_modes)
    modes_real, kl_real = real_floor(model, info, n)
    protocol = {
        "stacked": f"modes: triples with >= 1 of the {n} samples (published rows: {PROTOCOL_N}); KL(samples || uniform "
                   f"over {N_MODES}), nats; each channel classified by the digit classifier",
        "classifier_space": "stacked digits: the mnist-5k digit classifier on each channel, features of R, G, B "
                            "concatenated; logits = log p(triple)",
        "stacked_floor": f"{n} random stacks of the {info['recipe']['holdout']} held-out mnist-5k digits "
                         f"(seed {info['seed']}, stream {FLOOR_STREAM})",
    }
    return {KEY_MODES: modes, KEY_KL: kl, KEY_MODES_REAL: modes_real, KEY_KL_REAL: kl_real}, protocol
