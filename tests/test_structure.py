"""The code's shape: each stage's code dep (closures/<stage>.txt) is its import closure, imports point one
way, and the checkpoint's code hash comes from the same closure."""

from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_TRAIN, call_stage
from ganflow import deps, training
from ganflow.config import parse_params


def stage_scripts() -> dict[str, Path]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        script = next(w for w in stage["cmd"].split() if w.startswith("stages/") and w.endswith(".py"))
        out[name] = ROOT / script
    return out


def test_each_stage_depends_on_its_import_closure_through_the_closures_stage(tmp_path, monkeypatch):
    """Every stage's code dep is closures/<stage>.txt, the closures stage writes each as the sha256 of
    exactly the files of the script's import closure, and that stage's deps hold every such file."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    producer = stages.pop("closures")
    listed = [w for w in producer["cmd"].split() if w.startswith("stages/") and w != "stages/closures.py"]
    assert sorted(listed) == sorted(f"stages/{name}.py" for name in stages)
    assert [next(iter(o)) for o in producer["outs"]] == [f"closures/{Path(s).stem}.txt" for s in listed]
    monkeypatch.chdir(ROOT)
    run = call_stage("closures", str(tmp_path), *listed)
    assert run.returncode == 0, run.stderr
    for name, stage in stages.items():
        code = [d for d in stage["deps"] if d.endswith(".py") or d.startswith(("src/", "stages", "closures/"))]
        assert code == [f"closures/{name}.txt"], (name, code)  # no module listed by hand
        closure = {p.relative_to(ROOT).as_posix() for p in deps.closure(ROOT / "stages" / f"{name}.py")}
        lines = (tmp_path / f"{name}.txt").read_text().splitlines()
        assert {line.split("  ", 1)[1] for line in lines} == closure, name
        assert all(any(f == d or f.startswith(d + "/") for d in producer["deps"]) for f in closure), name


def test_closure_follows_lazy_imports_packages_and_discovery_but_not_type_checking(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ganflow.config import Params\n"
        "def f():\n    from ganflow.nets import build\n"
    )
    names = {p.relative_to(deps.SRC_DIR).as_posix() for p in deps.closure(script) if p != script.resolve()}
    # the nets registry discovers its modules, so every architecture is a dependency
    assert {"ganflow/__init__.py", "ganflow/nets/__init__.py", "ganflow/nets/dcgan.py", "ganflow/nets/sngan.py",
            "ganflow/nets/seed.py", "ganflow/registry.py"} <= names
    assert "ganflow/config.py" not in names  # a type-only import runs nothing


def test_no_import_cycles_not_even_inside_functions():
    graph = deps.import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "ganflow.training" in graph and "ganflow.nets.dcgan" in graph  # the graph was really built


def test_library_modules_do_not_import_the_stage_scripts_or_read_argv():
    for path in deps.PACKAGE_DIR.rglob("*.py"):
        text = path.read_text()
        assert "sys.argv" not in text or path.name in ("cli.py", "stage.py", "distributed.py"), path


def test_code_hash_covers_the_closure_and_changes_with_any_file_in_it(tmp_path, mnist):
    t = training.Trainer(parse_params({"train": TINY_TRAIN}), mnist, "x")
    assert t.fingerprint["code"] == deps.code_hash(training.__file__)
    closure = {p.name for p in deps.closure(training.__file__)}
    assert {"io.py", "pixels.py", "accel.py", "losses.py", "dcgan.py"} <= closure  # the old hand list missed some
    script = tmp_path / "train_like.py"
    script.write_text("import ganflow.training\n")
    before = deps.code_hash(script)
    assert before != deps.code_hash(training.__file__)
    script.write_text("import ganflow.training  # edited\n")
    assert deps.code_hash(script) != before


@pytest.mark.stage
def test_every_stage_runs_the_ganflow_of_its_own_checkout(tmp_path):
    """`dvc exp run --queue` runs stages in a copy of the project; an editable install would import the
    workspace's src/ instead, code that dvc.lock never hashed for that experiment (and that may be
    edited meanwhile). Every stage puts its own checkout's src/ first."""
    import shutil
    import subprocess
    import sys

    for name in ("src", "stages"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    init = tmp_path / "src" / "ganflow" / "__init__.py"
    init.write_text(init.read_text() + "\nprint('ganflow from the copy')\n")
    for script in stage_scripts().values():
        out = subprocess.run([sys.executable, f"stages/{script.name}", "--help"], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith("ganflow from the copy"), (script.name, out.stdout[:200], out.stderr[-500:])


def test_no_module_imports_another_modules_private_name():
    """`from ganflow.x import _name` couples a module to another's internals (stages/train.py once
    imported tracking's `_dvc_tags`): a name another module needs is public."""
    import ast

    found = []
    for path in [*deps.PACKAGE_DIR.rglob("*.py"), *(ROOT / "stages").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ganflow"):
                found += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_test_modules_share_helpers_only_through_conftest():
    import ast

    offenders = []
    for f in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{f.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert offenders == [], "helpers belong in tests/conftest.py"
