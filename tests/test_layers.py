"""The package's architecture, checked from its source: layers, no import circles, small modules.

Every ``import`` of the package's own modules counts, function-local ones too (a local
import that hides a circle is still a circle). The layers, bottom to top::

    utils < runtime < compile < models < distill < jobs < bench < cli

A module may import its own layer and those below it, never one above. Inference
(``runtime``, ``models``: loading a student by name, its package, its committee) sits
below training (``distill``), so loading a student never imports the training code.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "torchsim_distill"
LAYERS = ("utils", "runtime", "compile", "models", "distill", "jobs", "bench", "cli")
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


#: Loads a student by name in a fresh interpreter and lists the package's modules it imported.
#: ``load_student`` is called on a name that does not exist, so that nothing is compiled: the
#: imports are those of the loading path (the registry, the package reader, the compile
#: cache, the runtime) all the same.
_LOAD_BY_NAME = """
import json, sys
import torchsim_distill
from torchsim_distill import DistilledCalculator, load_student
from torchsim_distill.models.registry import UnknownStudentError, resolve_student
from torchsim_distill.models.package import committee_of, read_distill_metadata
from torchsim_distill.models.student import compiled_student, student_calc
path = resolve_student("default")
read_distill_metadata(path), committee_of(path)
try:
    load_student("no-such-student")
except UnknownStudentError:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith("torchsim_distill"))))
"""


def test_loading_a_student_imports_nothing_of_the_distillation():
    """Inference without training: loading a student by name, reading its package and its
    committee imports no ``torchsim_distill.distill`` module."""
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_BY_NAME], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "torchsim_distill.models.registry" in loaded and "torchsim_distill.models.package" in loaded
    assert not [m for m in loaded if m.startswith("torchsim_distill.distill")], loaded


def test_inference_modules_import_nothing_of_the_distillation():
    """The same, read from the source: no runtime or models module imports distill/."""
    graph = _graph()
    for module, imported in graph.items():
        if module.split(".")[1:2] in (["runtime"], ["models"]):
            assert not [m for m in imported if m.startswith("torchsim_distill.distill")], (module, imported)


def _deprecated_alias(path: Path) -> bool:
    """A module kept only so that an old import path still works (it says so first thing)."""
    return (ast.get_docstring(ast.parse(path.read_text())) or "").startswith("Deprecated name of")


def test_module_basenames_name_one_thing():
    """No two modules share a basename (``__init__`` aside, and the deprecated aliases kept
    for old import paths): ``report.py`` in two layers reads as one thing in a traceback."""
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py" and not _deprecated_alias(path):
            seen.setdefault(path.stem, []).append(str(path.relative_to(PACKAGE)))
    assert not {k: v for k, v in seen.items() if len(v) > 1}


#: More parameters than this need a reason in the function's docstring (the word
#: "parameters" and why): past it, a call site stops being readable without the signature.
MAX_PARAMETERS = 8


def test_long_signatures_say_why():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                if len(names) > MAX_PARAMETERS and "parameters" not in (ast.get_docstring(node) or "").lower():
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({len(names)})")
    assert not offenders, "functions over 8 parameters without a reason:\n" + "\n".join(offenders)
