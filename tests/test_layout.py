"""The package's folders are its layers: no module imports one from a layer above it (docs/architecture.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import mechest

PACKAGE = Path(mechest.__file__).resolve().parent
LAYERS = [
    {"errors", "files", "progress", "device", "flops", "tables", "limits"},
    {"math"},
    {"mlp", "results"},
    {"kprop"},
    {"estimators"},
    {"experiments"},
    {"integrations"},
    {"cli", "__init__"},
]


def layer_of(module: str) -> int:
    """The layer of mechest.<module>: its first dotted part names a folder or a top-level module."""
    head = module.split(".")[0]
    (index,) = [i for i, names in enumerate(LAYERS) if head in names]
    return index


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks (imports for type hints only)."""
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
               for statement in block.body for node in ast.walk(statement)}
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def imported_modules(path: Path) -> set[str]:
    """The mechest submodules that ``path`` imports at run time (deferred imports included)."""
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechest."):
            found.add(node.module.removeprefix("mechest."))
        elif isinstance(node, ast.ImportFrom) and node.module == "mechest":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("mechest.") for a in node.names if a.name.startswith("mechest."))
    return found


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_ones() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for target in imported_modules(path):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} imports {target}")
    assert not upward, upward


def test_the_engine_exists_once() -> None:
    """Exactly one module defines each propagation entry point, and the executor is the only code the WhestBench
    package ships."""
    definitions = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in ("propagate", "mean_field", "covariance", "planned"):
                definitions.setdefault(node.name, []).append(path.relative_to(PACKAGE).as_posix())
    assert definitions == {"propagate": ["kprop/run.py"], "mean_field": ["kprop/executor/closed.py"],
                           "covariance": ["kprop/executor/closed.py"], "planned": ["kprop/executor/propagation.py"]}


def test_the_executor_imports_only_the_stdlib_and_itself_without_cycles() -> None:
    """The executor package is copied verbatim into the WhestBench package as ``mechest_propagate``: its modules
    import only the stdlib and each other (relatively, so that the copy works), each only modules below it."""
    graph, foreign = {}, []
    for path in sorted((PACKAGE / "kprop" / "executor").glob("*.py")):
        siblings = graph[path.stem] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                siblings.add(node.module)
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
                foreign += [f"{path.name}: {name}" for name in names
                            if getattr(node, "level", 0) or name.split(".")[0] not in sys.stdlib_module_names]
    assert not foreign, foreign
    ordered: list[str] = []  # each module after those it imports
    while len(ordered) < len(graph):
        ready = sorted(module for module, imports in graph.items() if module not in ordered and imports <= {*ordered})
        assert ready, f"import cycle among {sorted(set(graph) - set(ordered))}"
        ordered += ready
