"""The project's map stays true: every stage's `deps` in dvc.yaml list each project module the stage
imports (directly or through other modules), so a change to shared code reruns exactly the stages
that use it."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tests.conftest import ROOT

PACKAGES = ("arxiv_embed", "stages")


def module_file(name: str) -> Path | None:
    """The file of project module `name` (a module file, or a package's __init__.py)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """Project module files that `path` imports anywhere in its body (lazy imports included)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from pkg import mod` imports pkg.mod when it is a module, else a name from pkg.
            names = [f"{node.module}.{alias.name}" if module_file(f"{node.module}.{alias.name}") else node.module for alias in node.names]
        else:
            continue
        found |= {file for name in names if (file := module_file(name))}
    return found


def closure(start: Path) -> set[Path]:
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += imported_files(path)
    # A package's __init__ that holds only a docstring changes no behaviour.
    return {p for p in seen if p.name != "__init__.py" or ast.parse(p.read_text()).body[1:]}


def test_every_stage_depends_on_each_module_it_imports() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = stage["cmd"].split()[2]  # python -m stages.X ...
        needed = {str(p.relative_to(ROOT)) for p in closure(module_file(module))}
        declared = {dep for dep in stage["deps"] if dep.endswith(".py")}
        assert declared == needed, f"dvc.yaml stage {name}: missing deps {sorted(needed - declared)}, stale deps {sorted(declared - needed)}"
