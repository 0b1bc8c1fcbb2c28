"""The package's architecture, checked from its source: layers, no import circles, small modules.

Every ``import`` of the package's own modules counts, function-local ones too (a local
import that hides a circle is still a circle). The layers, bottom to top::

    utils < runtime < compile < distill < models < jobs < bench < cli

A module may import its own layer and those below it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "torchsim_distill"
LAYERS = ("utils", "runtime", "compile", "distill", "models", "jobs", "bench", "cli")
MAX_MODULE_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    """Rank of a module's layer. The package root is the front door (it re-exports the runtime's
    calculators and the registry's loaders), so it ranks above every layer: nothing inside imports it."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)


def _imports(path: Path, module: str) -> set[str]:
    """The package's own modules that ``path`` imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports a submodule when one exists by that name
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "torchsim_distill"}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # keep the edges to real modules (a name imported from a module is not one)
        graph[name] = {m for m in _imports(path, name) if m in modules and m != name}
    return graph


def test_the_graph_sees_every_layer():
    graph = _graph()
    assert {m.split(".")[1] for m in graph if "." in m} == set(LAYERS)
    # the checker itself can fail: the CLI reaches the jobs, the jobs the runtime
    assert "torchsim_distill.jobs.relax" in graph["torchsim_distill.cli"] or any(
        m.startswith("torchsim_distill.jobs") for m in graph["torchsim_distill.cli"]
    )
    assert any(m.startswith("torchsim_distill.runtime") for m in graph["torchsim_distill.jobs.relax"])


def test_imports_only_go_down_the_layers():
    upward = []
    for module, imported in _graph().items():
        own = _layer(module)
        upward += [f"{module} ({LAYERS[own]}) -> {target}" for target in imported if _layer(target) > own]
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            # a package's __init__ importing its own submodules is how packages re-export
            if node == nxt.rsplit(".", 1)[0] and (PACKAGE.parent / node.replace(".", "/") / "__init__.py").exists():
                continue
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path):
    n_lines = len(path.read_text().splitlines())
    assert n_lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)} has {n_lines} lines (> {MAX_MODULE_LINES})"


def test_utils_import_nothing_of_the_package():
    for module, imported in _graph().items():
        if module.startswith("torchsim_distill.utils"):
            assert all(m.startswith("torchsim_distill.utils") for m in imported), (module, imported)
