"""The training step's small CPU levers, each switched off in turn, side by side in one process:
fused Adam (`accel.Levers.fused`: one kernel per optimiser step; on the CPU too since torch 2.4), D's
spectral norms computed once per loss (`parametrize.cached` in `GanStep.step`: one power iteration for
D's real and fake calls instead of one per call), and no NaN filling of new tensors under deterministic
mode (`torch.utils.deterministic.fill_uninitialized_memory`, switched off by `accel.seed_everything`),
and conditional batch norm's class scale and shift cast to the activations' dtype (`nets.CondBatchNorm`:
in float32 they promote a bf16-autocast G's activations to float32; conditional recipes only).

Each data set's default recipe (its lazy R1 step included) is timed in interleaved rounds (the median of
each), on this machine's device and threads: the default, each lever off alone, and all off. Prints
steps/s and the ratio to the default.

    python bench/step_levers.py --project DIR [--data params|uncond|stacked] [--rounds 5] [--seconds 3]

DIR holds data/prepared and models/evaluator.pt made with that data's params (as bench/sweep.py's).
"""

from __future__ import annotations

import contextlib

import torch.utils.deterministic
from torch.nn.utils import parametrize

from ganflow import accel, nets
from sweep import DATA, interleaved, step_bench_args, step_timer, training_split

LEVERS = ("fused Adam", "spectral norm once per loss", "no NaN fill", "conditional BN in the activations' dtype")


def main() -> None:
    a = step_bench_args(__doc__)
    images = training_split(a.project.resolve())
    cached, cache_on = parametrize.cached, [True]
    parametrize.cached = lambda: cached() if cache_on[0] else contextlib.nullcontext()  # what GanStep.step calls
    n = len(LEVERS)
    combos = [(True,) * n] + [tuple(i != j for j in range(n)) for i in range(n)] + [(False,) * n]
    timers = {}
    for fused, cache, no_fill, cast in combos:
        accel.Levers.fused = property(lambda self, on=fused: on)  # read when the trainer builds its optimisers
        switch = switches(cache, no_fill, cast, cache_on)
        switch()  # before the trainer warms up: a CUDA graph captures the step as switched
        timers[fused, cache, no_fill, cast] = timed_with(step_timer(DATA[a.data], images), switch)
    rates = interleaved(timers, a.rounds, a.seconds)
    default = rates[(True,) * n]
    for combo, rate in rates.items():
        off = [name for name, on in zip(LEVERS, combo) if not on]
        print(f"{a.data} {'off: ' + ', '.join(off) if off else 'default (all on)'}: {rate:.1f} steps/s ({rate / default:.3f} of the default)")
    print(f"ratio default / all off: {default / rates[(False,) * n]:.3f}")


CAST_BN = nets.CondBatchNorm.forward


def float32_bn(self, x, y=None):
    """CondBatchNorm.forward as it was before the cast: the class scale and shift in float32."""
    if not self.n_classes:
        return CAST_BN(self, x, y)
    flat = x.dim() == 2
    h = self.bn(x[:, :, None, None] if flat else x)
    gamma, beta = self.embed(y)[:, :, None, None].chunk(2, 1)
    h = gamma * h + beta
    return h.flatten(1) if flat else h


def switches(cache: bool, no_fill: bool, cast: bool, cache_on: list[bool]):
    """A call that sets the per-loss spectral norm, the NaN fill and the conditional BN's cast as given."""
    def switch() -> None:
        cache_on[0] = cache
        torch.utils.deterministic.fill_uninitialized_memory = not no_fill
        nets.CondBatchNorm.forward = CAST_BN if cast else float32_bn
    return switch


def timed_with(timer, switch):
    """`timer`, with its switches set while it runs."""
    def timed(seconds: float) -> float:
        switch()
        return timer(seconds)
    return timed


if __name__ == "__main__":
    main()
