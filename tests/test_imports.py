"""Imports flow one way (DESIGN.md "Data flows one way"): a module imports only from layers to its left.

    errors, config, registry, media  (0)  ->  data (1)  ->  models, schedulers (2)  ->  checkpoint (3)
    ->  train (4)  ->  sampling, evaluation (5)  ->  cli, server (6)

`checkpoint` sits below `train` because the trainer writes checkpoints; it imports nothing from `train`. The
registry names models and datasets as strings and imports them lazily, so it stays at the bottom. Every import
statement counts, including those inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "genforge"
LAYERS = {
    "errors": 0, "config": 0, "registry": 0, "media": 0, "__init__": 6,
    "data": 1, "models": 2, "schedulers": 2, "checkpoint": 3, "train": 4,
    "sampling": 5, "evaluation": 5, "cli": 6, "server": 6, "__main__": 6,
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


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(SRC).as_posix())
def test_imports_flow_one_way(path: Path) -> None:
    module = "genforge." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    module = module.removesuffix(".__init__")
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
