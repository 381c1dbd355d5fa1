"""Every speed lever in one place: device choice, optimisers (fused and capturable Adam), autocast,
channels_last, torch.compile (and its internals: `uncompiled`), the DDP wrap, the device scalars a
step reads, and the whole D+G step captured as one CUDA graph.

The training step (ganflow.gan_step) asks a `Levers` object for what it needs; nothing here knows
what a GAN is. Nothing here sets process-wide torch state either, except `seed_everything`, which is
for stage entry points.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Protocol

import torch
from torch import nn

from ganflow import GanflowError
from ganflow.config import graph_blocker
from ganflow.distributed import SINGLE, Dist, device_for

if TYPE_CHECKING:
    from ganflow.config import TrainConfig

log = logging.getLogger("ganflow.accel")

GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (real training steps)


def select_device(name: str) -> torch.device:
    """train.device -> a torch device: auto is CUDA, then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GanflowError("train.device is cuda, but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GanflowError("train.device is mps, but MPS is not available")
    return torch.device(name)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch's global RNG, and on the CPU ask for deterministic kernels (bit-identical reruns;
    on CUDA they would need cuBLAS settings and cost speed). Process-wide: stage entry points call
    this, the library never does.

    Deterministic mode also fills every new tensor with NaN by default, a debugging aid against kernels
    that read memory they never wrote; that is switched off: the step ran 0-12 % faster without it on the
    CPU (bench/step_levers.py, docs/performance.md) and no result changes (a kernel reading unwritten
    memory would break the byte-identical rerun and resume tests)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(device.type == "cpu")
    torch.utils.deterministic.fill_uninitialized_memory = False


class GraphBackend(Protocol):
    """How a step is warmed up and captured: CUDA in production, a stand-in in CPU tests."""

    def prepare(self, optimizers: Iterable[torch.optim.Optimizer]) -> None: ...

    def warmup(self, fn: Callable[[], Any]) -> Any: ...

    def capture(self, fn: Callable[[], Any]) -> Callable[[], Any]: ...


class CudaGraphs:
    def prepare(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        for opt in optimizers:  # Adam's step counters must live on the device to be captured
            for group in opt.param_groups:
                group["capturable"] = True
                # a tensor learning rate, so a schedule's set_lr reaches the replayed graph
                group["lr"] = torch.tensor(float(group["lr"]), device=group["params"][0].device)

    def warmup(self, fn: Callable[[], Any]) -> Any:
        # warm-up runs on a side stream, as capture requires (cuBLAS/cuDNN workspaces, autograd state)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = fn()
        torch.cuda.current_stream().wait_stream(side)
        return out

    def capture(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn()  # recorded, not run: every tensor it touches keeps its address

        def replay() -> Any:
            graph.replay()
            return static_out

        return replay


class GraphedStep:
    """`fn` (one whole training step) run eagerly for the first `warmup` calls, captured as one graph
    on the next, then replayed. Every call is exactly one real step; capture happens at the first
    call, so whatever was loaded before (a checkpoint's weights and optimiser state) is what the
    graph points at. `on_capture_error` decides what a failed capture does (auto: fall back)."""

    def __init__(self, fn: Callable[[], Any], backend: GraphBackend, warmup: int = GRAPH_WARMUP_STEPS,
                 on_capture_error: Callable[[Exception], None] | None = None):
        self.fn, self.backend, self.warmup = fn, backend, warmup
        self.on_capture_error = on_capture_error
        self.calls = 0
        self.replay: Callable[[], Any] | None = None
        self.failed = False

    def __call__(self) -> Any:
        self.calls += 1
        if self.replay is not None:
            return self.replay()
        if self.failed:
            return self.fn()
        if self.calls <= self.warmup:
            return self.backend.warmup(self.fn)
        try:
            self.replay = self.backend.capture(self.fn)
        except Exception as err:  # noqa: BLE001 - auto mode reports it and goes on eagerly
            if self.on_capture_error is None:
                raise
            self.failed = True
            self.on_capture_error(err)
            return self.fn()
        return self.replay()


@dataclass
class Levers:
    """The speed levers one training process uses, resolved once from train.* and the device."""

    device: torch.device
    dist: Dist = SINGLE
    channels_last: bool = False
    compile: bool = False
    cuda_graph: str = "off"  # the train.cuda_graph setting: auto | on | off
    graph: bool = False  # capture the whole step (decided from cuda_graph, device, DDP, compile)
    graph_reason: str = ""  # why graphs are (not) used, for the log
    graph_backend: GraphBackend = field(default_factory=CudaGraphs)
    bf16: bool = False  # bf16 autocast of the step (train.autocast resolved for this device)
    precision: str = ""  # the setting and why, for the log

    @property
    def fused(self) -> bool:
        """Fused Adam: one kernel per step for all of a net's weights (CUDA; on the CPU since torch 2.4;
        bench/step_levers.py times it against the per-tensor loop)."""
        return self.device.type in ("cuda", "cpu")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def place(self, *nets: nn.Module) -> None:
        """Move nets to the device, in the chosen memory layout (in place)."""
        for net in nets:
            net.to(self.device)
            if self.channels_last:
                net.to(memory_format=torch.channels_last)

    def for_step(self, net: nn.Module) -> nn.Module:
        """The view of `net` that a training step calls: DDP-wrapped (gradients averaged over
        ranks) and compiled, as configured. The module itself keeps the state."""
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(net) if self.compile else net

    def for_frozen(self, net: nn.Module) -> nn.Module:
        """The view of `net` called while its weights are frozen (D during the G step): no DDP wrap,
        since no gradient of its weights is made and so none is averaged."""
        return torch.compile(net) if self.compile else net

    def adam(self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
        kw = {"fused": True} if self.fused else {}
        return torch.optim.Adam(params, lr=lr, betas=betas, **kw)

    @staticmethod
    def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
        """Set every group's learning rate, in place when it is a tensor (captured by a CUDA graph)."""
        for group in opt.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def load_optimizer(self, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load an optimiser's state but keep this run's levers: a checkpoint's param groups carry the
        fused/capturable flags of the process that saved it (a graphed GPU run, say), and its moments the
        memory layout of that run's weights (NCHW or NHWC), which fused Adam, walking weights and moments by
        memory position, would pair element for element with this run's: each moment takes its weight's layout."""
        levers = [{k: g[k] for k in ("fused", "capturable", "foreach") if k in g} for g in opt.param_groups]
        opt.load_state_dict(state)
        for group, keep in zip(opt.param_groups, levers):
            group.update(keep)
            group["lr"] = float(group["lr"])  # a graphed run saves it as a device tensor
            for p in group["params"]:
                moments = opt.state.get(p, {})
                for k, v in moments.items():
                    if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                        moments[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)

    def autocast(self) -> ContextManager:
        """bf16 autocast when on (its weight cache off under graphs, which replay without it)."""
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not self.graph)

    def stepper(self, step: Callable[[], Any], optimizers: Iterable[torch.optim.Optimizer]) -> Callable[[], Any]:
        """What the loop calls once per step: `step` itself, or `step` captured as one CUDA graph."""
        log.info("train.cuda_graph %s: %s; %s", self.cuda_graph, self.graph_reason, self.precision)
        if not self.graph:
            return step
        self.graph_backend.prepare(optimizers)

        def fallback(err: Exception) -> None:
            if self.cuda_graph == "on":
                raise GanflowError(f"train.cuda_graph is on, but capturing the step failed: {_first_line(err)}") from None
            log.warning("train.cuda_graph auto: capture failed (%s); training eagerly", _first_line(err))
            self.graph = False

        return GraphedStep(step, self.graph_backend, on_capture_error=fallback)


def levers(cfg: TrainConfig, dist: Dist = SINGLE, device: torch.device | None = None) -> Levers:
    """Resolve train.* into the levers of this process on `device` (the stage's choice; None: chosen
    here from train.device); `cuda_graph: on` where graphs cannot be used is one error here, before any work."""
    device = device_for(dist, device if device is not None else select_device(cfg.device))
    graph, reason = graph_decision(cfg.cuda_graph, device, dist, cfg.compile)
    bf16, why = bf16_decision(cfg.autocast, device)
    nhwc, layout = channels_last_decision(cfg.channels_last, device, bf16, dist.active, cfg.compile)
    return Levers(device, dist, nhwc, cfg.compile, cfg.cuda_graph, graph, reason, bf16=bf16,
                  precision=f"train.autocast {cfg.autocast}: {why}; train.channels_last {cfg.channels_last}: {layout}")


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX): elsewhere bf16 is emulated,
    and slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def bf16_decision(setting: str, device: torch.device) -> tuple[bool, str]:
    """(bf16 autocast of the step?, why) from train.autocast and the device. On the 2-core AVX512-BF16
    CPU a step runs 1.5-1.8x faster in bf16 (docs/performance.md), which buys more steps in the same time."""
    if setting == "off":
        return False, "float32"
    if device.type == "mps":
        if setting == "bf16":
            raise GanflowError("train.autocast is bf16, but autocast on mps is not supported here: use auto or off")
        return False, "float32 (mps)"
    if setting == "bf16" or device.type == "cuda":
        return True, "bf16"
    if native_bf16_cpu():
        return True, "bf16 (the CPU has native bf16)"
    return False, "float32 (the CPU has no native bf16: AVX512-BF16 or AMX)"


def channels_last_decision(setting: str | bool, device: torch.device, bf16: bool, ddp: bool = False,
                           compiled: bool = False) -> tuple[bool, str]:
    """(NHWC layout for both nets?, why) from train.channels_last. auto: on for a bf16 step on a CPU with AMX,
    whose bf16 convolutions are NHWC kernels (1.03-1.06x on 1-channel 28 px, 1.29x on StackedMNIST, 1.15x / 1.53x
    on RGB 32 / 64 px: docs/performance.md); off elsewhere: on CPUs without AMX and on CUDA it is unmeasured as
    a layout alone, under DDP every rank must agree (a host without AMX would not), and torch.compile failed
    with NHWC on CUDA (a stride assert)."""
    if setting != "auto":
        return bool(setting), "NHWC" if setting else "NCHW"
    if not (bf16 and device.type == "cpu" and torch.cpu._is_amx_tile_supported()):
        return False, "NCHW"
    if ddp or compiled:
        return False, f"NCHW (auto keeps it under {'DDP' if ddp else 'train.compile'})"
    return True, "NHWC (a bf16 step on a CPU with AMX)"


def graph_decision(setting: str, device: torch.device, dist: Dist, compiled: bool) -> tuple[bool, str]:
    """(capture the step?, why) from train.cuda_graph and what this process has."""
    if setting == "off":
        return False, "eager"
    blocker = graph_blocker(device.type, dist.active, compiled)
    if blocker and setting == "on":
        raise GanflowError(f"train.cuda_graph is on, but {blocker}")
    if blocker:
        return False, f"eager, because {blocker}"
    return True, "the whole D+G step is captured as one CUDA graph at the first step"


def uncompiled(view: nn.Module) -> nn.Module:
    """`view` (from Levers.for_step) without torch.compile, DDP kept: what a double backward (a gradient
    penalty's) calls, since torch.compile cannot differentiate twice."""
    return getattr(view, "_orig_mod", view)


class DeviceScalars:
    """0-d tensors on the device that a step reads (a CUDA graph replays whatever they hold), filled
    from the host only when their value changes: the last value filled is remembered, since reading
    one back would sync."""

    def __init__(self, device: torch.device):
        self.device = device
        self._filled: dict[int, float] = {}

    def new(self) -> torch.Tensor:
        return torch.zeros((), device=self.device)

    def fill(self, t: torch.Tensor, value: float) -> None:
        if self._filled.get(id(t)) != value:
            t.fill_(value)
            self._filled[id(t)] = value


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
