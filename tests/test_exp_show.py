"""What `dvc exp show` prints on a real (test-sized) DVC project: which columns, and how many."""

import csv
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, dvc, make_project, sh

# The README's compare recipe (docs/team.md): the changed params, the headline scores, no hashes
RECIPE = ["exp", "show", "--only-changed", "--drop", ".*/|samples$|Created|.*_std_|protocol$",
          "--keep", "fid_classifier|fid_low|fid_high|precision_classifier|recall_classifier|n_samples",
          "--sort-by", "fid_classifier", "--csv"]


def columns(root: Path, env: dict, *args: str) -> list[str]:
    out = dvc(root, env, *args).stdout
    return next(csv.reader(io.StringIO(out)))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp_show") / "proj"
    env = make_project(root, {"evaluate": {"bootstrap": 20}})
    dvc(root, env, "repro")
    sh("git", "add", "-A", cwd=root, env=env)
    sh("git", "commit", "-qm", "baseline", cwd=root, env=env)
    dvc(root, env, "exp", "run", "-n", "lr-g", "-S", "train.lr_g=0.0008")
    return root, env


@pytest.mark.slow
def test_protocol_detail_is_a_file_not_metric_columns(project):
    root, env = project
    head = columns(root, env, "exp", "show", "--csv")
    metrics = {c for c in head if c in json.loads((root / "metrics/eval.json").read_text())}
    assert "protocol" in head and not [c for c in head if c.startswith("protocol_detail")]
    assert "fid_classifier" in metrics and "protocol_detail" not in json.loads((root / "metrics/eval.json").read_text())
    proto = json.loads((root / "metrics/protocol.json").read_text())
    assert proto["protocol"] == json.loads((root / "metrics/eval.json").read_text())["protocol"]
    assert proto["protocol_detail"]["n_samples"] == 128
    # what plain `dvc exp show` is made of: CSV's 5 row-label columns (the table shows 2: Experiment,
    # Created), every metric, every key of params.yaml, every non-param dependency of every stage
    params = sum(1 for _ in _flat(yaml.safe_load((root / "params.yaml").read_text())))
    deps = {d for s in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values() for d in s.get("deps", [])}
    numeric = {k for f in ("eval.json", "evaluator.json")
               for k, v in json.loads((root / "metrics" / f).read_text()).items() if not isinstance(v, dict)}
    print(f"plain dvc exp show: {len(head) - 3} table columns = 2 + {len(numeric)} metrics + {params} params + {len(deps)} deps")
    assert len(head) == 5 + len(numeric) + params + len(deps)
    # the code is one column per stage (closures/<stage>.txt), not one per module: 112 on the default
    code = [c for c in head if c.endswith(".py") or c.startswith(("src/", "stages"))]
    assert code in (["src/ganflow", "stages"], ["stages", "src/ganflow"], [])  # the closures stage's two folders at most
    assert len([c for c in head if c.startswith("closures/")]) == len(yaml.safe_load((root / "dvc.yaml").read_text())["stages"]) - 1


@pytest.mark.slow
def test_the_readme_recipe_shows_the_changed_param_and_the_scores_in_few_columns(project):
    root, env = project
    head = columns(root, env, *RECIPE)
    print("recipe:", head)
    assert "train.lr_g" in head  # the changed param
    assert {"fid_classifier", "fid_low_classifier", "fid_high_classifier", "precision_classifier", "n_samples"} <= set(head)
    assert not [c for c in head if "/" in c or c.startswith("protocol")]
    assert len(head) - 3 <= 40  # the table merges the CSV's Experiment, rev, typ, parent into one column


def test_the_quick_preset_is_valid_params(tmp_path):
    """`make quick`'s -S overrides, applied to params.yaml by DVC's own code, pass `ganflow check`."""
    from dvc.utils.hydra import apply_overrides

    from ganflow.config import load_params

    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    quick = re.search(r"^QUICK := (.*)$", text, re.M).group(1).split()
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(path, quick)  # what `dvc exp run -S` does; an unknown key raises here
    params = load_params(path)
    assert params.train.steps <= 500 and params.sample.n <= 1000 and params.tracking.registered_model is None
    assert params.evaluate.inception == "off"


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield prefix + k
