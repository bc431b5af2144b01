"""Which way imports go: the library never imports the command line (docs/GUIDE.md, "Code layout")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import austeer

_CHECK = """
import importlib, pkgutil, sys
def walk(name):  # like pkgutil.walk_packages, which would import the cli package to look inside it
    module = importlib.import_module(name)
    yield name
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        child = f"{name}.{info.name}"
        if child not in ("austeer.cli", "austeer.__main__"):
            yield from walk(child)
library = list(walk("austeer"))
print(len(library))
print(" ".join(sorted(n for n in sys.modules if n == "austeer.cli" or n.startswith("austeer.cli."))))
"""


@pytest.mark.slow
def test_library_never_imports_the_cli() -> None:
    proc = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, cli = proc.stdout.splitlines()[-2:] if proc.stdout.count("\n") >= 2 else (proc.stdout.strip(), "")
    assert int(count) > 20  # the walk found the package's modules
    assert cli == "", f"importing the library imported {cli}"


def _imports(path: Path) -> set[str]:
    """Every module an ``import`` statement of ``path`` names, at any depth (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
    return names


def test_no_library_source_imports_the_cli() -> None:
    package = Path(austeer.__file__).parent
    library = [p for p in package.rglob("*.py") if p.relative_to(package).parts[0] not in ("cli", "__main__.py")]
    assert len(library) > 20
    cli = {
        str(p.relative_to(package)): sorted(n for n in _imports(p) if n.split(".")[:2] == ["austeer", "cli"])
        for p in library
    }
    assert {path: names for path, names in cli.items() if names} == {}


def test_no_import_circle_inside_the_cli() -> None:
    """The command modules import the shared flags (cli/common, cli/argtypes); nothing they import imports them
    back: the cli's own import graph (lazy imports included) has no cycle."""
    package = Path(austeer.__file__).parent / "cli"
    graph = {
        p.stem: {n.split(".")[2] for n in _imports(p) if n.split(".")[:2] == ["austeer", "cli"] and n.count(".") >= 2}
        - {p.stem}
        for p in package.glob("*.py")
    }
    assert "common" in graph and graph["distributed"] >= {"common"}  # the walk sees the modules and their imports

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    assert sorted(m for m in graph if reaches(m, m)) == []


#: the floors of docs/GUIDE.md ("Code layout"), lowest first: a module imports only from its own floor and below.
#: A floor is a set of folders (the root's few modules are the ground floor); every module is on one.
FLOORS: dict[str, tuple[str, ...]] = {
    "ground": ("errors", "extras", "io", "stats", "data"),
    "core": ("core",),
    "models, runs and exports": ("models", "run", "exports"),
    "methods and tasks": ("methods", "tasks"),
    "evaluation": ("evaluation",),
    "serving": ("serving",),
    "report": ("report",),
    "public API": ("__init__",),
    "cli": ("cli", "__main__"),
}


def test_the_root_holds_only_the_ground_floor() -> None:
    """Every other module lives in the folder of its floor: the package's root lists the floors."""
    package = Path(austeer.__file__).parent
    root = sorted(p.stem for p in package.glob("*.py"))
    assert root == sorted(["__init__", "__main__", *FLOORS["ground"][:-1]])
    folders = sorted(p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(n for names in FLOORS.values() for n in names if (package / n).is_dir())


def _floor(module: str) -> int:
    """The floor of ``module`` (a dotted name below ``austeer``: its first part names the floor)."""
    head = module.split(".")[0]
    return next(i for i, names in enumerate(FLOORS.values()) if head in names)


def test_every_floor_imports_only_from_below() -> None:
    package = Path(austeer.__file__).parent
    up: list[str] = []
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)
        mine = _floor(name)  # StopIteration: a module on no floor
        for imported in _imports(path):
            if imported == "austeer" or not imported.startswith("austeer."):
                continue
            target = imported.split(".")[1]
            if not (package / target).is_dir() and not (package / f"{target}.py").is_file():
                continue  # a name imported from the package (from austeer import __version__)
            if _floor(target) > mine:
                up.append(f"{name} ({list(FLOORS)[mine]}) imports {imported} ({list(FLOORS)[_floor(target)]})")
    assert sorted(set(up)) == []
