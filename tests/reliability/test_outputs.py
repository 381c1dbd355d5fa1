"""Nothing lost, nothing left behind: write failures are one line and change nothing, outputs of a
stage change together, temp files are cleaned and ignored, permissions follow the umask."""

import errno
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, stage_workspace
from ganflow import GanflowError, io


def test_a_full_disk_is_one_line_naming_the_file_and_the_target_is_kept(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    for code in (errno.ENOSPC, errno.EFBIG):
        with pytest.raises(GanflowError, match=f"{target}: cannot write \\({os.strerror(code)}\\)"):
            with io.atomic_path(target) as tmp:
                tmp.write_text("half")
                raise OSError(code, os.strerror(code))
        assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_a_score_that_is_not_finite_is_written_as_null_and_named(tmp_path, caplog):
    import json
    import math

    target = tmp_path / "eval.json"
    io.write_json(target, {"fid": math.nan, "kid": 0.5, "rows": [{"fid": math.inf}, {"fid": 1.0}]})
    assert json.loads(target.read_text()) == {"fid": None, "kid": 0.5, "rows": [{"fid": None}, {"fid": 1.0}]}
    assert f"{target}: fid, rows[0].fid not finite, written as null" in caplog.text


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        io.write_bytes(tmp_path / "f.bin", b"x")
        with io.atomic_dir(tmp_path / "d") as d:
            (d / "a").write_text("a")
    finally:
        os.umask(old)
    assert oct((tmp_path / "f.bin").stat().st_mode & 0o777) == oct(0o640)
    assert oct((tmp_path / "d").stat().st_mode & 0o777) == oct(0o750)


@pytest.mark.stage
def test_stale_temp_folders_of_a_killed_writer_are_removed_and_ignored_by_git(tmp_path):
    stale = tmp_path / ".samples.k1ll3d.tmp"
    stale.mkdir()
    (stale / "000001.png").write_bytes(b"half a run")
    with io.atomic_dir(tmp_path / "samples") as d:
        (d / "000000.png").write_bytes(b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]
    for temp in (".samples.k1ll3d.tmp", "models/.generator.pt.abc.tmp"):
        assert subprocess.run(["git", "check-ignore", "-q", temp], cwd=ROOT).returncode == 0, temp


@pytest.mark.stage
def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    """Two experiments can write one shared cache file at once: neither may delete the other's temp file
    (which once failed a queued experiment with `cannot write`). A dead writer's temp file goes."""
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        mine, gone = tmp_path / f".cache.npz.{live.pid}.abc.tmp", tmp_path / f".cache.npz.{dead.pid}.def.tmp"
        mine.write_bytes(b"being written")
        gone.write_bytes(b"half")
        io.write_bytes(tmp_path / "cache.npz", b"done")
        assert mine.read_bytes() == b"being written" and not gone.exists()
        assert (tmp_path / "cache.npz").read_bytes() == b"done"
    finally:
        live.kill()
        live.wait()


@pytest.fixture(scope="module")
def ws(tmp_path_factory, mnist):
    return stage_workspace(tmp_path_factory.mktemp("ws"), mnist, {"tracking": {"enabled": False}})


@pytest.mark.stage
def test_samples_and_grid_change_together_or_not_at_all(ws, tmp_path):
    from ganflow.nets import NetConfig, build

    G, _ = build("dcgan", NetConfig(28, 1, 16, 8))
    g = tmp_path / "g.pt"
    import torch

    torch.save({"format": "ganflow-generator-v1", "arch": "dcgan", "net": NetConfig(28, 1, 16, 8).to_dict(),
                "state_dict": G.state_dict(), "step": 1}, g)
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "000000.png").write_bytes(b"earlier sample")
    (tmp_path / "grid.png").write_bytes(b"earlier grid")
    script = ROOT / "stages" / "sample.py"
    # 10 kB per file: each 28×28 sample fits, the 302×302 grid does not (EFBIG)
    cmd = f"ulimit -f 20; exec {sys.executable} {script} --params {ws / 'params.yaml'} {g} {g} {tmp_path / 'samples'} {tmp_path / 'grid.png'}"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = errors
    assert lines[0].startswith(f"error: {tmp_path / 'grid.png'}: cannot write (File too large)"), lines[0]
    assert (tmp_path / "grid.png").read_bytes() == b"earlier grid"
    assert [p.name for p in (tmp_path / "samples").iterdir()] == ["000000.png"]
    assert (tmp_path / "samples" / "000000.png").read_bytes() == b"earlier sample"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt", "grid.png", "samples"]  # no temp left


def test_train_outputs_persist_so_a_failed_rerun_keeps_the_workspace():
    # DVC deletes a stage's non-persistent outputs before running it; train writes all of its outputs
    # atomically at its end, so persisting them keeps the workspace matching dvc.lock when it fails
    outs = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["outs"]
    for out in outs:
        name, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
        assert opts.get("persist") is True, name
