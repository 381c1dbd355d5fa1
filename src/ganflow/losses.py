"""GAN losses, registered by name. Each computes its own D calls so it can add penalties, and owns
the weight of every regulariser term it applies (LeCam, WGAN-GP's gradient penalty, lazy R1): the
training step (ganflow.gan_step) keeps only the cadence of the lazy ones.

`D` here is the discriminator as the loop sees it (augmentation included).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ganflow.registry import Registry

Disc = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class LeCam:
    """LeCam regulariser (Tseng et al. 2021): D's outputs on real images are pulled towards the running
    mean of its outputs on fakes, and the other way round, which keeps D from overfitting small data.
    The running means live on the device and are updated in place (a CUDA graph replays them)."""

    decay = 0.99

    def __init__(self, weight: float, device: torch.device | str = "cpu"):
        self.weight = weight
        self.ema = torch.zeros(2, device=device)  # running means of D(real), D(fake)

    def __call__(self, r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        means = torch.stack([r.detach().float().mean(), f.detach().float().mean()])
        self.ema.lerp_(means, 1 - self.decay)
        return self.weight * (F.relu(r.float() - self.ema[1]).square().mean() + F.relu(self.ema[0] - f.float()).square().mean())


class ZeroCentred:
    """A zero-centred gradient penalty γ/2·E‖∇ₓD(x)‖² (Mescheder et al. 2018): R1 on real images x, R2
    on fakes x = G(z) (R3GAN, Huang et al. 2024, uses both). A lazy term: it runs in its own D step every
    few steps (gan_step's phase table), which passes that interval as `gain` so that it weighs as much
    as a penalty in every step (StyleGAN2). γ is `gamma0`, or with `decay_steps` its cosine decay to
    γ₀/10 over them (set by `schedule(i)` before step i: a pure function of the step, so resuming is exact)."""

    def __init__(self, name: str, on: str, gamma0: float, decay_steps: int = 0):
        self.name, self.on = name, on  # on: the batch it is computed on, "real" or "fake"
        self.gamma0, self.decay_steps, self.weight = gamma0, decay_steps, gamma0

    def schedule(self, i: int) -> None:
        if self.decay_steps:
            self.weight = gamma_schedule(i, self.decay_steps, self.gamma0)

    def __call__(self, D: Disc, x: torch.Tensor, y=None, gain: float = 1.0) -> torch.Tensor:
        return gradient_penalty(D, x, y) * (self.weight * gain)


class GradientPenalty:
    """WGAN-GP's penalty (Gulrajani et al. 2017): `weight`·E[(‖∇D(x̂)‖ - 1)²] on interpolates x̂ of real
    and fake images (which share the labels y)."""

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, D: Disc, real: torch.Tensor, fake: torch.Tensor, y=None) -> torch.Tensor:
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(D(mix, y).sum(), mix, create_graph=True)
        return self.weight * (grad.flatten(1).norm(dim=1) - 1).square().mean()


class Loss:
    """A loss may keep state (LeCam's running means, say): it goes into the checkpoint through
    state_dict/load_state_dict, so resuming stays exact. `lazy_d_terms`: the regulariser terms that
    run in D's lazy phase (each owns its weight; gan_step's phase table owns their cadence)."""

    n_critic = 1  # D updates per G update

    def __init__(self, lecam: float = 0.0, device: torch.device | str = "cpu", r1: float = 0.0, r2: float = 0.0,
                 gamma_schedule: str = "constant", steps: int = 1):
        self.lecam = LeCam(lecam, device) if lecam > 0 else None
        decay = steps if gamma_schedule == "cosine" else 0
        self.lazy_d_terms = [ZeroCentred(name, on, gamma, decay)
                             for name, on, gamma in (("r1", "real", r1), ("r2", "fake", r2)) if gamma > 0]

    def schedule(self, i: int) -> None:
        """Set the weights that depend on the step about to run (0-based)."""
        for term in self.lazy_d_terms:
            term.schedule(i)

    def state_dict(self) -> dict:
        return {"lecam_ema": self.lecam.ema.clone()} if self.lecam else {}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.state_dict()):
            raise ValueError(f"{type(self).__name__} keeps {sorted(self.state_dict())}, got {sorted(state)}")
        if self.lecam:
            self.lecam.ema.copy_(state["lecam_ema"])

    def regulariser(self, r: torch.Tensor, f: torch.Tensor) -> torch.Tensor | float:
        """Added to every D loss: LeCam when on."""
        return self.lecam(r, f) if self.lecam else 0.0

    @staticmethod
    def r1_penalty(D: Disc, real: torch.Tensor, y=None) -> torch.Tensor:
        """R1 (Mescheder et al. 2018) without its weight: ½·E‖∇ₓD(x)‖² over real images x."""
        return gradient_penalty(D, real, y)

    @staticmethod
    def r2_penalty(D: Disc, fake: torch.Tensor, y=None) -> torch.Tensor:
        """R2 (Mescheder et al. 2018; R3GAN, Huang et al. 2024) without its weight: ½·E‖∇ₓD(x)‖² over
        fakes x = G(z), detached (it trains D only)."""
        return gradient_penalty(D, fake, y)

    def d_loss(self, D: Disc, real, fake, y=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (loss, logits on real, logits on fake)."""
        r, f = D(real, y), D(fake, y)
        return self.d_from_logits(r, f) + self.regulariser(r, f), r, f

    def d_from_logits(self, r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_per_sample(self, f: torch.Tensor) -> torch.Tensor:
        """G's loss of each fake from D's logit on it; every loss here falls as the logit rises."""
        raise NotImplementedError

    def g_loss(self, D: Disc, fake, y=None, keep: torch.Tensor | None = None, real: torch.Tensor | None = None) -> torch.Tensor:
        """G's loss over the batch; with `keep` (a count, as a tensor so a CUDA graph replays any value),
        over the `keep` fakes D rates most real only (top-k training, Sinha et al. 2020). `real`: the
        step's real batch, for losses that pair fakes with reals (rpgan); the others ignore it."""
        return top_k_mean(self.g_per_sample(D(fake, y)), keep)


def top_k_mean(per: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The mean of the per-sample G losses, or of the `keep` lowest (top-k training)."""
    if keep is None:
        return per.mean()
    ranked = per.flatten().sort().values  # lowest loss = highest logit first
    return (ranked * (torch.arange(len(ranked), device=ranked.device) < keep)).sum() / keep


def gradient_penalty(D: Disc, x: torch.Tensor, y=None) -> torch.Tensor:
    """Zero-centred gradient penalty ½·E‖∇ₓD(x)‖² at the images x (R1 on reals, R2 on fakes). Plus
    0·D(x): the gradient on x misses D's last bias, and DDP wants a gradient for every parameter."""
    x = x.detach().requires_grad_(True)
    logits = D(x, y).float()
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean() / 2 + 0 * logits.mean()


def gamma_schedule(step: int, total: int, gamma0: float, final_ratio: float = 0.1) -> float:
    """Cosine decay of a penalty weight from gamma0 at step 0 to gamma0·final_ratio at step `total`
    (held there after), as R3GAN decays γ over training: a pure function of the step, so a resumed
    run gets the same weights."""
    t = min(max(step, 0) / max(total, 1), 1.0)
    end = gamma0 * final_ratio
    return end + (gamma0 - end) * (1 + math.cos(math.pi * t)) / 2


# its names are also declared torch-free in config.LOSS_NAMES (a test checks the two agree)
LOSSES: Registry[type[Loss]] = Registry("loss")


@LOSSES.register("non-saturating")
class NonSaturating(Loss):
    # D: maximize log D(x) + log(1 - D(G(z)));  G: maximize log D(G(z)) (Goodfellow et al. 2014)
    def d_from_logits(self, r, f):
        return F.softplus(-r).mean() + F.softplus(f).mean()

    def g_per_sample(self, f):
        return F.softplus(-f)


@LOSSES.register("hinge")
class Hinge(Loss):
    # D: minimize E[relu(1 - D(x))] + E[relu(1 + D(G(z)))];  G: minimize -E[D(G(z))] (Lim & Ye 2017)
    def d_from_logits(self, r, f):
        return F.relu(1 - r).mean() + F.relu(1 + f).mean()

    def g_per_sample(self, f):
        return -f


@LOSSES.register("wgan-gp")
class WGANGP(Loss):
    # critic: minimize E[D(G(z))] - E[D(x)] + λ E[(‖∇D(x̂)‖ - 1)²] on interpolates x̂ (Gulrajani et al. 2017)
    n_critic = 5

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gp = GradientPenalty(10.0)

    def d_loss(self, D, real, fake, y=None):
        r, f = D(real, y), D(fake, y)
        return f.mean() - r.mean() + self.gp(D, real, fake, y) + self.regulariser(r, f), r, f

    def g_per_sample(self, f):
        return -f


@LOSSES.register("rpgan")
class RpGAN(Loss):
    # relativistic pairing (Jolicoeur-Martineau 2019; R3GAN, Huang et al. 2024), each fake paired with a
    # real image of the batch: D minimises softplus(-(D(x) - D(G(z)))), G the mirror softplus(-(D(G(z)) - D(x)))
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._real: torch.Tensor | None = None  # the last D step's real batch, which G's loss pairs with

    def d_loss(self, D, real, fake, y=None):
        self._real = real
        return super().d_loss(D, real, fake, y)

    def d_from_logits(self, r, f):
        return F.softplus(f - r).mean()

    def g_loss(self, D, fake, y=None, keep=None, real: torch.Tensor | None = None):
        """G's loss pairs each fake with a real image: `real`, or else the batch of the D step just
        before (the step's order: D, then G). D(x) is a constant here: only G learns."""
        real = self._real if real is None else real
        if real is None:
            raise RuntimeError("rpgan: G's loss needs D(x): pass real=, or run a D step first")
        with torch.no_grad():
            r = D(real, y)
        return top_k_mean(F.softplus(r - D(fake, y)), keep)


def get(name: str, lecam: float = 0.0, device: torch.device | str = "cpu", r1: float = 0.0, r2: float = 0.0,
        gamma_schedule: str = "constant", steps: int = 1) -> Loss:
    """The loss `name` with its regulariser weights: LeCam's, and R1's and R2's γ (0: off), constant or
    decaying over `steps` (gamma_schedule: constant | cosine)."""
    return LOSSES.get(name)(lecam, device, r1, r2, gamma_schedule, steps)
