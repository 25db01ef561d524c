"""Imports flow one way (DESIGN.md "Data flows one way"): a module imports only from layers to its left, and no
module of the package takes part in an import cycle.

    errors, fileio, config, registry, media, kinds  (0)  ->  data (1)  ->  models, schedulers (2)  ->  train (3)
    ->  checkpoint (4)  ->  sampling, evaluation (5)  ->  cli, server (6)

This is DESIGN.md's order: the trainer writes checkpoints through the `RunStore` it is handed
(`checkpoint.RunDir`), so it imports nothing from `checkpoint`. The registry names models, datasets and metrics as
strings and imports them lazily, so it stays at the bottom. Every import statement counts, including those inside
functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "genforge"
LAYERS = {
    "errors": 0, "fileio": 0, "config": 0, "registry": 0, "media": 0, "kinds": 0, "audio": 0,
    "data": 1, "models": 2, "schedulers": 2, "train": 3, "checkpoint": 4,
    "sampling": 5, "evaluation": 5, "cli": 6, "server": 6, "__main__": 6, "__init__": 6,
}


def layer_of(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "genforge", module
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LAYERS, f"{module}: add its top-level package to LAYERS in this test"
    return LAYERS[top]


def imported_modules(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("genforge")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genforge"):
            found.append(node.module)
            if node.module == "genforge":  # `from genforge import checkpoint`
                found += [f"genforge.{a.name}" for a in node.names]
    return found


FILES = sorted(SRC.rglob("*.py"))


def module_name(path: Path) -> str:
    return ("genforge." + ".".join(path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(SRC).as_posix())
def test_imports_flow_one_way(path: Path) -> None:
    module = module_name(path)
    own = layer_of(module)
    for target in imported_modules(path):
        if target == "genforge":
            continue
        assert layer_of(target) <= own, f"{module} (layer {own}) imports {target} (layer {layer_of(target)})"


def test_models_never_import_training_data_or_cli() -> None:
    for path in (SRC / "models").rglob("*.py"):
        for target in imported_modules(path):
            assert not target.startswith(("genforge.train", "genforge.data", "genforge.cli", "genforge.server")), (
                f"{path.name} imports {target}"
            )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> modules it imports) as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_anywhere_in_the_package() -> None:
    modules = {module_name(p) for p in FILES}
    # `from genforge import checkpoint` names the package root too; the root imports nothing at import time (its
    # `load` imports sampling when called), so an edge to it closes no cycle
    graph = {module_name(p): {t for t in imported_modules(p) if t in modules and t not in (module_name(p), "genforge")}
             for p in FILES}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
