"""Who may import whom (docs/layout.md, "Who imports whom"), read from the import statements of every module of the
package, those inside functions included: a model is usable without Lightning or data, a datamodule without a
network, the table without training code, and nothing imports the command line."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "spp_cls"
OUTSIDE_CODE = ("spp_cls.bench", "spp_cls.cli", "spp_cls.demo", "spp_cls.predict", "spp_cls.__main__")
"""The package's users: they may import everything, and nothing in the package imports them."""
LIGHTNING = ("pytorch_lightning", "lightning")

# (importer, modules it must not import, why); a name matches itself and everything below it
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("spp_cls.protocol", ("spp_cls",), "the vocabulary stands on its own"),
    ("spp_cls.outcomes", ("spp_cls.models", "spp_cls.data", "spp_cls.train", "spp_cls.report", "spp_cls.paper",
                          *OUTSIDE_CODE, *LIGHTNING, "torch"), "per-image outcomes are a plain file format"),
    ("spp_cls.box_file", ("spp_cls",), "box files are read the same way by predict and bench, below both"),
    ("spp_cls.view_protocols", ("spp_cls.paper", "spp_cls.models", "spp_cls.data", "spp_cls.train", "spp_cls.report",
                                *OUTSIDE_CODE, *LIGHTNING, "torch"),
     "the test protocols' geometry is arithmetic on sizes, shared by the data's crops and the model's windows"),
    ("spp_cls.paper", ("spp_cls.models", "spp_cls.data", "spp_cls.train", "spp_cls.report", *OUTSIDE_CODE),
     "the paper's numbers are data"),
    ("spp_cls.models", ("spp_cls.data", "spp_cls.train", "spp_cls.report", *OUTSIDE_CODE, *LIGHTNING),
     "a model is usable without Lightning, data or training code"),
    ("spp_cls.data", ("spp_cls.models", "spp_cls.train", "spp_cls.report", *OUTSIDE_CODE),
     "a datamodule is usable without a network"),
    ("spp_cls.train", ("spp_cls.report", "spp_cls.data.shards", *OUTSIDE_CODE),
     "training writes results files; it never reads the report or the converter"),
    ("spp_cls.report", ("spp_cls.models", "spp_cls.data", "spp_cls.train", *OUTSIDE_CODE, *LIGHTNING, "torch"),
     "the table reads results files through protocol and paper only"),
    ("spp_cls.demo", ("spp_cls.cli", "spp_cls.bench"), "nothing imports the command line"),
    ("spp_cls.bench", ("spp_cls.cli", "spp_cls.demo"), "nothing imports the command line"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (PACKAGE_ROOT.parent / relative).with_suffix(".py").is_file() or (
        PACKAGE_ROOT.parent / relative / "__init__.py").is_file()


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The statements under `if TYPE_CHECKING:`: imports for type hints, never executed."""
    return {node for block in ast.walk(tree) if isinstance(block, ast.If) and isinstance(block.test, ast.Name)
            and block.test.id == "TYPE_CHECKING" for statement in block.body for node in ast.walk(statement)}


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it but under `if TYPE_CHECKING:`; `from x import y` counts x.y where
    y is a module, else x."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    type_only = _type_checking_only(tree)
    for node in ast.walk(tree):
        if node in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            names = [f"{target}.{alias.name}" for alias in node.names]
            submodules = [name for name in names if is_package_module(name)]
            found.update(submodules)
            if len(submodules) < len(names):  # the other names are attributes of the module `target`
                found.add(target)
    found.discard("__future__")
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def rule_violations(graph: dict[str, set[str]]) -> list[str]:
    """One line per import that breaks a rule: `importer imports target: why`."""
    lines = []
    for importer, imported in sorted(graph.items()):
        for owner, forbidden, why in RULES:
            if not _matches(importer, owner):
                continue
            for target in sorted(imported):
                if any(_matches(target, bad) for bad in forbidden) and not _matches(target, owner):
                    lines.append(f"{importer} imports {target}: {why}")
    for importer, imported in sorted(graph.items()):
        if not any(_matches(importer, user) for user in OUTSIDE_CODE):
            lines += [f"{importer} imports {target}: nothing imports the command line"
                      for target in sorted(imported) if any(_matches(target, user) for user in OUTSIDE_CODE)]
    return sorted(set(lines))


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of package modules that import each other, directly or around a loop (Tarjan's components)."""
    edges = {name: {t for t in targets if t in graph and t != name} for name, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def test_every_module_keeps_to_the_import_rules() -> None:
    graph = import_graph()
    assert {"spp_cls.models.net", "spp_cls.data.stream.datamodule", "spp_cls.report.table", "spp_cls.cli"} <= set(graph)
    assert rule_violations(graph) == []


def test_no_import_circle() -> None:
    assert import_cycles(import_graph()) == []


@pytest.mark.parametrize(("importer", "imported", "expected"), [
    ("spp_cls.models.net", "pytorch_lightning", "spp_cls.models.net imports pytorch_lightning: a model is usable"),
    ("spp_cls.models.net", "spp_cls.data.stream.views", "spp_cls.models.net imports spp_cls.data.stream.views"),
    ("spp_cls.data.stream.pipeline", "spp_cls.models", "spp_cls.data.stream.pipeline imports spp_cls.models: a data"),
    ("spp_cls.report.table", "torch", "spp_cls.report.table imports torch: the table reads"),
    ("spp_cls.train.recorder", "spp_cls.report.results", "spp_cls.train.recorder imports spp_cls.report.results"),
    ("spp_cls.demo", "spp_cls.cli", "spp_cls.demo imports spp_cls.cli: nothing imports the command line"),
    ("spp_cls.train.module", "spp_cls.bench.harness", "spp_cls.train.module imports spp_cls.bench.harness"),
])
def test_a_broken_rule_is_reported(importer: str, imported: str, expected: str) -> None:
    """The rules bite: the real graph with one forbidden import added gives exactly that violation."""
    graph = import_graph()
    graph[importer] = {*graph.get(importer, set()), imported}
    violations = rule_violations(graph)
    assert violations and all(line.startswith(f"{importer} imports {imported}: ") for line in violations)
    assert any(line.startswith(expected) for line in violations)


def test_a_circle_is_reported() -> None:
    graph = import_graph()
    graph["spp_cls.models.spp"] = {*graph["spp_cls.models.spp"], "spp_cls.models.net"}  # net imports spp
    assert import_cycles(graph) == [["spp_cls.models.net", "spp_cls.models.spp"]]


def test_imports_are_read_from_function_bodies_and_relative_forms() -> None:
    """`spp_cls.cli` imports its commands inside functions, with relative imports: they must all be seen."""
    imported = imports_of(PACKAGE_ROOT / "cli.py")
    assert {"spp_cls.bench", "spp_cls.demo", "spp_cls.report.table", "spp_cls.train.lightning_cli"} <= imported
