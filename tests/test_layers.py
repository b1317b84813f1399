"""The package's floors: every module imports only from its own floor or below, with no cycle.

Read from the source with `ast`, so imports inside functions count too. Such an import of a
lumi_jax module is allowed only in the top floors (sessions, the command lines), where it keeps
start-up fast; below them it would only hide a cycle, so it fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lumi_jax"

# From the ground up (the README's layer table). A name ending in ".*" covers a subpackage.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("settings", ("lumi_jax", "errors", "config", "files", "flags", "tables")),
    ("components", ("model", "optim", "sharding", "cpu_devices", "checkpoint", "run_lock", "metrics", "data", "data.*")),
    ("the step", ("step", "lora", "runs")),
    ("the loop", ("train", "copy_warmup", "auto_recipe")),
    ("stages", ("sft", "evaluate", "assess", "generate", "architecture", "interop", "interop.*")),
    ("tools", ("sessions", "sessions.*", "launch")),
    ("command lines", ("session", "cli")),
]
LAZY_IMPORT_FLOORS = {"tools", "command lines"}  # start-up time: `lumi --help` must not load JAX


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor_of(module: str) -> tuple[int, str]:
    short = module.removeprefix("lumi_jax.") if module != "lumi_jax" else "lumi_jax"
    for index, (name, members) in enumerate(FLOORS):
        for member in members:
            if short == member or (member.endswith(".*") and short.startswith(member[:-1])):
                return index, name
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in tests/test_layers.py (and the README)")


def package_modules() -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}


def imports(path: Path, modules: set[str]) -> list[tuple[str, bool, int]]:
    """(imported lumi_jax module, inside a function?, line) for every import in the file."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function, child.lineno) for alias in child.names
                             if alias.name.startswith("lumi_jax"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("lumi_jax"):
                for alias in child.names:  # `from lumi_jax.data import loader` imports a module
                    candidate = f"{child.module}.{alias.name}"
                    found.append((candidate if candidate in modules else child.module, in_function, child.lineno))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def import_graph() -> dict[str, list[tuple[str, bool, int]]]:
    modules = package_modules()
    return {module_name(path): imports(path, modules) for path in PACKAGE.rglob("*.py")
            if "__pycache__" not in path.parts}


def test_every_module_is_on_a_floor():
    for module in package_modules():
        floor_of(module)


def test_imports_only_point_down_or_across():
    upward = []
    for module, targets in import_graph().items():
        here, here_name = floor_of(module)
        for target, _inner, line in targets:
            there, there_name = floor_of(target)
            if there > here:
                upward.append(f"{module} ({here_name}) imports {target} ({there_name}) at line {line}")
    assert not upward, "imports that point up a floor:\n" + "\n".join(sorted(upward))


def test_imports_inside_functions_only_where_start_up_time_needs_them():
    hidden = [f"{module}:{line} imports {target} inside a function"
              for module, targets in import_graph().items() for target, inner, line in targets
              if inner and floor_of(module)[1] not in LAZY_IMPORT_FLOORS]
    assert not hidden, "move these imports to the top of the module:\n" + "\n".join(sorted(hidden))


def test_no_import_cycle():
    graph = {module: sorted({target for target, _, _ in targets if target != module})
             for module, targets in import_graph().items()}
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in graph.get(module, []):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_checker_sees_upward_and_hidden_imports(tmp_path):
    """The checks can fail: a module reaching up (at the top, or inside a function) is found."""
    source = tmp_path / "bad.py"
    source.write_text("from lumi_jax.train import train\n\ndef f():\n    from lumi_jax import cli\n")
    found = imports(source, package_modules())
    assert ("lumi_jax.train", False, 1) in found and ("lumi_jax.cli", True, 4) in found
    assert floor_of("lumi_jax.train")[0] > floor_of("lumi_jax.model")[0]
