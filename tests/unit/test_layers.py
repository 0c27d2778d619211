"""Imports flow one way (design.md): a module imports only from its own layer or lower ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "src" / "alignlab"
LAYERS = {"config": 0, "config_io": 0, "config_yaml": 0, "config_dump": 0, "runtime": 0, "distributed": 0, "errors": 0,
          "outputs": 0, "folder_lock": 0, "progress": 0,
          "data": 1, "model": 2, "generation": 3, "tasks": 4, "rewards": 4, "algorithms": 5, "trainers": 6, "runs": 6,
          "run_resume": 6, "eval": 7, "backends": 8, "cli": 9, "cli_args": 9, "cli_eval": 9, "cli_model": 9, "demo": 9,
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


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """alignlab module -> the alignlab modules it imports anywhere (top level or inside a function)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name and t != "alignlab")
    return graph


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start through the graph (depth first), or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph[node]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycles():
    """No module reaches itself through imports, counting imports hidden inside functions."""
    graph = _import_graph()
    cycles = {tuple(c) for m in graph if (c := _cycle_from(m, graph))}
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in sorted(cycles))


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle_from("a", graph) == ["a", "b", "c", "a"]
    assert _cycle_from("d", graph) is None
