"""Import contracts (docs/architecture.md): the engine never imports the job layer,
the service or the worker; the job layer never imports the service or the worker;
the worker never imports the service; the API process and the Python client never
load torch, nor do the purifier specs, requests and the registry; engine subpackages
point one way; routers do not import each other; `pureebm --help` loads nothing
heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names, at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def top_level(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize(
    "package,forbidden",
    [
        ("pureebm", ("jobs", "service", "worker")),
        ("jobs", ("service", "worker", "fastapi", "starlette", "torch")),
        ("worker", ("service", "fastapi", "starlette")),
    ],
)
def test_imports_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name for name in imported_modules(path) if top_level(name) in forbidden
        )
        for path in (ROOT / package).rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


ENGINE_LAYERS = [  # inside the engine: a subpackage never imports the ones that use it
    (
        "containers",
        ("purifiers", "registry", "requests", "pipeline", "training", "evaluation", "cli"),
    ),
    ("purifiers", ("containers", "pipeline", "requests", "training", "evaluation", "cli")),
    ("registry", ("containers", "pipeline", "requests", "training", "evaluation", "cli")),
    ("training", ("requests", "evaluation", "cli")),
    ("evaluation", ("training", "cli")),
]


@pytest.mark.parametrize("package,forbidden", ENGINE_LAYERS, ids=[p for p, _ in ENGINE_LAYERS])
def test_engine_subpackages_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    """Purifier families and the registry sit under the pipeline and training, which
    sit under the evaluation and the command line."""
    offenders = {}
    for path in (ROOT / "pureebm" / package).rglob("*.py"):
        names = {n.split(".")[1] for n in imported_modules(path) if n.startswith("pureebm.")}
        if bad := sorted(names & set(forbidden)):
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def test_routers_do_not_import_each_other() -> None:
    for path in (ROOT / "service" / "routers").glob("*.py"):
        assert not any(name.startswith("service.routers") for name in imported_modules(path)), path


@pytest.mark.parametrize(
    "code",
    [
        "import service.app",
        "import pureebm.client",
        "import pureebm.purifiers, pureebm.requests, pureebm.registry",
        "import worker.commands, service.commands",
        "from pureebm.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    ],
    ids=["api", "client", "purifier-specs-and-registry", "command-registration", "cli-help"],
)
def test_torch_stays_unloaded(code: str) -> None:
    check = f"{code}\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, at any depth of the file (inside
    functions and under TYPE_CHECKING too); ``from package import name`` counts the
    submodule ``name`` where there is one."""
    files = {}
    for package in ("pureebm", "jobs", "service", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        named: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named.update(owner(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                named.add(owner(node.module))
                named.update(owner(f"{node.module}.{alias.name}") for alias in node.names)
        graph[module] = {name for name in named if name and name != module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = set()
            while not component or module not in component:
                component.add(stack.pop())
            if len(component) > 1:
                cycles.append(component)

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


# The one circle left (issue 46): the chains, purifier families and registry records
# name each other's types. Nothing may join it, and no other circle may appear.
ENGINE_CIRCLE = {
    "pureebm.diffusion", "pureebm.langevin", "pureebm.purifiers", "pureebm.purifiers.base",
    "pureebm.purifiers.ddpm", "pureebm.purifiers.jpeg", "pureebm.purifiers.langevin",
    "pureebm.purifiers.reps", "pureebm.purifiers.spec", "pureebm.registry",
    "pureebm.registry.records", "pureebm.registry.store",
}  # fmt: skip


def test_no_import_circle_but_the_engines_known_one() -> None:
    cycles = import_cycles(import_graph())
    assert [c for c in cycles if c != ENGINE_CIRCLE] == []


def test_the_cycle_finder_finds_a_circle_through_type_checking_imports() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [{"a", "b", "c"}]
