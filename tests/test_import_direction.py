"""Imports run one way: every ``import`` of every pcattn module (the lazy ones inside functions
included), read from the source with ``ast``, points down the layers, and no chain of imports
comes back to where it started."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pcattn"

# The layers, lowest first (README "Layout", DESIGN.md). A module may import modules of its own wing
# and of lower layers; two wings of one layer may not import each other. Within ``nn`` the files are
# layers of their own: geometry <- chunked (layout, sizing, gather, pairs, replay <- recompute <- base <- its
# __init__) <- vector/scalar <- blocks/pyg <- the package's __init__.
LAYERS: List[Tuple[str, ...]] = [
    ("pcattn.optional", "pcattn.deprecation"),  # optional packages; the old names of renamed things
    ("pcattn.nn.geometry",),
    ("pcattn.nn.chunked.layout", "pcattn.nn.chunked.sizing", "pcattn.nn.chunked.gather", "pcattn.nn.chunked.pairs",
     "pcattn.nn.chunked.replay"),
    ("pcattn.nn.chunked.recompute",),
    ("pcattn.nn.chunked.base",),
    ("pcattn.nn.chunked",),
    ("pcattn.nn.vector", "pcattn.nn.scalar"),
    ("pcattn.nn.blocks", "pcattn.nn.pyg"),
    ("pcattn.nn",),
    ("pcattn",),  # the package's __init__: the layers' names
    ("pcattn.models", "pcattn.data"),
    ("pcattn.engine",),
    ("pcattn.viz", "pcattn.export"),
    ("pcattn.bench",),
    ("pcattn.cli",),
    ("pcattn.__main__",),
]

# The one import that points up, on purpose: the package's ``__getattr__`` hands out ``pcattn.predict`` when it is
# first used (PEP 562), so ``import pcattn`` still loads only the layers.
LAZY_FACADE = {("pcattn", "pcattn.engine.prediction")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULES: Dict[str, Path] = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def wing(module: str) -> str:
    """The longest layer entry that ``module`` is (or is inside of)."""
    entries = [entry for layer in LAYERS for entry in layer if module == entry or module.startswith(entry + ".")]
    return max(entries, key=len)


def layer_of(module: str) -> int:
    return next(index for index, layer in enumerate(LAYERS) if wing(module) in layer)


def imported_modules(module: str, path: Path) -> Set[str]:
    """The pcattn modules ``module`` imports anywhere in its file (top level, functions, try blocks)."""
    package = module if is_package(path) else module.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "pcattn")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pcattn":
                continue
            for alias in node.names:  # "from .x import y": the module x.y when y is a module, else x
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    found.discard(module)
    return found


GRAPH: Dict[str, Set[str]] = {module: imported_modules(module, path) for module, path in MODULES.items()}


def test_the_checker_reads_lazy_and_relative_imports():
    """The parser finds what it must: a relative import at the top and imports inside functions."""
    assert "pcattn.nn.geometry" in GRAPH["pcattn.nn.chunked.layout"]
    assert "pcattn.engine" in GRAPH["pcattn.cli"]                 # imported inside run_train
    assert "pcattn.data" in GRAPH["pcattn.engine.loaders"]        # imported inside functions
    assert set(MODULES) >= {"pcattn.models.encoder", "pcattn.models.checkpoint", "pcattn.viz.plots"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    for target in sorted(GRAPH[module]):
        if wing(target) == wing(module) or (module, target) in LAZY_FACADE:
            continue
        assert layer_of(target) < layer_of(module), (
            f"{module} ({wing(module)}) imports {target} ({wing(target)}), which is not below it")


def test_no_chain_of_imports_comes_back():
    """No cycle in the module graph (a circle hidden by lazy imports counts)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
