"""Team-facing pieces that need no DVC run: the champion alias rule, the `ganflow` commands."""

import pytest
from mlflow import MlflowClient

from conftest import ROOT
from ganflow import tracking
from ganflow.tracking import registry
from ganflow.cli import main
from ganflow.config import TrackingConfig

MODEL = "ganflow-generator"


def version_for_run(fid: float, n: int) -> tuple[tracking.Tracker, str]:
    """A finished run with a registered model version (a stand-in source: the rule reads only tags)."""
    t = tracking.Tracker(TrackingConfig())
    t.start(name=f"fid {fid}")
    client = MlflowClient()
    try:
        client.create_registered_model(MODEL)
    except Exception:
        pass
    client.create_model_version(MODEL, source=f"runs:/{t.run_id}/generator", run_id=t.run_id)
    t.end()
    return t, t.run_id


def test_champion_moves_only_on_a_better_fid_at_equal_protocol():
    scores = [(10.0, 1000, "champion"), (12.0, 1000, "candidate"), (8.0, 1000, "champion"), (5.0, 500, "candidate")]
    runs = []
    for fid, n, want in scores:
        t, run_id = version_for_run(fid, n)
        runs.append(run_id)
        status = registry.promote(t, run_id, {"fid_classifier": fid, "n_samples": n}, "fid_classifier", f"p{n}")
        assert status == want, (fid, n, status)
    client = MlflowClient()
    champ = client.get_model_version_by_alias(MODEL, tracking.CHAMPION)
    assert champ.run_id == runs[2] and champ.tags["fid_classifier"] == "8.0"
    first = client.search_model_versions(f"name='{MODEL}' and run_id='{runs[0]}'")[0]
    assert first.tags[tracking.TAG_STATUS] == "candidate"  # the old champion, demoted


def test_runs_lists_names_params_and_scores(tmp_path, capsys):
    t = tracking.Tracker(TrackingConfig())
    t.start(name="lr_g=0.0008")
    t.log_params({"train.arch": "dcgan", "train.lr_g": 0.0008})
    t.log_metrics({"fid_classifier": 12.34567, "n_samples": 5000})
    t.end()
    main(["runs", "--params", str(ROOT / "params.yaml")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["run", "id", "name"]
    assert t.run_id[:12] in out[1] and "lr_g=0.0008" in out[1] and "dcgan" in out[1] and "12.35" in out[1]
    assert "fid_simclr" not in out[0]  # a space no listed run was scored in gets no column


def test_runs_shows_the_scores_of_unlabelled_runs_in_their_own_space(tmp_path, capsys):
    """A run scored only in the label-free space (an image folder without classes) shows its scores too."""
    t = tracking.Tracker(TrackingConfig())
    t.start(name="faces")
    t.log_metrics({"fid_simclr": 7.891, "precision_simclr": 0.612, "n_samples": 5000})
    t.end()
    main(["runs", "--params", str(ROOT / "params.yaml")])
    head, row = capsys.readouterr().out.splitlines()[:2]
    assert head.split()[-3:] == ["fid_simclr", "precision_simclr", "n_samples"] and "fid_classifier" not in head
    assert row.split()[-3:] == ["7.891", "0.612", "5000"]


@pytest.mark.stage
@pytest.mark.parametrize("self_conditioned", [False, True])  # True: unlabelled, 4 k-means clusters drawn in their shares
def test_sample_from_a_generator_file_and_from_a_registered_model(tmp_path, mnist, self_conditioned, capsys):
    import torch
    from PIL import Image

    from ganflow.config import parse_params
    from ganflow.data import ImageSet
    from ganflow.training import Trainer
    from conftest import paths

    train = {"steps": 1, "batch_size": 16, "width": 8, "z_dim": 16, "device": "cpu", "clusters": 4 if self_conditioned else 0}
    data = ImageSet(mnist.images, None, []) if self_conditioned else mnist
    trainer = Trainer(parse_params({"train": train}), data, "x")
    trainer.run(paths(tmp_path))
    main(["sample", "--model", str(tmp_path / "generator.pt"), "-n", "20", "--out", str(tmp_path / "a.png")])
    t = tracking.Tracker(TrackingConfig())
    t.start()
    model, example = trainer.export_generator()
    shares = {"class_shares": trainer.gs.class_shares} if self_conditioned else {}  # as the train stage logs them
    registry.log_model(t, model, example, metadata={"z_dim": 16, "n_classes": trainer.net_cfg.n_classes, **shares})  # conditional: auto
    assert trainer.net_cfg.n_classes == (4 if self_conditioned else 10)
    t.end()
    version = MlflowClient().search_model_versions(f"name='{MODEL}'")[0].version
    main(["sample", "--model", f"models:/{MODEL}/{version}", "-n", "20", "--out", str(tmp_path / "b.png")])
    import numpy as np

    a, b = (torch.from_numpy(np.array(Image.open(tmp_path / f))) for f in ("a.png", "b.png"))
    assert a.shape == b.shape == (4 * 30 + 2, 5 * 30 + 2, 3)  # 4 full rows of 5 (make_grid draws RGB)
    main(["sample", "--model", str(tmp_path / "generator.pt"), "-n", "64", "--out", str(tmp_path / "c.png")])
    assert np.array(Image.open(tmp_path / "c.png")).shape == (8 * 30 + 2, 8 * 30 + 2, 3)  # 8 × 8, no partial row
    assert (a.float() - b.float()).abs().max() <= 1  # the same images, through the exported graph
    with pytest.raises(SystemExit):
        main(["sample", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "d.png")])
    if self_conditioned:  # a hand-edited model's metadata (shares that do not fit its clusters): one line naming the model
        t = tracking.Tracker(TrackingConfig())
        t.start()
        for meta, why in (({"n_classes": 4, "class_shares": [0.5, 0.5]}, "class_shares holds 2 shares for 4 classes"),
                          ({"n_classes": 4, "class_shares": ["inf", 1, 1, 1]}, "class_shares holds 4 shares for 4 classes, or"),
                          ({"n_classes": "four"}, "invalid literal for int()")):
            registry.log_model(t, model, example, metadata={"z_dim": 16, **meta})
            bad = max(int(v.version) for v in MlflowClient().search_model_versions(f"name='{MODEL}'"))
            capsys.readouterr()
            with pytest.raises(SystemExit):
                main(["sample", "--model", f"models:/{MODEL}/{bad}", "--out", str(tmp_path / "e.png")])
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"error: --model models:/{MODEL}/{bad}: unusable metadata ({why}") and "\n" not in err
        t.end()


def test_ui_link_opens_the_model_training_layout(capsys):
    t = tracking.Tracker(TrackingConfig())
    t.start()
    t.end()
    exp_id = MlflowClient().get_run(t.run_id).info.experiment_id
    main(["ui", "--params", str(ROOT / "params.yaml"), "--print-url", "--port", "5123"])
    runs, registry = capsys.readouterr().out.strip().splitlines()
    assert runs == f"http://127.0.0.1:5123/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    assert registry == "http://127.0.0.1:5123/#/models/ganflow-generator?workflowType=machine_learning"


@pytest.mark.stage
def test_a_reader_that_leaves_early_gets_no_traceback():
    """`ganflow deps … | head -1`: the pipe closes before the command writes; it stops quietly (status 141, as
    a shell reports SIGPIPE), not with a BrokenPipeError traceback."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "ganflow.cli", "deps", "stages/train.py"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first line
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err, err
