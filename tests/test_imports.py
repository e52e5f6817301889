"""The project's import graph, read from the source with ast: no import cycle in core/, and no module taking another
module's private (`_name`) names in core/, flows/ or tasks/.

The rule for cycles: only imports that run when a module loads count, i.e. those outside function bodies and outside
`if TYPE_CHECKING:` blocks (class bodies and module-level `if`/`try` blocks run at load, so they count). An import
inside a function runs when the function is called, after both modules have loaded, so it cannot break loading; flows
use such imports on purpose to load torch only when they run. Private names count wherever they are imported.
An edge goes to the named module when it is one of the walked modules (`from a.b import c` to the module a.b.c when
there is one, else to a.b); parent packages are not edges of their own.
"""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (a folder under `root`) by its dotted name, packages by their own name."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def is_type_checking(test: ast.expr) -> bool:
    """Whether an `if` test is `TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_statements(node: ast.AST, at_load: bool = True):
    """(statement, whether it runs when the module loads) for every import statement under `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, at_load
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from import_statements(child, False)
        elif isinstance(child, ast.If) and is_type_checking(child.test):
            for statement in child.body:
                yield from import_statements(ast.Module(body=[statement], type_ignores=[]), False)
            for statement in child.orelse:
                yield from import_statements(ast.Module(body=[statement], type_ignores=[]), at_load)
        else:
            yield from import_statements(child, at_load)


def imported_from(statement: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name a `from ... import` statement of `module` takes its names from."""
    if not statement.level:
        return statement.module
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - statement.level + 1]
    return ".".join(base + ([statement.module] if statement.module else []))


def read_imports(modules: dict[str, Path]) -> list[tuple[str, str, str | None, bool]]:
    """(importer, imported module, name taken or None, at load) for every import of `modules` of another of them."""
    found = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for statement, at_load in import_statements(ast.parse(path.read_text(), str(path))):
            if isinstance(statement, ast.Import):
                found += [(module, alias.name, None, at_load) for alias in statement.names if alias.name in modules]
                continue
            source = imported_from(statement, module, is_package)
            for alias in statement.names:
                if f"{source}.{alias.name}" in modules:  # a submodule, e.g. `from core.sequence import lime`
                    found.append((module, f"{source}.{alias.name}", None, at_load))
                elif source in modules:
                    found.append((module, source, alias.name, at_load))
    return found


def import_cycle(modules: dict[str, Path]) -> list[str] | None:
    """A cycle of load-time imports among `modules` (its first module repeated at the end), or None."""
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for importer, imported, _, at_load in read_imports(modules):
        if at_load and importer != imported:
            graph[importer].add(imported)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def private_imports(modules: dict[str, Path]) -> list[str]:
    """`importer: from source import _name` for each private name a module takes from another of `modules`."""
    return [f"{importer}: from {source} import {name}" for importer, source, name, _ in read_imports(modules)
            if name is not None and name.startswith("_") and source != importer]


def project_modules(*packages: str) -> dict[str, Path]:
    """The modules of the project's `packages`."""
    return {name: path for package in packages for name, path in module_names(ROOT, package).items()}


def test_core_has_no_import_cycle():
    cycle = import_cycle(project_modules("core"))
    assert cycle is None, f"import cycle in core/: {' -> '.join(cycle)}"


def test_the_stacked_primitives_import_no_module_of_the_project():
    """core.models.stacked lies below both the layer modules and the ensemble that runs them."""
    assert [imported for importer, imported, _, _ in read_imports(project_modules("core"))
            if importer == "core.models.stacked"] == []


@pytest.mark.parametrize("packages", [("core",), ("core", "flows", "tasks")])
def test_no_module_imports_another_modules_private_names(packages):
    assert private_imports(project_modules(*packages)) == []


def write_package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    """A fake package `pkg` under `root` from {relative path: source}; its modules by name."""
    for name, source in {"pkg/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)
    return module_names(root, "pkg")


def test_a_load_time_cycle_is_found_and_named(tmp_path):
    modules = write_package(tmp_path, {"pkg/a.py": "from pkg.b import f\n",
                                       "pkg/b.py": "import os\n\nclass B:\n    from pkg.sub import c\n",
                                       "pkg/sub/__init__.py": "", "pkg/sub/c.py": "from ..a import g\n"})
    cycle = import_cycle(modules)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert sorted(cycle[1:]) == ["pkg.a", "pkg.b", "pkg.sub.c"]


def test_imports_inside_functions_or_type_checking_close_no_cycle(tmp_path):
    modules = write_package(tmp_path, {"pkg/a.py": "from pkg.b import f\n",
                                       "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                   "    from pkg.a import A\n\ndef f():\n    import pkg.a\n"})
    assert import_cycle(modules) is None
    assert [(importer, imported, at_load) for importer, imported, _, at_load in read_imports(modules)] == [
        ("pkg.a", "pkg.b", True), ("pkg.b", "pkg.a", False), ("pkg.b", "pkg.a", False)]


def test_private_names_taken_from_another_module_are_found(tmp_path):
    modules = write_package(tmp_path, {"pkg/a.py": "_hidden = 1\nshown = 2\n",
                                       "pkg/b.py": "from os import _exit\nfrom pkg.a import shown\n\n"
                                                   "def f():\n    from .a import _hidden\n",
                                       "pkg/c.py": "from pkg.a import (\n    shown,\n    _hidden as h,\n)\n"})
    assert private_imports(modules) == ["pkg.b: from pkg.a import _hidden", "pkg.c: from pkg.a import _hidden"]
