"""Speed levers: train.cuda_graph validation and dispatch, bf16 autocast (train.autocast), capture after resume (with a stand-in for
the CUDA graph on the CPU), the frozen D in the G step, channels_last, max_seconds, export.
CUDA-only checks at the end are skipped without a GPU."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY_TRAIN, killed_then_resumed, paths, train
from ganflow import GanflowError, accel, losses
from ganflow.config import ConfigError, parse_params
from ganflow.generator import serving_model
from ganflow.nets import CondBatchNorm, NetConfig, build
from ganflow.training import Trainer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class StandInGraphs:
    """Records what a CUDA graph backend is asked to do; 'replay' runs the step eagerly, so results
    equal an eager run exactly when every call is exactly one real step."""

    def __init__(self, trainer: Trainer, fail: bool = False):
        self.trainer, self.fail, self.events = trainer, fail, []

    def prepare(self, optimizers):
        self.events.append(("prepare", self.trainer.state.step))

    def warmup(self, fn):
        self.events.append(("warmup", self.trainer.state.step))
        return fn()

    def capture(self, fn):
        t = self.trainer
        # what the graph would point at: the optimiser state tensors present at capture
        self.captured_state = [id(s["exp_avg"]) for s in t.gs.opt_g.state.values()]
        self.events.append(("capture", t.state.step))
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        return fn


def graphed(t: Trainer, mode: str = "auto", fail: bool = False) -> StandInGraphs:
    backend = StandInGraphs(t, fail)
    t.gs.levers.graph, t.gs.levers.cuda_graph, t.gs.levers.graph_backend = True, mode, backend
    return backend


@pytest.mark.parametrize("overrides, message", [
    ({"cuda_graph": "on", "device": "cpu"}, "train.cuda_graph is on, but the device is cpu, and CUDA graphs need CUDA"),
    ({"cuda_graph": "on", "compile": True}, "train.cuda_graph is on, but train.compile is on"),
    ({"cuda_graph": "on", "devices": 2}, "train.cuda_graph is on, but training is data-parallel (train.devices is not 1"),
    ({"cuda_graph": "sometimes"}, "params.yaml: train.cuda_graph must be 'auto', 'on' or 'off'"),
])
def test_cuda_graph_settings_that_cannot_work_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        parse_params({"train": overrides})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_graph_on_without_cuda_stops_before_any_work(mnist):
    with pytest.raises(GanflowError, match="train.cuda_graph is on, but the device is cpu, and CUDA graphs need CUDA"):
        Trainer(parse_params({"train": {**TINY_TRAIN, "device": "auto", "cuda_graph": "on"}}), mnist, "x")


def test_graph_decision_names_the_reason():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    from ganflow.distributed import Dist

    assert accel.graph_decision("off", gpu, Dist(), False) == (False, "eager")
    assert accel.graph_decision("auto", cpu, Dist(), False) == (False, "eager, because the device is cpu, and CUDA graphs need CUDA")
    assert accel.graph_decision("auto", gpu, Dist(0, 2, 0), False)[1] == (
        "eager, because training is data-parallel (train.devices is not 1: DDP runs eagerly)")
    assert accel.graph_decision("auto", gpu, Dist(), True)[0] is False
    assert accel.graph_decision("auto", gpu, Dist(), False)[0] is True


def test_autocast_decision_names_the_reason(monkeypatch):
    cpu, gpu, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert accel.bf16_decision("off", gpu) == (False, "float32")
    assert accel.bf16_decision("auto", gpu) == (True, "bf16")
    assert accel.bf16_decision("bf16", cpu) == (True, "bf16")
    assert accel.bf16_decision("auto", mps) == (False, "float32 (mps)")
    with pytest.raises(GanflowError, match="train.autocast is bf16, but autocast on mps is not supported here"):
        accel.bf16_decision("bf16", mps)
    # auto on a CPU: bf16 only where the CPU computes it natively (elsewhere it is emulated, and slower)
    monkeypatch.setattr(accel, "native_bf16_cpu", lambda: True)
    assert accel.bf16_decision("auto", cpu) == (True, "bf16 (the CPU has native bf16)")
    monkeypatch.setattr(accel, "native_bf16_cpu", lambda: False)
    assert accel.bf16_decision("auto", cpu) == (False, "float32 (the CPU has no native bf16: AVX512-BF16 or AMX)")


def test_channels_last_auto_is_on_for_a_bf16_step_on_a_cpu_with_amx(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert accel.channels_last_decision(True, gpu, False) == (True, "NHWC")
    assert accel.channels_last_decision(False, cpu, True) == (False, "NCHW")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert accel.channels_last_decision("auto", cpu, True) == (True, "NHWC (a bf16 step on a CPU with AMX)")
    assert accel.channels_last_decision("auto", cpu, False) == (False, "NCHW")  # float32: no faster there
    assert accel.channels_last_decision("auto", gpu, True) == (False, "NCHW")  # unmeasured on CUDA as a layout alone
    assert accel.channels_last_decision("auto", cpu, True, ddp=True) == (False, "NCHW (auto keeps it under DDP)")
    assert accel.channels_last_decision("auto", cpu, True, compiled=True) == (False, "NCHW (auto keeps it under train.compile)")
    assert accel.channels_last_decision(True, cpu, True, ddp=True) == (True, "NHWC")  # given: as given
    assert parse_params({}).train.channels_last == "auto"
    with pytest.raises(ConfigError, match="train.channels_last"):
        parse_params({"train": {"channels_last": "yes"}})
    levers = accel.levers(parse_params({"train": {"autocast": "bf16"}}).train, device=cpu)
    assert levers.channels_last and "train.channels_last auto: NHWC" in levers.precision
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert accel.channels_last_decision("auto", cpu, True) == (False, "NCHW")  # unmeasured without AMX
    assert not accel.levers(parse_params({"train": {"autocast": "bf16"}}).train, device=cpu).channels_last


def test_resumed_adam_moments_take_their_weights_layout():
    """A checkpoint's Adam moments keep the layout of the run that saved them; fused Adam pairs weights and moments
    by memory position, so an NCHW checkpoint resumed in NHWC (train.channels_last auto on an AMX CPU) would update
    each weight with another's moments unless load_optimizer gives each moment its weight's layout."""
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    a, grads = torch.nn.Conv2d(3, 8, 3), [torch.randn(8, 3, 3, 3), torch.randn(8)]
    nchw = accel.Levers(cpu)
    opt_a = nchw.adam(a.parameters(), 1e-2, (0.5, 0.9))
    for _ in range(2):  # moments that differ from element to element
        for p, g in zip(a.parameters(), grads):
            p.grad = g * torch.rand_like(g)
        opt_a.step()
    b = copy.deepcopy(a)
    nhwc = accel.Levers(cpu, channels_last=True)
    nhwc.place(b)
    opt_b = nhwc.adam(b.parameters(), 1e-2, (0.5, 0.9))
    nhwc.load_optimizer(opt_b, copy.deepcopy(opt_a.state_dict()))
    assert all(m.stride() == p.stride() for p in b.parameters() for m in opt_b.state[p].values() if m.shape == p.shape)
    for net, opt in ((a, opt_a), (b, opt_b)):
        for p, g in zip(net.parameters(), grads):
            p.grad = torch.empty_like(p).copy_(g)
        opt.step()
    assert b.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(a.weight, b.weight, rtol=0, atol=1e-7) and torch.allclose(a.bias, b.bias, rtol=0, atol=1e-7)


class Layouts(TorchDispatchMode):
    """Records, per op, whether its tensors are NHWC (channels-last contiguous): each convolution's input and
    weight, each elementwise activation backward's gradient and saved activation."""

    OPS = {torch.ops.aten.convolution.default: "conv", torch.ops.aten.threshold_backward.default: "relu",
           torch.ops.aten.leaky_relu_backward.default: "leaky_relu"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            self.seen.append((self.OPS[func], *(a.is_contiguous(memory_format=torch.channels_last) for a in args[:2])))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch", ["dcgan", "sngan"])
def test_nhwc_nets_keep_one_layout_forward_and_backward(arch):
    """Under train.channels_last, no convolution reads an NCHW input with NHWC weights (G's reshaped stem) and no
    activation backward meets a gradient in another layout than its activation (D's head flattens and sums its
    map): either runs a slow path (~18x for the elementwise backward on a CPU). R1's double backward too, less
    its convolutions (autograd's own, on transposed tensors)."""
    cfg = NetConfig(resolution=28, channels=3, z_dim=16, width=8, n_classes=10)
    G, D = build(arch, cfg)
    accel.Levers(torch.device("cpu"), channels_last=True).place(G, D)
    y = torch.arange(8) % 10
    reals = torch.rand(8, 3, 28, 28).to(memory_format=torch.channels_last).requires_grad_(True)
    with Layouts() as step:
        D(G(torch.randn(8, 16), y), y).mean().backward()
    with Layouts() as r1:
        (grad,) = torch.autograd.grad(D(reals, y).sum(), reals, create_graph=True)
        grad.square().sum().backward()
    d_activation = {"dcgan": "leaky_relu", "sngan": "relu"}[arch]  # G's is ReLU
    assert {kind for kind, *_ in step.seen} == {"conv", "relu", d_activation}
    assert all(a and b for _, a, b in step.seen), sorted(set(step.seen))
    r1_activations = [seen for seen in r1.seen if seen[0] != "conv"]
    assert {kind for kind, *_ in r1_activations} == {d_activation}
    assert all(a and b for _, a, b in r1_activations), sorted(set(r1_activations))


@pytest.mark.parametrize("mode, dtype", [("off", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_runs_the_step_in_bf16_and_keeps_float32_weights(mnist, mode, dtype):
    t = Trainer(parse_params({"train": {**TINY_TRAIN, "autocast": mode, "r1": 1.0, "r1_every": 2}}), mnist, "x")
    seen, class_bn = [], []  # what G draws, and D's first convolution (D's head sums in float32 under autocast)
    for net in (t.gs.G, t.gs.D.body[0]):
        net.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    for bn in (m for m in t.gs.G.modules() if isinstance(m, CondBatchNorm) and m.n_classes):  # float32 class terms promoted these
        bn.register_forward_hook(lambda module, args, out: class_bn.append(out.dtype))
    for i in range(2):  # the D+G step, then the lazy R1 step
        t.gs.advance(i)
    assert seen and set(seen) == {dtype}
    assert class_bn and set(class_bn) == {dtype}  # the conditional batch norms' outputs too (the labels make G conditional)
    states = [t.gs.G.state_dict(), t.gs.D.state_dict(), t.gs.G_ema.state_dict()]
    assert {v.dtype for sd in states for v in sd.values() if v.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(v).all() for sd in states for v in sd.values() if v.is_floating_point())


def test_the_nan_fill_is_off_and_changes_no_bit_of_training(mnist, tmp_path, monkeypatch):
    """seed_everything keeps deterministic kernels but not their NaN fill of new tensors (a debugging aid
    that costs step time): a bf16 conditional run with lazy R1 (the default's recipe) makes the same
    generator and checkpoint bytes with the fill forced back on."""
    import torch.utils.deterministic as det

    knobs = {"autocast": "bf16", "r1": 1.0, "r1_every": 3, "steps": 12}
    train(mnist, tmp_path / "off", **knobs)
    assert torch.are_deterministic_algorithms_enabled() and not det.fill_uninitialized_memory
    monkeypatch.setattr(accel.torch.utils.deterministic, "fill_uninitialized_memory", True)
    real_seed = accel.seed_everything
    monkeypatch.setattr(accel, "seed_everything", lambda *a: (real_seed(*a), setattr(det, "fill_uninitialized_memory", True)))
    train(mnist, tmp_path / "on", **knobs)
    assert det.fill_uninitialized_memory
    for name in ("generator.pt", "checkpoint.pt"):
        assert (tmp_path / "off" / name).read_bytes() == (tmp_path / "on" / name).read_bytes(), name


def test_eager_dispatch_calls_the_step_itself(mnist):
    t = Trainer(parse_params({"train": {**TINY_TRAIN, "cuda_graph": "auto"}}), mnist, "x")
    assert not t.gs.levers.graph  # CPU: auto means eager
    assert t.gs.stepper() == t.gs.step


@pytest.mark.stage
def test_capture_happens_after_resume_and_every_call_is_one_real_step(mnist, tmp_path):
    # in float32: under bf16 autocast, graphs turn autocast's weight cache off, and runs with and without
    # that cache differ in the last bits (so a graphed bf16 run is not byte-equal to an eager one)
    whole, split, fp32 = tmp_path / "whole", tmp_path / "split", {"autocast": "off"}
    train(mnist, whole, **fp32)  # eager, 20 steps
    train(mnist, split, steps=10, **fp32)  # "killed" after the step-10 checkpoint
    accel.seed_everything(0, torch.device("cpu"))
    t = Trainer(parse_params({"train": TINY_TRAIN | fp32}), mnist, "sha-test")
    backend = graphed(t)
    assert t.try_resume(split / "checkpoint.pt").startswith("resuming")
    loaded = [id(s["exp_avg"]) for s in t.gs.opt_g.state.values()]
    t.run(paths(split))
    # prepared, three warm-up steps from the resumed step on, then one capture, all after the load
    assert backend.events == [("prepare", 10), ("warmup", 10), ("warmup", 11), ("warmup", 12), ("capture", 13)]
    assert backend.captured_state == loaded  # the graph would point at the loaded optimiser state
    assert t.state.step == 20
    assert (whole / "generator.pt").read_bytes() == (split / "generator.pt").read_bytes()


@pytest.mark.parametrize("mode", ["auto", "on"])
@pytest.mark.stage
def test_a_failed_capture_falls_back_in_auto_and_stops_in_on(mnist, tmp_path, mode, caplog):
    accel.seed_everything(0, torch.device("cpu"))
    t = Trainer(parse_params({"train": TINY_TRAIN}), mnist, "x")
    graphed(t, mode, fail=True)
    if mode == "on":
        with pytest.raises(GanflowError, match="train.cuda_graph is on, but capturing the step failed: RuntimeError: operation not permitted"):
            t.run(paths(tmp_path))
        return
    t.run(paths(tmp_path))
    assert t.state.step == 20 and not t.gs.levers.graph
    assert "train.cuda_graph auto: capture failed (RuntimeError: operation not permitted" in caplog.text


def test_the_g_step_makes_no_gradient_for_d(mnist):
    t = Trainer(parse_params({"train": TINY_TRAIN}), mnist, "x")
    calls = {"D": 0, "G": 0}
    for name, net in (("D", t.gs.D), ("G", t.gs.G)):
        for p in net.parameters():
            p.register_hook(lambda g, name=name: calls.__setitem__(name, calls[name] + 1))
    t.gs.step()
    n_d, n_g = sum(1 for _ in t.gs.D.parameters()), sum(1 for _ in t.gs.G.parameters())
    assert calls == {"D": n_d, "G": n_g}  # D's weights got gradients in the D step only
    assert all(p.requires_grad for p in t.gs.D.parameters())  # and are trainable again


@pytest.mark.stage
def test_channels_last_trains_in_nhwc(mnist, tmp_path):
    t = train(mnist, tmp_path, channels_last=True, steps=10)
    conv = next(p for p in t.gs.G.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert t.state.step == 10 and all(torch.isfinite(torch.tensor(r)).all() for r in t.state.log_rows)


def test_max_seconds_stops_early_and_still_writes_every_output(mnist, tmp_path):
    accel.seed_everything(0, torch.device("cpu"))
    t = Trainer(parse_params({"train": {**TINY_TRAIN, "steps": 10**6}}), mnist, "x")
    summary = t.run(paths(tmp_path), max_seconds=0.0)
    assert t.state.step == 1 and summary["steps_run"] == 1  # the first step is always taken
    assert torch.load(tmp_path / "generator.pt", weights_only=True)["step"] == 1
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 1
    assert (tmp_path / "train_log.tsv").read_text().splitlines()[1].startswith("1\t")


@pytest.mark.parametrize("conditional, clusters", [(False, 0), (True, "auto"), (False, 3)])  # the last: self-conditioned
def test_exported_generator_matches_the_evaluated_one(mnist, conditional, clusters):
    t = Trainer(parse_params({"train": {**TINY_TRAIN, "conditional": conditional, "clusters": clusters}}), mnist, "x")
    t.gs.step()
    model, example = t.export_generator()
    assert bool(t.gs.net_cfg.n_classes) == (conditional or clusters == 3)
    conditional = bool(t.gs.net_cfg.n_classes)
    assert example.shape == (2, TINY_TRAIN["z_dim"] + conditional)
    x = torch.from_numpy(example)
    with torch.no_grad():
        out = model(x)
        G = t.gs.G_eval.eval()
        want = G(x[:, :-1], x[:, -1].long()) if conditional else G(x)
    assert out.shape == (2, 1, 28, 28) and torch.equal(out, want)
    assert not model.training and all(p.device.type == "cpu" for p in model.parameters())
    again, _ = serving_model(t.generator_dict())
    assert torch.equal(again(x), out)


@pytest.mark.stage
def test_lecam_r1_lr_decay_ema_rampup_and_top_k_resume_exactly(mnist, tmp_path):
    """LeCam's running means are loss state in the checkpoint; the decayed learning rate, the ramped
    EMA half-life, the top-k count and the lazy R1 steps are functions of the step: a run killed after
    its step-10 checkpoint and resumed equals the whole one, bit for bit."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    knobs = {"lecam": 0.1, "lr_decay": 0.5, "ema_rampup": 0.05, "topk": 0.5, "r1": 1.0, "r1_every": 3}
    mnist = mnist.subset(np.arange(64))  # an epoch of 4 steps: the top-k count falls during the run
    a = train(mnist, whole, **knobs)
    b = killed_then_resumed(mnist, split, knobs)
    assert b.resumed_step == 10 and torch.equal(a.gs.loss.lecam.ema, b.gs.loss.lecam.ema) and a.gs.loss.lecam.ema.abs().sum() > 0
    assert (whole / "generator.pt").read_bytes() == (split / "generator.pt").read_bytes()
    # constant for 10 steps, then falling linearly: the last of 20 steps runs at a tenth
    assert a.gs.opt_g.param_groups[0]["lr"] == pytest.approx(a.cfg.lr_g / 10)
    # the share of the batch that drives G falls by 1 % per epoch (an epoch: len(data) / batch steps)
    assert a.gs.keep.item() == b.gs.keep.item() == round(16 * 0.99 ** (19 * 16 // 64)) == 15
    a.gs.schedule(10**6)
    assert a.gs.keep.item() == 8  # train.topk of the batch, at most
    # the lazy R1 steps ran: without them, the same run ends elsewhere
    c = train(mnist, tmp_path / "no-r1", **{**knobs, "r1": 0.0})
    assert (whole / "generator.pt").read_bytes() != (tmp_path / "no-r1" / "generator.pt").read_bytes()
    assert not torch.equal(a.gs.D.state_dict()["head.linear.bias"], c.gs.D.state_dict()["head.linear.bias"])


@pytest.mark.stage
def test_rpgan_with_r1_r2_and_a_cosine_gamma_resumes_exactly(mnist, tmp_path):
    """The R3GAN recipe (relativistic pairing, lazy R1 and R2, γ decaying as a cosine): its weights
    are functions of the step, so a run killed after its step-10 checkpoint and resumed equals the
    whole one, bit for bit; and R2 is really applied."""
    knobs = {"loss": "rpgan", "r1": 1.0, "r2": 1.0, "r1_every": 3, "gamma_schedule": "cosine"}
    a = train(mnist, tmp_path / "whole", **knobs)
    b = killed_then_resumed(mnist, tmp_path / "split", knobs)
    assert b.resumed_step == 10
    assert (tmp_path / "whole" / "generator.pt").read_bytes() == (tmp_path / "split" / "generator.pt").read_bytes()
    r1, r2 = a.gs.loss.lazy_d_terms
    assert (r1.name, r1.on, r2.name, r2.on) == ("r1", "real", "r2", "fake")
    assert r2.weight == pytest.approx(losses.gamma_schedule(19, 20, 1.0)) and r2.weight < 0.2  # γ decayed to ~γ/10
    c = train(mnist, tmp_path / "no-r2", **{**knobs, "r2": 0.0})
    assert (tmp_path / "whole" / "generator.pt").read_bytes() != (tmp_path / "no-r2" / "generator.pt").read_bytes()
    assert [t.name for t in c.gs.loss.lazy_d_terms] == ["r1"]


@pytest.mark.stage
def test_a_bf16_run_killed_then_resumed_gives_the_same_generator(mnist, tmp_path):
    """bf16 autocast on the CPU (train.autocast: auto picks it where the CPU has native bf16; bf16 runs
    it anywhere): the step is still a pure function of the checkpoint, so a run killed after its step-10
    checkpoint and resumed equals the whole one, bit for bit, and differs from the float32 run."""
    knobs = {"autocast": "bf16", "r1": 1.0, "r1_every": 3}
    train(mnist, tmp_path / "whole", **knobs)
    b = killed_then_resumed(mnist, tmp_path / "split", knobs)
    assert b.resumed_step == 10 and b.gs.levers.bf16
    assert (tmp_path / "whole" / "generator.pt").read_bytes() == (tmp_path / "split" / "generator.pt").read_bytes()
    train(mnist, tmp_path / "fp32", **{**knobs, "autocast": "off"})
    assert (tmp_path / "whole" / "generator.pt").read_bytes() != (tmp_path / "fp32" / "generator.pt").read_bytes()


@pytest.mark.stage
def test_lazy_r1_runs_under_torch_compile(mnist):
    """torch.compile cannot differentiate twice (R1 differentiates D's input gradient): the R1 step calls
    D's view uncompiled, the D+G step the compiled one."""
    t = Trainer(parse_params({"train": {**TINY_TRAIN, "compile": True, "r1": 1.0, "r1_every": 2}}), mnist, "x")
    compiled = torch._dynamo.eval_frame.OptimizedModule
    assert isinstance(t.gs.D_aug, compiled) and not isinstance(t.gs.D_reg, compiled) and t.gs.D_reg is t.gs.D
    ran = []
    t.gs.phases = [dataclasses.replace(p, run=lambda gain, run=p.run: (ran.append(gain), run(gain))) for p in t.gs.phases]
    for i in range(2):
        t.gs.advance(i)  # the R1 step after step 2
    assert ran == [2]
    t.gs.check_finite_weights(2)


@pytest.mark.stage
def test_more_steps_start_afresh_when_the_learning_rate_decays(mnist, tmp_path):
    train(mnist, tmp_path, steps=10, lr_decay=0.5)
    assert train(mnist, tmp_path, steps=20, lr_decay=0.5).resumed_step is None  # its schedule changed
    train(mnist, tmp_path / "const", steps=10)
    assert train(mnist, tmp_path / "const", steps=20).resumed_step == 10


@pytest.mark.parametrize("knobs, same", [({}, True), ({"lr_decay": 0.5}, False), ({"gamma_schedule": "cosine"}, False)])
def test_step_k_of_a_longer_run_is_step_k_of_a_k_step_run_unless_it_depends_on_steps(mnist, knobs, same):
    """What resuming with more steps and `bench/sweep.py screen --score-at` rely on (train_state.depends_on_steps)."""
    from ganflow.train_state import depends_on_steps

    weights = []
    for steps in (6, 12):
        params = parse_params({"train": {**TINY_TRAIN, "steps": steps, "r1_every": 4, **knobs}})
        accel.seed_everything(params.seed, torch.device("cpu"))
        gs = Trainer(params, mnist, "sha-test").gs
        for i in range(6):
            gs.advance(i)
        weights.append(torch.cat([p.detach().flatten() for p in gs.G_eval.parameters()]))
    assert depends_on_steps(params.train) is not same
    assert torch.equal(*weights) is same


# -- CUDA only ------------------------------------------------------------------------------------
ARCH_LOSS = [("seed", "non-saturating", "none", {}), ("dcgan", "hinge", "spectral", {}),
             ("dcgan", "non-saturating", "batch", {}), ("dcgan", "wgan-gp", "none", {}),
             ("sngan", "hinge", "spectral", {}), ("dcgan", "hinge", "spectral", {"conditional": True}),
             ("sngan", "hinge", "spectral", {"conditional": True}),
             ("dcgan", "rpgan", "none", {"r1": 1.0, "r2": 1.0, "r1_every": 2, "gamma_schedule": "cosine"}),
             ("dcgan", "hinge", "spectral", {"augment": ["color", "translation", "cutout"]}),
             ("dcgan", "hinge", "spectral", {"channels_last": True}),
             ("dcgan", "hinge", "spectral", {"lecam": 0.1, "lr_decay": 0.5, "ema_rampup": 0.05, "topk": 0.5}),
             ("dcgan", "hinge", "spectral", {"r1": 1.0, "r1_every": 4, "d_width": 16, "conditional": True})]


def cuda_train(mnist, out, **overrides):
    overrides = {"device": "cuda", "cuda_graph": "on", **overrides}
    return train(mnist, out, **overrides)


@cuda
@pytest.mark.parametrize("arch, loss, d_norm, extra", ARCH_LOSS)
@pytest.mark.stage
def test_every_arch_loss_and_option_captures(mnist, tmp_path, arch, loss, d_norm, extra):
    t = cuda_train(mnist, tmp_path, arch=arch, loss=loss, d_norm=d_norm, ema=200.0, steps=30, **extra)
    assert t.gs.levers.graph and t.state.step == 30
    assert all(torch.isfinite(torch.tensor(r)).all() for r in t.state.log_rows)


@cuda
@pytest.mark.stage
def test_graph_and_eager_losses_agree_in_shape_over_200_steps(mnist, tmp_path):
    common = {"steps": 200, "log_every": 10, "batch_size": 64, "width": 32, "z_dim": 64}
    g = cuda_train(mnist, tmp_path / "graph", **common)
    e = cuda_train(mnist, tmp_path / "eager", cuda_graph="off", **common)
    rg, re_ = torch.tensor(g.state.log_rows)[:, 1:3], torch.tensor(e.state.log_rows)[:, 1:3]
    assert rg.shape == re_.shape == (20, 2)
    # same trend: the late means of loss_D and loss_G agree within a band well inside their spread
    assert (rg[-10:].mean(0) - re_[-10:].mean(0)).abs().max() < 0.25, (rg, re_)


@cuda
@pytest.mark.stage
def test_killed_then_resumed_graphed_run_gives_the_same_generator(mnist, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    cuda_train(mnist, whole, steps=40)
    cuda_train(mnist, split, steps=20)
    t = cuda_train(mnist, split, steps=40)
    assert t.resumed_step == 20
    assert (whole / "generator.pt").read_bytes() == (split / "generator.pt").read_bytes()
