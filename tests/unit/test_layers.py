"""Imports flow one way (design.md): a module imports only from its own layer or lower ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "src" / "alignlab"
LAYERS = {"config": 0, "config_io": 0, "runtime": 0, "distributed": 0, "errors": 0, "outputs": 0, "data": 1,
          "model": 2, "generation": 3, "tasks": 4, "rewards": 4, "algorithms": 5, "trainers": 6, "runs": 6,
          "run_resume": 6, "eval": 7, "backends": 8, "cli": 9, "cli_eval": 9, "cli_model": 9, "demo": 9,
          "demo_smollm2": 9, "sweep": 9, "__main__": 10, "__init__": 10, "assets": 0}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def _layer(parts: list[str]) -> int:
    return LAYERS[parts[0].removesuffix(".py")]


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_one_way(path):
    rel = path.relative_to(ROOT).parts
    mine = _layer(list(rel))
    for line, module in _imports(path):
        parts = module.split(".")
        if parts[0] != "alignlab" or len(parts) < 2:
            continue
        theirs = _layer(parts[1:])
        assert theirs <= mine, f"{path.relative_to(ROOT)}:{line} imports {module} (layer {theirs} > {mine})"


def test_nothing_imports_the_cli():
    for path in ROOT.rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        assert "alignlab.cli" not in dict(_imports(path)).values(), path
