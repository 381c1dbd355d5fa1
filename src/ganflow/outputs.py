"""The files the train stage writes, each atomically, owned by one object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ganflow import checkpoint
from ganflow.io import save_grid, write_bytes


@dataclass
class TrainPaths:
    generator: Path  # the evaluated G of the last step
    checkpoint: Path  # everything needed to resume
    log_tsv: Path  # losses, one row per log interval
    grid: Path  # fixed-noise grid of the latest G
    generator_best: Path | None = None  # the G with the best selection score during training
    scores_tsv: Path | None = None  # step, selection score of each check during training


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
