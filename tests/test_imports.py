"""One of each: every module imports on its own, adainfer's modules form no import cycle, and no
function body imports another adainfer module to hide one."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import adainfer

PACKAGE = Path(adainfer.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages(adainfer.__path__, "adainfer."))

# Function bodies that may import an adainfer module, and why. Each is a cost, never a cycle.
DEFERRED_ALLOWED = {
    ("adainfer/run/job.py", "_llm", "adainfer.run.assemble"): "stage=decide runs without "
    "torch, transformers or Lightning: only the stages that load the model import them",
    (
        "adainfer/run/cli.py",
        "main",
        "adainfer.compose.inputs",
    ): "the CLI answers a config mistake before scikit-learn and SciPy load",
    ("adainfer/run/cli.py", "main", "adainfer.run.job"): "the CLI answers a config or data "
    "mistake before torch, transformers, Lightning and MLflow load",
    (
        "adainfer/run/tracking.py",
        "load_run_policy",
        "adainfer.decide.policies",
    ): "reading runs (the report) needs no scikit-learn; only loading a run's policy does",
    (
        "adainfer/run/tracking.py",
        "load_run_probe",
        "adainfer.llm.lenses",
    ): "reading runs (the report) needs no torch; only loading a run's probe does",
}

# Each module in a fresh set of adainfer modules (third-party ones stay: they cannot hide a
# cycle of ours), in one interpreter that is not the test run's.
_IMPORT_EACH = """
import importlib, json, sys, traceback
failed = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "adainfer" or m.startswith("adainfer.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=3)
print(json.dumps(failed))
"""


@cache
def _import_failures() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, json.dumps(MODULES)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_on_its_own(module):
    assert module not in _import_failures(), _import_failures()[module]


def _file(module: str) -> Path:
    path = PACKAGE.parent / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imported(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The adainfer modules an import statement in ``module`` loads (a package's own
    submodules named by ``from package import name`` included)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importing module's package
            parts = module.split(".")[: -node.level] if node.level else []
            base = ".".join([*parts, *([base] if base else [])])
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    return [n for n in names if n in MODULES or n == "adainfer"]


def _top_level_imports(module: str) -> set[str]:
    """What ``module`` imports when it is imported (not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(_file(module).read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(_imported(node, module))
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first.
    for name in list(found):
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(2, len(parts)))
    # A module's own packages are being imported when it runs (their __init__ importing it is
    # how a package re-exports); an edge back to them is not a cycle.
    parts = module.split(".")
    found -= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    found.discard("adainfer")  # its __init__ imports nothing of ours at import time
    return found


def test_adainfer_modules_form_no_import_cycle():
    graph = {m: _top_level_imports(m) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for module in MODULES:
        if module not in state:
            cycle = walk(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_package_init_imports_nothing_of_ours_eagerly():
    """(what lets the cycle check above leave ``adainfer`` itself out)"""
    assert not _top_level_imports("adainfer") - {"adainfer"}


def test_no_function_imports_an_adainfer_module_to_hide_a_cycle():
    found = {}
    for module in MODULES:
        path = _file(module)
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    for name in set(_imported(node, module)) - {"adainfer"}:
                        key = (str(path.relative_to(PACKAGE.parent)), func.name, name)
                        found[key] = node.lineno
    unexplained = {f"{k[0]}:{line} {k[1]}() imports {k[2]}" for k, line in found.items()}
    unexplained -= {
        f"{k[0]}:{found[k]} {k[1]}() imports {k[2]}" for k in DEFERRED_ALLOWED if k in found
    }
    assert not unexplained, "deferred imports of adainfer modules: " + "; ".join(
        sorted(unexplained)
    )
    assert set(DEFERRED_ALLOWED) <= set(found), "allowed deferred imports that are gone"


@pytest.mark.parametrize(
    ("call", "home"),
    [
        ("register_forward_hook", "adainfer/llm/capture.py"),
        ("register_forward_pre_hook", "adainfer/llm/capture.py"),
        ("DataLoader", "adainfer/llm/batching.py"),
    ],
)
def test_one_hook_path_and_one_batching_path(call, home):
    """Hooks on the LLM are set in one module, batches of prompts are made in one module: the
    extraction, the tuned lens's fit and the engine share them."""
    callers = set()
    for module in MODULES:
        path = _file(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name == call:
                    callers.add(str(path.relative_to(PACKAGE.parent)))
    assert callers == {home}
