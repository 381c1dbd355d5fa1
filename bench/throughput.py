"""Train-step throughput: ganflow's step against a reference loop, side by side in one process.

The reference is written like pytorch/examples dcgan/main.py: fp32, eager, NCHW, BCE, Adam, a host
sync per step for its printout, the same networks (ganflow's dcgan, batch-norm D) and batch size, the
data already on the device. ganflow's step runs the same networks and loss with its levers: data and
index draws on the device, fused Adam (CUDA), no host sync between log steps, bf16 autocast (CUDA),
and optionally channels_last and torch.compile (--levers).

    python bench/throughput.py [--device auto] [--seconds 10] [--levers compile,channels_last]

Prints img/s of each and their ratio (medians of three alternating rounds), for dcgan at 28×28
(batch 128 and 1024) and 64×64 (batch 128).
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

from ganflow.config import parse_params  # noqa: E402
from ganflow.data import ImageSet  # noqa: E402
from ganflow.nets import NetConfig, build  # noqa: E402
from ganflow.training import Trainer, select_device  # noqa: E402

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


def ganflow_step_fn(resolution: int, batch: int, device: str, images: np.ndarray, levers: dict):
    train = {"arch": "dcgan", "loss": "non-saturating", "d_norm": "batch", "width": 32, "z_dim": 64,
             "batch_size": batch, "betas": [0.5, 0.999], "ema": 0.0, "device": device, **levers}
    t = Trainer(parse_params({"train": train}), ImageSet(images, None, []), "bench")
    return t.train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per entry")
    ap.add_argument("--levers", default="", help="comma-separated: compile, channels_last")
    a = ap.parse_args()
    device = select_device(a.device)
    levers = {name: True for name in a.levers.split(",") if name}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; levers: {levers or 'defaults'}")
    print(f"{'case':<16}{'reference img/s':>16}{'ganflow img/s':>16}{'ratio':>8}")
    rng = np.random.default_rng(0)
    for resolution, batch in CASES:
        images = rng.integers(0, 256, size=(4096, 1, resolution, resolution), dtype=np.uint8)
        data = torch.from_numpy(images).to(device).float().div(127.5).sub(1)
        ref_step = reference_step_fn(resolution, batch, device, data)
        gan_step = ganflow_step_fn(resolution, batch, str(device), images, levers)
        # alternate short rounds, so drifting machine speed hits both alike; report medians
        rounds = [(timed(ref_step, device, a.seconds / 3)[0], timed(gan_step, device, a.seconds / 3)[0]) for _ in range(3)]
        ref = float(np.median([r for r, _ in rounds]))
        gan = float(np.median([g for _, g in rounds]))
        ratio = float(np.median([g / r for r, g in rounds]))
        print(f"{resolution}px b{batch:<10}{ref * batch:>16.0f}{gan * batch:>16.0f}{ratio:>7.2f}×", flush=True)


if __name__ == "__main__":
    main()
