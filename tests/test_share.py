"""Sharing results as a team does, with real git and DVC: Alice runs the pipeline and an experiment and
pushes them (git to a shared repository, cached outputs to the shipped default DVC remote `storage`); Bob
clones elsewhere, pulls, and finds nothing to re-run."""

import json
import re

import pytest
import yaml

from conftest import dvc, make_project, sh

pytestmark = [pytest.mark.dvc, pytest.mark.slow]


def _up_to_date(root, env) -> bool:
    return "Data and pipelines are up to date" in dvc(root, env, "repro").stdout


def test_fresh_clone_pulls_results_and_experiments(tmp_path):
    alice, bob, team_git = tmp_path / "alice", tmp_path / "bob", tmp_path / "team.git"
    storage = tmp_path / "ganflow-storage"  # .dvc/config's url ~/ganflow-storage, with both on one machine
    env = make_project(alice) | {"HOME": str(tmp_path)}
    # wide enough that dvc's table never wraps the path (pytest-xdist's temp paths are longer)
    listed = dvc(alice, env | {"COLUMNS": "1000"}, "remote", "list").stdout.split()
    assert listed == ["storage", str(storage), "(default)"]

    # the first run needs no remote (there is none yet on disk)
    dvc(alice, env, "repro")
    assert not storage.exists()
    sh("git", "add", "-A", cwd=alice, env=env)
    sh("git", "commit", "-qm", "first run: dvc.lock and metrics", cwd=alice, env=env)
    branch = sh("git", "rev-parse", "--abbrev-ref", "HEAD", cwd=alice, env=env).stdout.strip()
    sh("git", "init", "-q", "--bare", str(team_git), cwd=tmp_path, env=env)
    sh("git", "remote", "add", "origin", str(team_git), cwd=alice, env=env)
    sh("git", "push", "-q", "origin", branch, cwd=alice, env=env)
    dvc(alice, env, "push")
    assert (storage / "files" / "md5").is_dir()

    # an experiment that changes cached outputs (samples/), shared through git + the DVC remote
    dvc(alice, env, "exp", "run", "-n", "small-sample", "-S", "sample.n=64")
    pushed = dvc(alice, env, "exp", "push", "origin", "small-sample")
    assert "Pushed experiment small-sample" in pushed.stdout, pushed.stdout
    assert re.search(r"\d+ files? uploaded", pushed.stdout), pushed.stdout  # its outputs, not only the git ref
    # ... to the remote this clone names: DVC reads the experiment commit's .dvc/config from git, where a
    # relative url would resolve against the tree's root (`/ganflow-storage`), not against the clone
    samples_dir = next(o["md5"] for o in yaml.safe_load((alice / "dvc.lock").read_text())["stages"]["sample"]["outs"]
                       if o["path"] == "samples")
    assert (storage / "files" / "md5" / samples_dir[:2] / samples_dir[2:]).is_file()

    # Bob: a fresh clone in another folder finds the same remote, pulls, and has nothing to re-run
    sh("git", "clone", "-q", "--branch", branch, str(team_git), str(bob), cwd=tmp_path, env=env)
    assert not (bob / "models" / "generator.pt").exists()
    dvc(bob, env, "pull")
    assert (bob / "models" / "generator.pt").read_bytes() == (alice / "models" / "generator.pt").read_bytes()
    assert len(list((bob / "samples").glob("*.png"))) == 128
    assert _up_to_date(bob, env)
    shown = json.loads(dvc(bob, env, "metrics", "show", "--json").stdout)
    assert shown[""]["data"]["metrics/eval.json"]["data"]["n_samples"] == 128

    # ... and Alice's experiment, with its outputs
    dvc(bob, env, "exp", "pull", "origin", "small-sample")
    assert "small-sample" in dvc(bob, env, "exp", "list", "--name-only").stdout
    dvc(bob, env, "exp", "apply", "small-sample")
    assert len(list((bob / "samples").glob("*.png"))) == 64
    assert json.loads((bob / "metrics" / "eval.json").read_text())["n_samples"] == 64
    assert _up_to_date(bob, env)
