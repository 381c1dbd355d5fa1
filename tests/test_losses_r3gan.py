"""The R3GAN parts (issue 18): the relativistic pairing loss, the R2 penalty and the γ schedule,
checked on a tiny linear D against values and gradients worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from ganflow import losses


def linear_d(w: torch.Tensor, b: torch.Tensor):
    """D(x) = <w, x> + b: ∇ₓD = w for every image, and D(x) - D(x') = <w, x - x'>."""
    return lambda x, y=None: (w * x).sum((1, 2, 3)) + b


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    w = torch.randn(1, 1, 4, 4, requires_grad=True)
    b = torch.randn((), requires_grad=True)
    real, fake = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4, requires_grad=True)
    return w, b, real, fake


def test_rpgan_d_loss_value_and_gradient_by_hand(tiny):
    w, b, real, fake = tiny
    loss = losses.get("rpgan")
    d, r, f = loss.d_loss(linear_d(w, b), real, fake.detach())
    diff = ((real - fake.detach()).flatten(1) @ w.detach().flatten())  # D(x) - D(G(z)); b cancels
    assert d.item() == pytest.approx(torch.log1p(torch.exp(-diff)).mean().item(), rel=1e-6)
    d.backward()
    # d/dw mean softplus(-(<w, x - x'>)) = -mean sigmoid(-diff)·(x - x'); nothing reaches b
    want = -(torch.sigmoid(-diff)[:, None] * (real - fake.detach()).flatten(1)).mean(0)
    assert torch.allclose(w.grad.flatten(), want, atol=1e-6)
    assert b.grad is None or b.grad.abs().item() < 1e-7


def test_rpgan_g_loss_is_the_mirror_and_pairs_with_the_d_steps_real_batch(tiny):
    w, b, real, fake = tiny
    loss, D = losses.get("rpgan"), linear_d(w, b)
    loss.d_loss(D, real, fake.detach())
    g = loss.g_loss(D, fake)
    diff = ((fake.detach() - real).flatten(1) @ w.detach().flatten())  # D(G(z)) - D(x)
    assert g.item() == pytest.approx(F.softplus(-diff).mean().item(), rel=1e-6)
    g.backward()
    # d/dx' mean softplus(-<w, x' - x>) = -sigmoid(-diff)·w / n
    want = -torch.sigmoid(-diff)[:, None, None, None] * w.detach() / len(fake)
    assert torch.allclose(fake.grad, want, atol=1e-6)
    # D(x) is a constant of G's loss: w's gradient (zero in training, where D is frozen) comes from D(G(z)) alone
    assert torch.allclose(w.grad.flatten(), -(torch.sigmoid(-diff)[:, None] * fake.detach().flatten(1)).mean(0), atol=1e-6)
    # an explicit real batch is the same as the D step's
    assert loss.g_loss(D, fake.detach(), real=real).item() == pytest.approx(g.item())


def test_rpgan_g_loss_without_a_real_batch_is_refused():
    with pytest.raises(RuntimeError, match="rpgan"):
        losses.get("rpgan").g_loss(lambda x, y: x.sum((1, 2, 3)), torch.zeros(2, 1, 2, 2))


def test_r2_penalty_is_half_the_squared_gradient_on_fakes_and_trains_d_only(tiny):
    w, b, _, fake = tiny
    penalty = losses.Loss.r2_penalty(linear_d(w, b), fake)
    assert penalty.item() == pytest.approx(w.detach().square().sum().item() / 2, rel=1e-6)
    penalty.backward()
    assert torch.allclose(w.grad, w.detach(), atol=1e-6)  # d/dw ½‖w‖² = w
    assert fake.grad is None  # the fakes are detached: G gets nothing from R2


def test_r1_and_r2_share_one_penalty():
    w = torch.randn(1, 1, 4, 4)
    D, x = linear_d(w, torch.tensor(0.5)), torch.randn(5, 1, 4, 4)
    assert losses.Loss.r1_penalty(D, x).item() == losses.Loss.r2_penalty(D, x).item()


def test_gamma_schedule_is_a_cosine_from_gamma0_to_a_tenth():
    g = [losses.gamma_schedule(s, 1000, 2.0) for s in (0, 250, 500, 1000, 5000)]
    assert g[0] == pytest.approx(2.0) and g[2] == pytest.approx(1.1) and g[3] == pytest.approx(0.2) and g[4] == g[3]
    assert g[1] == pytest.approx(0.2 + 1.8 * (1 + math.cos(math.pi / 4)) / 2)
    assert all(a > c for a, c in zip(g, g[1:4]))  # falls monotonically


def test_rpgan_runs_through_the_existing_step_and_its_g_step_trains_g_only(mnist):
    from conftest import TINY_TRAIN
    from ganflow.config import parse_params
    from ganflow.training import Trainer

    torch.manual_seed(0)
    t = Trainer(parse_params({"train": {**TINY_TRAIN, "loss": "rpgan"}}), mnist, "x")
    calls = {"D": 0, "G": 0}
    for name, net in (("D", t.gs.D), ("G", t.gs.G)):
        for p in net.parameters():
            p.register_hook(lambda g, name=name: calls.__setitem__(name, calls[name] + 1))
    out = t.gs.step()  # D step (pairs with this batch), then G step (pairs with the same batch)
    assert torch.isfinite(out).all()
    assert calls == {"D": sum(1 for _ in t.gs.D.parameters()), "G": sum(1 for _ in t.gs.G.parameters())}
