"""Generator files (models/generator.pt): loading them, and the generator as MLflow serves it."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ganflow import GanflowError, checkpoint
from ganflow.config import MAX_G_PARAMETERS
from ganflow.nets import NetConfig, build, parameter_count


MAX_PARAMETERS = MAX_G_PARAMETERS  # 1 GiB of float32 weights; train.width is checked against it too


def build_g(arch: str, net: NetConfig) -> nn.Module:
    """G alone: its D is built at width 1 and dropped (a crafted file's d_width 3000 would allocate a
    2.96 GB discriminator that nothing uses; d_width does not change G)."""
    return build(arch, replace(net, d_width=1))[0]


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """-> (generator in eval mode, the file's dict). A file whose net config is invalid, names an
    unknown architecture, asks for an absurd size (checked before anything is allocated) or whose
    weights do not fit that net is one GanflowError naming the file."""
    obj = checkpoint.load(path, checkpoint.GENERATOR_FORMAT, map_location="cpu")
    try:
        arch, net = obj["arch"], NetConfig(**obj["net"])
        size = parameter_count(arch, replace(net, d_width=1))  # G only (built on the meta device)
        if size > MAX_PARAMETERS:
            raise ValueError(f"its net ({arch}, width {net.width}) would have {size:,} parameters, over {MAX_PARAMETERS:,}")
        G = build_g(arch, net)
        G.load_state_dict(obj["state_dict"])
        G.class_shares = checked_shares(obj.get("class_shares"), net.n_classes)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GanflowError(f"{path}: not a usable generator ({why.strip(chr(34))})") from None
    return G.to(device).eval(), obj


def checked_shares(value: Any, n_classes: int) -> list[float] | None:
    """A self-conditioned generator's cluster shares (generator.pt's class_shares), checked."""
    if value is None:
        return None
    shares = [float(v) for v in value]
    if len(shares) != n_classes or min(shares) < 0 or not 0 < sum(shares) < math.inf:
        raise ValueError(f"class_shares holds {len(shares)} shares for {n_classes} classes, or a negative, zero or infinite total")
    return shares


class SingleInput(nn.Module):
    """The generator behind one tensor: N×z_dim latents, plus for a class-conditional generator a
    last column holding the class index. Output: N×C×H×W in [-1, 1]."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G

    def forward(self, zy: torch.Tensor) -> torch.Tensor:
        if self.G.cfg.n_classes:
            return self.G(zy[:, :-1], zy[:, -1].long())
        return self.G(zy)


def serving_model(generator: dict[str, Any]) -> tuple[nn.Module, np.ndarray]:
    """A generator file's dict (generator.pt) -> (CPU model in eval mode behind one input, an input example)."""
    net = NetConfig(**generator["net"])
    G = build_g(generator["arch"], net)
    G.load_state_dict({k: v.cpu() for k, v in generator["state_dict"].items()})
    example = np.random.default_rng(0).standard_normal((2, net.z_dim), dtype=np.float32)
    if net.n_classes:
        example = np.concatenate([example, np.array([[0.0], [1.0]], dtype=np.float32)], axis=1)
    return SingleInput(G).eval(), example


PT2_FILE = "model.pt2"  # what mlflow.pytorch.log_model writes in its default (torch.export) format


def load_registered(uri: str) -> tuple[nn.Module, dict[str, Any]]:
    """A model from the MLflow store (models:/…, runs:/…) -> (the exported generator, its metadata).

    Loaded only in a form that cannot execute code: the torch.export archive that ganflow logs,
    checked record by record to hold nothing but JSON and tensors (MLflow's own check, which loads each
    record with weights_only=True) before torch.export reads it. A pickled module
    (serialization_format="pickle"), a model that ships code (code_paths) or any other flavor is refused
    without being read: mlflow.pytorch.load_model would unpickle it, import a module named in it, and
    put its code on sys.path."""
    import os
    import tempfile

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line of output, not a bar
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        from mlflow.pytorch import _validate_pt2_archive_is_pickle_free as check_pickle_free
    except ImportError:  # fail closed: this MLflow cannot tell a safe archive from a payload
        raise GanflowError(f"--model {uri}: this MLflow ({mlflow.__version__}) cannot verify a torch.export archive; "
                           "upgrade it (>= 3.17) or sample from a generator file") from None

    def refuse(why: str) -> GanflowError:
        return GanflowError(f"--model {uri}: {why}; refused (only ganflow's torch.export format is loaded)")

    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as err:
        why = " ".join(str(err).split())[:300] or type(err).__name__
        raise GanflowError(f"--model {uri}: not found in the tracking store ({why})") from None
    conf = (info.flavors or {}).get("pytorch")
    if not isinstance(conf, dict):
        raise refuse(f"not a PyTorch model (flavors: {', '.join(info.flavors or {}) or 'none'})")
    if conf.get("code"):
        raise refuse("it ships code (code_paths)")
    with tempfile.TemporaryDirectory(prefix="ganflow-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)).resolve()
        except (MlflowException, OSError) as err:
            raise GanflowError(f"--model {uri}: cannot download it ({type(err).__name__})") from None
        data = (local / str(conf.get("model_data", ""))).resolve()
        pt2 = data / PT2_FILE
        if not data.is_relative_to(local) or not pt2.is_file():
            found = "a pickled module (serialization_format='pickle')" if (data / "model.pth").exists() else "no model.pt2"
            raise refuse(f"it holds {found}")
        try:
            check_pickle_free(str(pt2))
            model = torch.export.load(str(pt2)).module()
        except Exception as err:  # MlflowException: a record that is not JSON or plain tensors
            raise refuse(f"its archive is not plain graph and tensors ({' '.join(str(err).split())[:200]})") from None
    return model, dict(info.metadata or {})
