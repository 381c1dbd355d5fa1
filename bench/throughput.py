"""Train-step throughput: ganflow's step against a reference loop, side by side in one process.

The reference is written like pytorch/examples dcgan/main.py: fp32, eager, NCHW, BCE, Adam, a host
sync per step for its printout, the same networks (ganflow's dcgan, batch-norm D) and batch size, the
data already on the device. ganflow's step runs the same networks and loss with its levers: data and
index draws on the device, fused Adam (CUDA), no host sync between log steps, no D weight gradients
in the G step, bf16 autocast (CUDA), and optionally channels_last and torch.compile (--levers).
It is measured eager (train.cuda_graph off) and, on CUDA, captured as one CUDA graph (cuda_graph on).

    python bench/throughput.py [--device auto] [--seconds 10] [--levers compile,channels_last]

Prints img/s of each and the ratios to the reference (medians of three alternating rounds), for
dcgan at 28×28 (batch 128 and 1024) and 64×64 (batch 128).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ganflow.accel import seed_everything, select_device  # noqa: E402
from ganflow.config import parse_params  # noqa: E402
from ganflow.data import ImageSet  # noqa: E402
from ganflow.nets import NetConfig, build  # noqa: E402
from ganflow.pixels import to_float  # noqa: E402
from ganflow.training import Trainer  # noqa: E402

CASES = [(28, 128), (28, 1024), (64, 128)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device: torch.device, seconds: float, warmup: int = 3) -> tuple[float, int]:
    """Steps per second of `step` over about `seconds` (after warm-up)."""
    for _ in range(warmup):
        step()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    sync(device)
    return n / (time.perf_counter() - t0), n


def reference_step_fn(resolution: int, batch: int, device: torch.device, data: torch.Tensor):
    """One D+G step the way pytorch/examples dcgan/main.py writes it."""
    torch.manual_seed(0)
    netG, netD = build("dcgan", NetConfig(resolution, 1, z_dim=64, width=32, d_norm="batch"))
    netG, netD = netG.to(device), netD.to(device)
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ones, zeros = torch.ones(batch, device=device), torch.zeros(batch, device=device)
    state = {"i": 0, "perm": torch.randperm(len(data), device=device)}

    def step():
        i = state["i"]
        if i + batch > len(data):
            state["i"], state["perm"], i = 0, torch.randperm(len(data), device=device), 0
        real = data[state["perm"][i : i + batch]]
        state["i"] += batch
        netD.zero_grad()
        errD_real = F.binary_cross_entropy_with_logits(netD(real), ones)
        errD_real.backward()
        fake = netG(torch.randn(batch, 64, device=device))
        errD_fake = F.binary_cross_entropy_with_logits(netD(fake.detach()), zeros)
        errD_fake.backward()
        optD.step()
        netG.zero_grad()
        errG = F.binary_cross_entropy_with_logits(netD(fake), ones)
        errG.backward()
        optG.step()
        return (errD_real + errD_fake).item(), errG.item()  # the example prints these every step

    return step


def ganflow_step_fn(resolution: int, batch: int, device: torch.device, images: np.ndarray, levers: dict, graph: bool):
    """ganflow's step as its loop calls it (GanStep.advance: schedule, the D+G step, lazy phases): the
    D+G step eager, or captured as one CUDA graph at the first call."""
    train = {"arch": "dcgan", "loss": "non-saturating", "d_norm": "batch", "width": 32, "z_dim": 64,
             "batch_size": batch, "betas": [0.5, 0.999], "ema": 0.0, "r1": 0.0, "device": device.type,  # as the reference
             "cuda_graph": "on" if graph else "off", **levers}
    seed_everything(0, device)
    gs = Trainer(parse_params({"train": train}), ImageSet(images, None, []), "bench").gs
    stepper, done = gs.stepper(), [0]

    def step():
        gs.advance(done[0], stepper)
        done[0] += 1

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per entry")
    ap.add_argument("--levers", default="", help="comma-separated: compile, channels_last")
    a = ap.parse_args()
    device = select_device(a.device)
    levers = {name: True for name in a.levers.split(",") if name}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    graphs = device.type == "cuda" and not levers.get("compile")
    print(f"device: {name}; torch {torch.__version__}; levers: {levers or 'defaults'}")
    print(f"{'case':<14}{'reference':>12}{'eager':>12}{'graphed':>12}{'eager/ref':>11}{'graphed/ref':>13}   (img/s)")
    rng = np.random.default_rng(0)
    for resolution, batch in CASES:
        images = rng.integers(0, 256, size=(4096, 1, resolution, resolution), dtype=np.uint8)
        data = to_float(torch.from_numpy(images).to(device))
        steps = {"reference": reference_step_fn(resolution, batch, device, data),
                 "eager": ganflow_step_fn(resolution, batch, device, images, levers, graph=False)}
        if graphs:
            steps["graphed"] = ganflow_step_fn(resolution, batch, device, images, levers, graph=True)
        # alternate short rounds, so drifting machine speed hits all alike; report medians
        rounds = [{k: timed(fn, device, a.seconds / 3)[0] for k, fn in steps.items()} for _ in range(3)]
        rate = {k: float(np.median([r[k] for r in rounds])) * batch for k in steps}
        ratio = {k: float(np.median([r[k] / r["reference"] for r in rounds])) for k in steps}
        cells = [f"{rate[k]:>12.0f}" if k in rate else f"{'n/a':>12}" for k in ("reference", "eager", "graphed")]
        ratios = f"{ratio['eager']:>10.2f}×" + (f"{ratio['graphed']:>12.2f}×" if graphs else f"{'n/a':>13}")
        print(f"{resolution}px b{batch:<9}{''.join(cells)}{ratios}", flush=True)


if __name__ == "__main__":
    main()
