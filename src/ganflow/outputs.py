"""The files the train stage writes, each atomically, owned by one object."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ganflow import checkpoint
from ganflow.io import save_grid, write_bytes


@dataclass
class TrainPaths:
    """The train stage's outputs, in the order its command line takes them (after its two inputs, the
    prepared data and the evaluator): the one list the stage's argv, dvc.yaml's cmd and the tests follow."""

    generator: Path  # the evaluated G of the last step
    generator_best: Path | None  # the G with the best selection score during training (None: not written)
    checkpoint: Path  # everything needed to resume
    log_tsv: Path  # losses, one row per log interval
    scores_tsv: Path | None  # step, selection score of each check during training (None: not written)
    grid: Path  # fixed-noise grid of the latest G

    @classmethod
    def under(cls, folder: str | Path) -> TrainPaths:
        """Every output in `folder`, under the file name dvc.yaml gives it."""
        return cls(*(Path(folder) / name for name in TRAIN_FILE_NAMES))

    def argv(self) -> list[str]:
        return [str(getattr(self, f.name)) for f in fields(self)]

    @classmethod
    def add_arguments(cls, ap: argparse.ArgumentParser) -> None:
        for f in fields(cls):
            ap.add_argument(f.name, type=Path)

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> TrainPaths:
        return cls(*(getattr(a, f.name) for f in fields(cls)))


TRAIN_FILE_NAMES = ("generator.pt", "generator_best.pt", "checkpoint.pt", "train_log.tsv", "fid_curve.tsv",
                    "train_grid.png")


class TrainOutputs:
    def __init__(self, paths: TrainPaths):
        self.paths = paths

    def log(self, rows: list[list[float]], columns: tuple[str, ...]) -> None:
        write_tsv(self.paths.log_tsv, rows, columns)

    def scores(self, rows: list[list[float]], metric: str) -> None:
        if self.paths.scores_tsv:
            write_tsv(self.paths.scores_tsv, rows, ("step", metric))

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        """Write the grid (10 per row: a conditional G gets a row per class); return it as C×H×W."""
        return save_grid(images, self.paths.grid, nrow=10)

    def checkpoint(self, state: dict[str, Any]) -> None:
        checkpoint.save(state, self.paths.checkpoint)

    def generators(self, last: dict[str, Any], best: dict[str, Any]) -> None:
        checkpoint.save(last, self.paths.generator)
        if self.paths.generator_best:
            checkpoint.save(best, self.paths.generator_best)


def write_tsv(path: Path, rows: list[list[float]], columns: tuple[str, ...]) -> None:
    lines = ["\t".join(columns)]
    lines += ["\t".join([str(int(r[0]))] + [f"{v:.6g}" for v in r[1:]]) for r in rows]
    write_bytes(path, ("\n".join(lines) + "\n").encode())
