"""The package's shape: imports point one way (no cycles; the model, its layers and the data import
neither the training engine nor the command line) and every module stays small enough to read.

Imports are read from the source with ``ast``, all of them: at the top, inside functions and under
``TYPE_CHECKING``, since each one is a dependency a reader has to follow.
"""
from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "frcnn"
MAX_MODULE_LINES = 400
# The layers above the library: only they (and nothing below them) may import them.
UPPER_LAYERS = {"frcnn.cli": {"frcnn.cli", "frcnn.__main__"},
                "frcnn.engine": {"frcnn.engine", "frcnn.cli", "frcnn.__main__"}}


def module_name(path: Path) -> str:
    """frcnn.a.b for src/frcnn/a/b.py; the package's name for an __init__.py."""
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The frcnn modules that ``name`` (at ``path``) imports anywhere in its source: for ``from X import
    Y``, X.Y where that is a module, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in known else source)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


def test_the_reader_resolves_relative_and_submodule_imports() -> None:
    graph = import_graph()
    assert "frcnn.boxes" in graph["frcnn.anchors"]
    assert "frcnn.native" in graph["frcnn.anchor_targets.targets"]  # from .. import native
    assert graph["frcnn.boxes"] == set()
    assert "frcnn.engine.trainer" in graph["frcnn.engine"]  # a package's __init__ imports its modules


def test_no_import_cycles() -> None:
    try:
        TopologicalSorter(import_graph()).prepare()
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


@pytest.mark.parametrize("layer", sorted(UPPER_LAYERS))
def test_only_the_layers_above_import(layer: str) -> None:
    allowed = UPPER_LAYERS[layer]
    offenders = sorted(f"{name} imports {target}" for name, targets in import_graph().items()
                       if not name.startswith(tuple(allowed))
                       for target in targets if target == layer or target.startswith(layer + "."))
    assert offenders == []


def test_every_module_fits_in_a_reader_head() -> None:
    long = {name: count for name, path in modules().items()
            if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}
