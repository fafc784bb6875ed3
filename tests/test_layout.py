"""The package's shape: layers that only point down, no import cycle, no typer outside the CLI.

    cli -> launch -> executors -> sweep -> train -> core
    cli -> analysis -> sweep -> train -> core

Every import counts, also one inside a function (a lazy import is still a dependency). Read from
the source with `ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ptbjobs"

# what each layer may import, besides itself
MAY_IMPORT = {
    "core": set(),
    "train": {"core"},
    "sweep": {"train", "core"},
    "executors": {"sweep", "train", "core"},
    "analysis": {"sweep", "train", "core"},
    "launch": {"executors", "sweep", "train", "core"},
    "cli": {"launch", "analysis", "executors", "sweep", "train", "core"},
}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """The ptbjobs modules `path` imports: `from ptbjobs.x import y` counts as ptbjobs.x.y where
    that is a module, else as ptbjobs.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "ptbjobs"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ptbjobs":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return found


def third_party(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def layer(module: str) -> str | None:
    """ptbjobs.train.trainer -> "train"; the package's own __init__ and __main__ have none."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def test_every_module_is_in_a_layer():
    loose = [name for name in MODULES if layer(name) is None and name not in ("ptbjobs", "ptbjobs.__main__")]
    assert loose == [], "put each module in one of the layers: " + ", ".join(MAY_IMPORT)


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for name, imports in GRAPH.items():
        own = layer(name)
        for target in sorted(imports):
            other = layer(target)
            if own is not None and other is not None and other != own and other not in MAY_IMPORT[own]:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_the_package_root_imports_only_the_cli():
    assert GRAPH["ptbjobs"] == set()
    assert {layer(target) for target in GRAPH["ptbjobs.__main__"]} == {"cli"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_find_cycle_finds_one_and_reports_none_where_there_is_none():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_there_is_no_import_cycle_in_the_package():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("library", ["typer", "click"])
def test_only_the_cli_imports_typer(library):
    users = [name for name, path in MODULES.items() if library in third_party(path) and layer(name) != "cli"]
    assert users == []


def test_submitit_is_imported_only_by_the_slurm_executor_and_its_tasks():
    users = {name for name, path in MODULES.items() if "submitit" in third_party(path)}
    assert users <= {"ptbjobs.executors.slurm", "ptbjobs.executors.slurm_tasks"}


def test_no_module_is_over_the_size_limit():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules (at most {MAX_LINES} lines)"
