"""GAN losses, registered by name. Each computes its own D calls so it can add penalties.

`D` here is the discriminator as the loop sees it (augmentation included).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ganflow.registry import Registry

Disc = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class Loss:
    """A loss may keep state (a running mean for a regulariser, say): it goes into the checkpoint
    through state_dict/load_state_dict, so resuming stays exact."""

    n_critic = 1  # D updates per G update

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")

    def d_loss(self, D: Disc, real, fake, y=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (loss, logits on real, logits on fake)."""
        r, f = D(real, y), D(fake, y)
        return self.d_from_logits(r, f), r, f

    def d_from_logits(self, r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, D: Disc, fake, y=None) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[type[Loss]] = Registry("loss")


@LOSSES.register("non-saturating")
class NonSaturating(Loss):
    # D: maximize log D(x) + log(1 - D(G(z)));  G: maximize log D(G(z)) (Goodfellow et al. 2014)
    def d_from_logits(self, r, f):
        return F.softplus(-r).mean() + F.softplus(f).mean()

    def g_loss(self, D, fake, y=None):
        return F.softplus(-D(fake, y)).mean()


@LOSSES.register("hinge")
class Hinge(Loss):
    # D: minimize E[relu(1 - D(x))] + E[relu(1 + D(G(z)))];  G: minimize -E[D(G(z))] (Lim & Ye 2017)
    def d_from_logits(self, r, f):
        return F.relu(1 - r).mean() + F.relu(1 + f).mean()

    def g_loss(self, D, fake, y=None):
        return -D(fake, y).mean()


@LOSSES.register("wgan-gp")
class WGANGP(Loss):
    # critic: minimize E[D(G(z))] - E[D(x)] + λ E[(‖∇D(x̂)‖ - 1)²] on interpolates x̂ (Gulrajani et al. 2017)
    n_critic = 5
    gp_weight = 10.0

    def d_loss(self, D, real, fake, y=None):
        r, f = D(real, y), D(fake, y)
        # real and fake share the labels y, so their interpolates do too
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(D(mix, y).sum(), mix, create_graph=True)
        gp = (grad.flatten(1).norm(dim=1) - 1).square().mean()
        return f.mean() - r.mean() + self.gp_weight * gp, r, f

    def g_loss(self, D, fake, y=None):
        return -D(fake, y).mean()


def get(name: str) -> Loss:
    return LOSSES.get(name)()
