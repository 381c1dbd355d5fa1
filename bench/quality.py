"""Quality at equal wall-clock budget: the classic implementations against ganflow, on mnist-5k.

Each entry trains for --budget seconds on the same machine, one after the other, then draws 5,000
samples that are all scored by the same code (ganflow.metrics, classifier feature space):

  (a) reference: a loop written like pytorch/examples dcgan/main.py (BCE, Adam 2e-4 β1 0.5, batch 64,
      its conv nets sized for 28×28, N(0, 0.02) init, the fake batch reused for the G step)
  (b) seed:      the original dense G + conv D, non-saturating loss, through ganflow
  (c) dcgan, sngan, wgan-gp through ganflow
  (d) default:   ganflow with the train section of params.yaml

    python bench/quality.py [--budget 180] [--only a,d] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ganflow import evaluator, metrics  # noqa: E402
from ganflow.config import load_params, parse_params  # noqa: E402
from ganflow.data import content_hash, load_source  # noqa: E402
from ganflow.io import save_grid  # noqa: E402
from ganflow.sampling import class_grid, generate  # noqa: E402
from ganflow.accel import seed_everything, select_device  # noqa: E402
from ganflow.outputs import TrainOutputs, TrainPaths  # noqa: E402
from ganflow.pixels import to_float  # noqa: E402
from ganflow.training import Trainer  # noqa: E402

N_SAMPLES = 5000


# -- (a) the reference loop, written the way pytorch/examples dcgan/main.py writes it ---------------
class RefG(nn.Module):
    def __init__(self, nz=100, ngf=64):
        super().__init__()
        self.cfg = type("cfg", (), {"z_dim": nz, "n_classes": 0})
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 7, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, 1, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def forward(self, z, y=None):
        return self.main(z[:, :, None, None])


class RefD(nn.Module):
    def __init__(self, ndf=64):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, 7, 1, 0, bias=False), nn.Sigmoid(),
        )

    def forward(self, x):
        return self.main(x).view(-1)


def weights_init(m):
    if "Conv" in type(m).__name__:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm" in type(m).__name__:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def train_reference(images: np.ndarray, budget: float, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    netG, netD = RefG().to(device), RefD().to(device)
    netG.apply(weights_init)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    data = to_float(torch.from_numpy(images).to(device))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=64, shuffle=True, drop_last=True)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        for (real,) in loader:
            b = real.size(0)
            # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
            netD.zero_grad()
            errD_real = criterion(netD(real), torch.full((b,), 1.0, device=device))
            errD_real.backward()
            fake = netG(torch.randn(b, 100, device=device))
            errD_fake = criterion(netD(fake.detach()), torch.full((b,), 0.0, device=device))
            errD_fake.backward()
            optD.step()
            # (2) Update G network: maximize log(D(G(z)))
            netG.zero_grad()
            errG = criterion(netD(fake), torch.full((b,), 1.0, device=device))
            errG.backward()
            optG.step()
            steps += 1
            if time.perf_counter() - t0 >= budget:
                break
    seconds = time.perf_counter() - t0
    return netG.eval(), steps, steps * 64 / seconds


# -- ganflow entries ------------------------------------------------------------------------------
def ganflow_entries(default_train: dict) -> dict[str, dict]:
    return {
        "b seed (original)": {"arch": "seed", "loss": "non-saturating", "d_norm": "none", "betas": [0.5, 0.999], "ema": 0.0,
                              "z_dim": 100, "augment": [], "r1": 0.0},
        "c dcgan (classic)": {"arch": "dcgan", "loss": "non-saturating", "d_norm": "batch", "betas": [0.5, 0.999],
                              "width": 64, "ema": 0.0, "conditional": False, "augment": [], "r1": 0.0},
        "c sngan": {"arch": "sngan", "loss": "hinge", "d_norm": "spectral", "betas": [0.0, 0.9], "width": 32,
                    "conditional": False, "r1": 0.0},
        "c wgan-gp": {"arch": "dcgan", "loss": "wgan-gp", "d_norm": "none", "betas": [0.0, 0.9], "lr_g": 1e-4, "lr_d": 1e-4,
                      "conditional": False, "r1": 0.0},
        "d ganflow default": {},
    }


def train_ganflow(overrides: dict, default_train: dict, ds, sha: str, budget: float, out: Path, device: str):
    train = {**default_train, **overrides, "steps": 10**9, "device": device, "eval_every": 0,
             "log_every": 100, "sample_every": 10**9, "checkpoint_every": 10**9}
    params = parse_params({"train": train})
    seed_everything(params.seed, select_device(device))
    t = Trainer(params, ds, sha)
    s = t.run(TrainOutputs(TrainPaths.under(out)), max_seconds=budget)
    return t.gs.G_eval.eval(), t.state.step, s["train_img_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=180.0, help="training seconds per entry")
    ap.add_argument("--only", default="", help="comma-separated entry letters, e.g. a,d")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    params = load_params(ROOT / "params.yaml")
    device = select_device(a.device)
    ds = load_source(params.prepare.model_copy(update={"source": "mnist-5k", "resolution": 28, "channels": 1}), "data/raw")
    sha = content_hash(ds)
    clf_path = a.out / "evaluator.pt"
    seed_everything(params.seed, torch.device("cpu"))
    clf, acc = evaluator.fit(ds.images, ds.labels, 10, params.evaluator, params.seed)
    evaluator.save(clf, clf_path, acc, sha, 28, params.evaluator, params.seed)
    real_hist = np.bincount(ds.labels, minlength=10) / len(ds.labels)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {device}; "
          f"evaluator accuracy {acc:.4f}; budget {a.budget:.0f} s per entry", flush=True)

    entries = {"a reference (pytorch/examples)": None, **ganflow_entries(params.train.model_dump())}
    wanted = set(a.only.split(",")) if a.only else None
    rows = []
    for name, overrides in entries.items():
        if wanted and name[0] not in wanted:
            continue
        if overrides is None:
            G, steps, ips = train_reference(ds.images, a.budget, device, params.seed)
        else:
            G, steps, ips = train_ganflow(overrides, params.train.model_dump(), ds, sha, a.budget, a.out, str(device))
        x = generate(G, 1, 0, N_SAMPLES, device).numpy()
        r = metrics.fidelity(x, ds.images, "classifier", clf_path, params.evaluate, device)
        r |= metrics.class_stats(evaluator.predict(clf, x), real_hist)
        slug = name.split(" ")[1]
        save_grid(class_grid(G, 1, device) if getattr(G.cfg, "n_classes", 0) else torch.from_numpy(x[:100]),
                  a.out / f"{slug}.png", nrow=10)
        rows.append({"entry": name, "steps": steps, "img_per_s": ips, **r})
        print(json.dumps(rows[-1]), flush=True)

    head = "| entry | steps | img/s | fid_classifier | is_classifier | precision | recall | coverage |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['entry']} | {r['steps']} | {r['img_per_s']:.0f} | {r['fid_classifier']:.2f} | {r['is_classifier']:.2f} "
                     f"| {r['precision_classifier']:.3f} | {r['recall_classifier']:.3f} | {r['class_coverage']}/10 |")
    table = "\n".join(lines)
    (a.out / "quality.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
