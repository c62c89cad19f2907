"""The package's shape: data flows one way, so no module imports one that imports it back.

Edges are read from the source, imports inside functions included: ``from oirl.a import b``
is an edge to the module ``oirl.a.b`` when that is a module, else to ``oirl.a``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "oirl"
MAX_LINES = 400

#: Each package may import only the ones listed before it (the flow of data).
LAYERS = ["errors", "_atomic", "_outputs", "_json", "_threads", "_sqlite", "_plots", "data", "embed", "reward", "policy", "ope", "recommender",
          "learn", "evaluation", "decisions", "serve", "distributed", "client", "reproduce", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every oirl module ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("oirl")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("oirl"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
    return found & known


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, known) - {name} for name, path in found.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_counting_imports_inside_functions():
    assert find_cycle(graph()) is None


def layer_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def test_each_layer_imports_only_layers_below_it():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for module, targets in graph().items():
        source = layer_of(module)
        for target in targets:
            if source in rank and layer_of(target) in rank and rank[layer_of(target)] > rank[source]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the flow of data:\n" + "\n".join(sorted(upward))


def test_every_package_is_placed_in_a_layer():
    packages = {layer_of(m) for m in modules()} - {"__init__"}
    assert packages <= set(LAYERS), f"place these in LAYERS: {sorted(packages - set(LAYERS))}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_the_line_limit(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (at most {MAX_LINES}): split it by concept"


def test_the_plain_cli_imports_no_dask_code():
    """Training, recommending and evaluating without --dask never load oirl.distributed or dask."""
    code = ("import sys; from oirl.cli.main import cli\n"
            "for name in ('train', 'recommend', 'evaluate', 'serve', 'export-decisions'):\n"
            "    cli.get_command(None, name)\n"
            "import oirl.learn.train, oirl.evaluation.report, oirl.data.batch\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('oirl.distributed', 'dask', 'distributed')))\n"
            "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
