"""Data-parallel training over several processes (PyTorch DDP, launched by torchrun).

`train.devices` > 1 makes the train stage re-launch itself under torchrun; every process then
trains on its own batches (its own seed), gradients are averaged by DDP, and rank 0 alone writes
outputs and talks to MLflow. One process (the default) never touches torch.distributed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ganflow import GanflowError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE = Dist()


def world_size_for(devices: int | str) -> int:
    """train.devices -> process count: auto is every CUDA device (1 without CUDA)."""
    if devices == "auto":
        return max(1, torch.cuda.device_count())
    return int(devices)


def relaunch_under_torchrun(world_size: int, argv: list[str]) -> None:
    """Replace this process with torchrun running the same stage on world_size processes
    (rendezvous on localhost only). Returns only when already running under torchrun."""
    if world_size <= 1 or "LOCAL_RANK" in os.environ:
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}", sys.argv[0], *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def init(device: torch.device) -> Dist:
    """Join the process group torchrun set up (nccl when training on CUDA, else gloo); SINGLE without torchrun."""
    if "LOCAL_RANK" not in os.environ:
        return SINGLE
    backend = "nccl" if device.type == "cuda" else "gloo"
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def device_for(d: Dist, device: torch.device) -> torch.device:
    if d.active and device.type == "cuda":
        return torch.device("cuda", d.local_rank)
    if d.active and device.type == "mps":
        raise GanflowError("train.devices > 1 needs CUDA or CPU processes, not MPS")
    return device


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.active:
        dist.all_reduce(x)
        x /= d.world_size
    return x


def gather(obj, d: Dist) -> list:
    """Every rank's obj, in rank order (a collective: all ranks must call it)."""
    if not d.active:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
