"""DDP on CPU: train.devices 2 makes the train stage run itself under torchrun with gloo."""

from pathlib import Path

import mlflow
import pytest

from conftest import ROOT, run_stage, stage_workspace
from ganflow.outputs import TRAIN_FILE_NAMES

pytestmark = [pytest.mark.stage, pytest.mark.slow]
INJECT = Path(__file__).parent / "reliability" / "inject"


@pytest.mark.parametrize("extra", [{}, {"conditional": False, "clusters": 3}])  # the second: clusters fitted on rank 0
def test_two_processes_rank0_writes_and_results_repeat(tmp_path, mnist, extra):
    stage_workspace(tmp_path, mnist, {"train": {"devices": 2, "eval_every": 10, "eval_samples": 64, **extra}})
    db = tmp_path / "mlflow.db"

    outputs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        out.mkdir()
        r = run_stage("train", "--params", str(tmp_path / "params.yaml"), str(tmp_path / "prepared"),
                      str(tmp_path / "evaluator.pt"), *[str(out / n) for n in TRAIN_FILE_NAMES],
                      env={"PYTHONPATH": f"{INJECT}:{ROOT / 'src'}", "GANFLOW_TEST_WRITE_LOG": str(out / "writes.log"),
                           "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, "\n".join(ln for ln in r.stderr.splitlines() if "[rank0]" in ln or ln.startswith("error"))[-3000:]
        writers = {line.split()[0] for line in (out / "writes.log").read_text().splitlines()}
        assert writers == {"0"}, writers  # rank 0 alone wrote outputs
        outputs.append((out / "generator.pt").read_bytes())
        assert (out / "train_log.tsv").read_text().count("\n") == 1 + 20 // 5
    assert outputs[0] == outputs[1]  # deterministic for a fixed world size
    import torch

    shares = torch.load(tmp_path / "a" / "generator.pt", weights_only=True).get("class_shares")
    assert (shares is not None and len(shares) == 3) == bool(extra)

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # one run per training, from rank 0
    assert runs[0].data.params["train.devices"] == "2"
