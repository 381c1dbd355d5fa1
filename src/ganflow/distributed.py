"""Data-parallel training over several processes and hosts (PyTorch DDP under torchrun's agent).

- `train.devices` > 1 on one host, or `nodes.count` > 1: the train stage runs itself under torch's
  elastic agent (torchrun's own launcher API: `torchrun --nnodes nodes.count --nproc-per-node
  train.devices --rdzv-backend c10d --rdzv-endpoint nodes.rendezvous`), so its failures end in one line.
- Launched by an external `torchrun` (or `srun torchrun`), the stage runs unchanged in the world it was given.
- Every process trains on its own batches (its own seed), DDP averages the gradients, and the global rank
  0 alone writes outputs and talks to MLflow. One process (the default) never touches torch.distributed.
- Across hosts, checkpoints and resume need a shared file system (every rank reads the checkpoint rank 0
  wrote); `check_shared` refuses in one line when a rank cannot see it.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ganflow import GanflowError

if TYPE_CHECKING:
    from ganflow.config import NodesConfig

log = logging.getLogger("ganflow.distributed")
STARTED_ENV = "GANFLOW_LAUNCH_STARTED"  # a file each training process touches once it joined the group


@dataclass(frozen=True)
class Dist:
    rank: int = 0  # the global rank: 0 is rank 0 of node 0, the one that writes and tracks
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
    """train.devices -> process count per host: auto is every CUDA device (1 without CUDA)."""
    if devices == "auto":
        return max(1, torch.cuda.device_count())
    return int(devices)


def under_torchrun() -> bool:
    """True in a process that torchrun (ours or an external one) started."""
    return "LOCAL_RANK" in os.environ


def launch(nodes: NodesConfig, per_host: int, script: str, argv: list[str]) -> None:
    """Run `script argv` as nodes.count hosts × per_host processes under torch's elastic agent and exit
    with its status; return at once when there is nothing to launch (one process on one host, or already
    under torchrun). Every host runs this (the train stage, or `ganflow launch`); the agents meet at
    nodes.rendezvous within nodes.timeout seconds."""
    if under_torchrun() or (nodes.count == 1 and per_host <= 1):
        return
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import (RendezvousConnectionError, RendezvousError,
                                                          RendezvousTimeoutError)
    from torch.distributed.launcher import api
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # ganflow says it in one line
    multi = nodes.count > 1
    endpoint = nodes.rendezvous if multi else "localhost:0"  # one host: torchrun --standalone
    config = LaunchConfig(
        min_nodes=nodes.count, max_nodes=nodes.count, nproc_per_node=per_host, rdzv_backend="c10d",
        rdzv_endpoint=endpoint, run_id="ganflow-train" if multi else uuid.uuid4().hex, max_restarts=0,
        rdzv_configs={"join_timeout": nodes.timeout, "read_timeout": nodes.timeout}, monitor_interval=0.1,
    )
    # an agent whose processes finished waits for the other hosts' at an exit barrier (300 s in torchrun,
    # and past a host that died after the last synchronisation): bounded by nodes.timeout here
    api.LocalElasticAgent = functools.partial(LocalElasticAgent, exit_barrier_timeout=nodes.timeout)
    host = socket.gethostname()
    if multi:
        log.info("%s: joining the rendezvous at %s (%d hosts × %d processes, waiting at most %d s)",
                 host, endpoint, nodes.count, per_host, nodes.timeout)
        _wait_for_endpoint(endpoint, nodes.timeout)
    # the processes touch this file once they have joined: a lost rendezvous after it is a lost node 0
    started = Path(tempfile.mkdtemp(prefix="ganflow-launch-")) / "started"
    os.environ[STARTED_ENV] = str(started)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        elastic_launch(config, sys.executable)("-u", script, *argv)
    except RendezvousTimeoutError:
        raise GanflowError(f"the rendezvous at {endpoint} did not complete within nodes.timeout={nodes.timeout} s: "
                           f"{nodes.count} hosts must start the train stage (or `ganflow launch`)") from None
    except (RendezvousConnectionError, RendezvousError) as err:
        if started.exists():
            raise GanflowError(f"{host} lost the rendezvous host {endpoint} ({_cause(err)}): node 0 stopped (its log says why); "
                               "the next launch resumes from the last checkpoint") from None
        raise GanflowError(f"nodes.rendezvous {endpoint} is unreachable from {host} ({_cause(err)}): "
                           "is node 0 up, and the port open?") from None
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode
        if code == 1:  # a ganflow error or a lost peer: the process said why in one line already
            sys.exit(1)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise GanflowError(f"training process rank {rank} on {host} {how} (its error is above, when it had one); "
                           "the next launch resumes from the last checkpoint") from None
    sys.exit(0)


def _wait_for_endpoint(endpoint: str, timeout: int) -> None:
    """On a host that does not hold the rendezvous: wait until its port answers (node 0 opens it when its
    train stage starts), or refuse in one line after `timeout` seconds."""
    from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname

    host, _, port = endpoint.rpartition(":")
    if _matches_machine_hostname(host):
        return  # this host holds the rendezvous (or shares it with another agent here)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=min(5.0, timeout)).close()
            return
        except OSError as err:
            if time.monotonic() > deadline:
                raise GanflowError(f"nodes.rendezvous {endpoint} is unreachable from {socket.gethostname()} after "
                                   f"nodes.timeout={timeout} s ({err}): is node 0 up, and the port open?") from None
            time.sleep(1.0)


def _cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def init(device: torch.device, timeout: int = 600) -> Dist:
    """Join the process group torchrun set up (nccl when training on CUDA, else gloo); SINGLE without
    torchrun. `timeout` (nodes.timeout) bounds every collective: a dead or hung peer stops this
    process with one line within it (a killed one at once: its connections close)."""
    if not under_torchrun():
        return SINGLE
    local_rank = int(os.environ["LOCAL_RANK"])
    per_host = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
    if device.type == "cuda" and per_host > torch.cuda.device_count():
        raise GanflowError(f"{socket.gethostname()} runs {per_host} training processes (train.devices / --nproc-per-node) "
                           f"but has {torch.cuda.device_count()} CUDA devices")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    if os.environ.get(STARTED_ENV):
        Path(os.environ[STARTED_ENV]).touch()
    _lost_peer_is_one_line()
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def _lost_peer_is_one_line() -> None:
    """A collective that fails because another process died or hung ends this one with one line."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, dist.DistError) or (issubclass(kind, RuntimeError) and "gloo" in str(value).lower()):
            print(f"error: rank {os.environ.get('RANK')} on {socket.gethostname()} lost the other training processes "
                  f"({_cause(value)}): a host died, hung or was stopped; the next launch resumes from the last checkpoint",
                  file=sys.stderr)
            return
        previous(kind, value, tb)

    sys.excepthook = hook


def check_same_params(d: Dist, flat: dict[str, Any], code: str) -> None:
    """Refuse to train when any rank holds other params or other code than rank 0 (each host reads its
    own params.yaml and checkout: they must agree, or the ranks would train different models)."""
    if not d.active:
        return
    mine = {"code": code, **{k: repr(v) for k, v in flat.items()}}
    everyone = gather((socket.gethostname(), mine), d)
    host0, ref = everyone[0]
    for rank, (host, theirs) in enumerate(everyone):
        differ = sorted(k for k in ref.keys() | theirs.keys() if ref.get(k) != theirs.get(k))
        if differ:
            raise GanflowError(f"rank {rank} on {host} runs other params than rank 0 on {host0} ({', '.join(differ)} "
                               "differ): every host must run the same params.yaml and code")


def check_shared(d: Dist, checkpoint: Path, wait_s: float = 10.0) -> None:
    """Refuse, in one line, when a rank cannot see the folder rank 0 writes checkpoints to, or the
    checkpoint rank 0 holds (hosts without a shared file system would resume from different states)."""
    if not d.active:
        return
    from ganflow import io

    probe = checkpoint.parent / f".{checkpoint.name}.shared-probe"
    token = uuid.uuid4().hex
    if d.main:
        io.write_bytes(probe, token.encode())
    token = gather(token, d)[0]  # also a barrier: rank 0 wrote the probe before anyone looks
    deadline = time.monotonic() + wait_s  # a network file system may show a new file a little late
    while not (seen := probe.exists() and probe.read_text() == token) and time.monotonic() < deadline:
        time.sleep(0.2)
    size = checkpoint.stat().st_size if checkpoint.exists() else None
    everyone = gather((socket.gethostname(), seen, size), d)
    if d.main:
        probe.unlink(missing_ok=True)
    for rank, (host, seen, size) in enumerate(everyone):
        if not seen:
            raise GanflowError(f"rank {rank} on {host} cannot see {checkpoint.parent}/, where rank 0 writes: "
                               "training on several hosts needs a shared file system (docs/scale.md)")
        if size != everyone[0][2]:
            raise GanflowError(f"rank {rank} on {host} cannot see the checkpoint {checkpoint} that rank 0 wrote "
                               f"(rank 0: {everyone[0][2]} bytes, rank {rank}: {size}): resume needs a shared file system")


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
