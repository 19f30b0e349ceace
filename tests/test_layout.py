"""The package's shape: commands on top, library below, imports one way, no circles."""

import ast
import pathlib

import pytest

LM = pathlib.Path(__file__).resolve().parent.parent / "lm"

# Lowest first: a module may import its own layer or a lower one, never a higher one.
# train and eval share a layer: the loop runs the eval runner, which runs train's eval step.
LAYERS = [
    {"errors", "units", "compile_cache", "malloc", "distributed"},
    {"nn"},
    {"models"},
    {"data", "convert", "config"},
    {"generation"},
    {"train", "eval"},
    {"runs"},
    {"cli", "__main__"},
]
TOP_LEVEL_MODULES = {"__init__", "__main__", "errors", "units", "config", "compile_cache",
                     "malloc", "distributed"}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in LM.rglob("*.py"):
        parts = path.relative_to(LM.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Every lm module `name` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
                      else node.module for a in node.names}
    return {m for m in found if m in known and m != name}


GRAPH = {name: _imports(name, path, set(_modules())) for name, path in _modules().items()}


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def test_the_top_level_holds_packages_and_a_few_cross_cutting_modules():
    modules = {p.stem for p in LM.glob("*.py")}
    assert modules <= TOP_LEVEL_MODULES, modules - TOP_LEVEL_MODULES


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "lm"))
def test_imports_point_down(module):
    upward = [d for d in GRAPH[module] if d != "lm" and _layer(d) > _layer(module)]
    assert not upward, f"{module} imports a higher layer: {upward}"


def test_no_import_circles():
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in GRAPH[node]:
            assert state.get(dep) != 1, " -> ".join(path[path.index(dep):] + [node, dep]) \
                if dep in path else f"{node} -> {dep}"
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_every_command_is_a_module_of_lm_cli():
    from lm.__main__ import COMMANDS

    assert {p.stem for p in (LM / "cli").glob("*.py")} - {"__init__", "common"} == set(COMMANDS)
