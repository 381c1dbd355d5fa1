"""Which library files a piece of code depends on: the import closure of a module or stage script
within the ganflow package. It is the one source of truth for two things that must never drift
from the code: each stage's code dep for DVC (closures/<stage>.txt, written by stages/closures.py) and the code
hash in a training checkpoint's fingerprint.

Rules: every `import` / `from … import` statement counts, also inside functions (a lazy import is
still a dependency), except those under `if TYPE_CHECKING:` (never run); importing a module runs its
packages' `__init__.py`; a package whose registry discovers its modules (`Registry(…, discover=…)`)
depends on every module in it. Names looked up by string (config's registry-name checks) do not
count: they validate a name and cannot change what a stage computes.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "ganflow"
PACKAGE_DIR = Path(__file__).resolve().parent
SRC_DIR = PACKAGE_DIR.parent


def module_path(name: str) -> Path | None:
    """`ganflow.nets.dcgan` -> its source file (a package gives its __init__.py); None outside ganflow."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = SRC_DIR.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(SRC_DIR)
    except ValueError:
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, this: str | None, is_package: bool) -> set[str]:
    """Absolute names of the modules (or module attributes) imported by the code in `tree`."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = (this or "").split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _discovers(tree: ast.AST) -> bool:
    """Does this module build a Registry that imports every module of its package?"""
    return any(
        isinstance(node, ast.Call) and any(kw.arg == "discover" for kw in node.keywords) for node in ast.walk(tree)
    )


@lru_cache(maxsize=None)
def _direct(path: Path) -> frozenset[Path]:
    """The ganflow files that running `path` (a module or a script) runs directly."""
    tree = ast.parse(path.read_text(), str(path))
    this = _module_name(path)
    out: set[Path] = set()
    for name in _imported_names(tree, this, path.name == "__init__.py"):
        target = module_path(name)
        if target is None:
            continue
        out.add(target)
        parts = name.split(".")  # importing a.b.c runs a/__init__.py and a/b/__init__.py
        for i in range(1, len(parts)):
            init = module_path(".".join(parts[:i]))
            if init is not None:
                out.add(init)
    if path.name == "__init__.py" and _discovers(tree):
        out.update(p for p in path.parent.glob("*.py") if p.name != "__init__.py")
    out.discard(path)
    return frozenset(out)


def closure(*entries: str | Path) -> list[Path]:
    """Every ganflow source file that importing/running `entries` may run, entries included, sorted."""
    todo = [Path(e).resolve() for e in entries]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_direct(path) - seen)
    return sorted(seen)


def import_graph() -> dict[str, set[str]]:
    """Module -> the ganflow modules it imports (package __init__ edges implied by a dotted name
    are left out, as import checkers do), for the test that forbids cycles."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        this = _module_name(path)
        targets = {_module_name(t) for n in _imported_names(tree, this, path.name == "__init__.py")
                   if (t := module_path(n)) is not None}
        graph[this] = {t for t in targets if t and t != this}
    return graph


def code_hash(*entries: str | Path) -> str:
    """A short hash of the sources in the closure of `entries` (names and contents, in the order of
    their names: where the checkout or the installed package lies changes nothing)."""
    named = {}
    for path in closure(*entries):
        try:
            named[path.relative_to(SRC_DIR).as_posix()] = path
        except ValueError:
            named[path.name] = path
    h = hashlib.sha256()
    for name in sorted(named):
        h.update(name.encode() + b"\0" + named[name].read_bytes() + b"\0")
    return h.hexdigest()[:16]
