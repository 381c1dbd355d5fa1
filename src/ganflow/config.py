"""Typed params: params.yaml is parsed once, here, into frozen pydantic models.

Every key has a default and a comment; every check lives here, so a bad value
stops a stage before it does any work, with one line naming the key.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ganflow import GanflowError

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]


class ConfigError(GanflowError):
    pass


class _Section(BaseModel):
    # strict: "0.1" is not a float, 1 is not a bool; extra keys are errors (typos never pass silently)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _registered(registry_module: str, registry_name: str):
    """A field validator that checks a name against one of the registries."""

    def check(cls, v: str) -> str:
        import importlib

        registry = getattr(importlib.import_module(registry_module), registry_name)
        if v not in registry:
            raise ValueError(f"must be one of {', '.join(registry.names())}")
        return v

    return check


class PrepareConfig(_Section):
    source: str = "mnist-5k"  # mnist-5k | mnist | fashion-mnist | cifar10 | folder
    folder: str | None = None  # image folder when source is folder; class sub-folders become labels
    resolution: Literal[28, 32, 64] = 28  # output side in pixels (resize + center crop)
    channels: Literal[1, 3] = 1  # 1 = grayscale, 3 = RGB

    _source = field_validator("source")(_registered("ganflow.data", "SOURCES"))

    @model_validator(mode="after")
    def _folder_needed(self):
        if self.source == "folder" and not self.folder:
            raise ValueError("prepare.folder must name an image folder when prepare.source is folder")
        return self


class EvaluatorConfig(_Section):
    epochs: PosInt = 6  # passes over the training split
    batch_size: PosInt = 128
    lr: PosFloat = 0.002  # Adam learning rate
    holdout: Annotated[float, Field(gt=0, lt=1)] = 0.1  # fraction held out to measure accuracy
    width: PosInt = 32  # channels of the first conv layer


class TrainConfig(_Section):
    arch: str = "dcgan"  # registry name: seed | dcgan | sngan
    loss: str = "hinge"  # registry name: non-saturating | hinge
    steps: PosInt = 4000  # optimisation steps of D and G
    batch_size: PosInt = 64
    lr_g: PosFloat = 0.0004  # Adam learning rate of G
    lr_d: PosFloat = 0.0004  # Adam learning rate of D
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = [0.0, 0.9]
    z_dim: PosInt = 64  # latent size
    width: PosInt = 32  # base channel width of G and D (arch seed keeps its fixed 128-unit layers)
    d_norm: Literal["spectral", "batch", "none"] = "spectral"  # D's normalisation (sngan: always spectral; wgan-gp wants none)
    conditional: bool = False  # class-conditional G (conditional BN) and D (projection); needs labelled data
    ema: Annotated[float, Field(ge=0)] = 5000.0  # half-life of G's moving average, in images (0: off); the EMA G is saved
    augment: list[str] = []  # DiffAugment policies applied to all D inputs: color, translation, cutout
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: CUDA, then MPS, then CPU
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = 1  # processes (DDP via torchrun); auto: one per CUDA device
    channels_last: bool = False  # NHWC memory layout for both nets (a GPU speed lever)
    compile: bool = False  # torch.compile G and D (a speed lever; the first steps pay for compilation)
    cuda_graph: Literal["auto", "on", "off"] = "auto"  # whole D+G step as one CUDA graph: auto (when it can) | on | off
    log_every: PosInt = 20  # steps between loss logs (TSV + MLflow)
    sample_every: PosInt = 200  # steps between fixed-noise grids
    checkpoint_every: PosInt = 100  # steps between training checkpoints
    eval_every: Annotated[int, Field(ge=0)] = 500  # steps between classifier-FID checks that pick the best G (0: off)
    eval_samples: PosInt = 1000  # samples per check

    _arch = field_validator("arch")(_registered("ganflow.nets", "ARCHS"))
    _loss = field_validator("loss")(_registered("ganflow.losses", "LOSSES"))

    @model_validator(mode="after")
    def _cuda_graph_possible(self):
        why = ("train.device is " + self.device if self.device in ("cpu", "mps") else
               "train.compile is on" if self.compile else
               "train.devices is not 1 (DDP runs eagerly)" if self.devices != 1 else None)
        if self.cuda_graph == "on" and why:
            raise ValueError(f"train.cuda_graph is on, but {why}: use auto or off")
        return self

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: list[str]) -> list[str]:
        from ganflow.augment import AUGMENTS

        for name in v:
            if name not in AUGMENTS:
                raise ValueError(f"has unknown policy {name!r}; must be among {', '.join(AUGMENTS.names())}")
        return v


class SampleConfig(_Section):
    n: PosInt = 5000  # images written to samples/
    seed: Annotated[int, Field(ge=0)] = 1  # image i is a function of (seed, i) only
    batch_size: PosInt = 512  # images generated at a time (rounded to a multiple of 64)
    classes: list[Annotated[int, Field(ge=0)]] | None = None  # conditional G: classes to draw, cycling (null: all)
    checkpoint: Literal["last", "best"] = "last"  # sample the last generator, or the best by FID during training
    workers: PosInt = 2  # threads that encode PNGs


class EvaluateConfig(_Section):
    inception: Literal["auto", "on", "off"] = "auto"  # auto: Inception metrics when weights can be had
    inception_weights: str | None = None  # local path to torch-fidelity's Inception-v3 weights
    batch_size: PosInt = 250  # torch-fidelity batch size
    kid_subset_size: PosInt = 1000  # clamped to the number of samples
    feature_extractor_internal_dtype: Literal["float32", "float64"] | None = None  # Inception's internal dtype (null: float32)


class TrackingConfig(_Section):
    enabled: bool = True  # false turns MLflow off entirely
    uri: str | None = None  # null -> sqlite:///<project root>/mlflow.db; MLFLOW_TRACKING_URI overrides
    experiment: Annotated[str, Field(min_length=1)] = "ganflow"
    registered_model: str | None = "ganflow-generator"  # null: log the generator without registering it
    fallback_to_local: bool = False  # true: an unreachable tracking.uri falls back to the local sqlite store


class Params(_Section):
    seed: Annotated[int, Field(ge=0)] = 0  # global seed; every RNG derives from it
    prepare: PrepareConfig = PrepareConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, prefix + name + ".")
    return keys


def _one_line(err: ValidationError, source: str) -> str:
    """The first validation error as `params.yaml: <key> <problem> (got <value>)`."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, _known_keys(Params), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        msg = f"unknown key {key}{hint}"
    else:
        text = e["msg"].removeprefix("Value error, ")
        text = text.replace("Input should be", "must be").replace("Input", "value")
        if key and text.startswith(key + "."):  # a section-level check names its own key
            msg = text
        else:
            msg = f"{key} {text[0].lower()}{text[1:]} (got {e['input']!r})"
    more = len(err.errors()) - 1
    return f"{source}: {msg}" + (f" [and {more} more error(s)]" if more else "")


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
    """YAML 1.2 booleans, as DVC reads params.yaml: only true/false are booleans; on/off/yes/no stay
    strings (PyYAML's 1.1 rules would turn `inception: off` into False once DVC rewrites the file)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_params(raw, str(path))


def flatten(params: BaseModel) -> dict[str, Any]:
    """Params as flat dot keys (`train.lr_g`), the form MLflow and DVC show."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(params.model_dump(), "")
    return out
