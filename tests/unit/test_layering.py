"""Each floor imports only what stands below it: imports are read with `ast`, never executed.

From the ground up: the foundation (top-level modules of `conveyor/`), then `bus`,
then `gateways`, then `actors`, and on top the composition root `conveyor.app`,
the only package that imports actor classes. Shipped programs (`conveyor.agents`)
stand on the foundation alone. See `tests/unit/test_policy_purity.py` for the
stricter rule inside `actors/*_policy.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("conveyor", "actors", "bus", "gateways")

FOUNDATION = "foundation"
BUS = "bus"
GATEWAYS = "gateways"
ACTORS = "actors"
JOBS = "actors.jobs"
APP = "conveyor.app"
AGENTS = "conveyor.agents"
MAIN = "conveyor.__main__"
"""`python -m conveyor`: the command line's entry point, so it stands with the app."""

KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()
"""Edges the tree still has that the floors forbid; each one goes when its code moves."""


def module_name(path: Path) -> str:
    """`actors/jobs/steps.py` -> `actors.jobs.steps`; a package is its `__init__`'s name."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor_of(module: str) -> str:
    """The floor a project module stands on."""
    if module in (APP, MAIN) or module.startswith(f"{APP}."):
        return APP
    if module == AGENTS or module.startswith(f"{AGENTS}."):
        return AGENTS
    if module == JOBS or module.startswith(f"{JOBS}."):
        return JOBS
    top = module.split(".")[0]
    return FOUNDATION if top == "conveyor" else top


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Project modules `module` imports; `from x import y` counts as `x.y` when that is one."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _exists(candidate) else base)
    return {m for m in found if m.split(".")[0] in PACKAGES}


OWNER_BASE = "actors.owner"
"""The shared edge every owner actor extends: importing it imports no actor."""


def defines_actor(source: str) -> bool:
    """True when the module defines a pykka actor class (directly or through `Owner`)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = ast.unparse(base)
                if name.endswith(("ThreadingActor", "pykka.Actor")) or name == "Owner":
                    return True
    return False


def _sources() -> dict[str, tuple[Path, str]]:
    found: dict[str, tuple[Path, str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = (path, path.read_text())
    return found


SOURCES = _sources()
ACTOR_MODULES = frozenset(
    name
    for name, (_path, source) in SOURCES.items()
    if floor_of(name) == ACTORS and name != OWNER_BASE and defines_actor(source)
)

ALLOWED: dict[str, frozenset[str]] = {
    FOUNDATION: frozenset({FOUNDATION}),
    AGENTS: frozenset({FOUNDATION, AGENTS}),
    BUS: frozenset({FOUNDATION, BUS}),
    GATEWAYS: frozenset({FOUNDATION, BUS, GATEWAYS}),
    ACTORS: frozenset({FOUNDATION, BUS, GATEWAYS, ACTORS, JOBS}),
    JOBS: frozenset({FOUNDATION, BUS, GATEWAYS, ACTORS, JOBS}),
    APP: frozenset({FOUNDATION, BUS, GATEWAYS, ACTORS, JOBS, APP, AGENTS}),
}
"""Which floors each floor may import."""


def forbidden(module: str, imported: str, actor_modules: frozenset[str] = ACTOR_MODULES) -> str:
    """Why `module` may not import `imported` ("" when it may)."""
    mine, theirs = floor_of(module), floor_of(imported)
    if theirs not in ALLOWED[mine]:
        return f"{mine} imports {theirs}"
    if imported in actor_modules and mine != APP:
        return "only the composition root imports actor classes"
    if mine == JOBS and (imported == "actors.launcher" or imported.startswith("actors.launcher.")):
        return "a job module imports the Launcher"
    return ""


def violations(module: str, source: str, *, is_package: bool = False) -> list[str]:
    """Every forbidden edge out of `module`, as `module -> imported: why`."""
    found = []
    for imported in sorted(imports_of(source, module, is_package=is_package)):
        why = forbidden(module, imported)
        if why and (module, imported) not in KNOWN_EXCEPTIONS:
            found.append(f"{module} -> {imported}: {why}")
    return found


def test_every_package_and_the_actor_classes_are_found():
    floors = {floor_of(name) for name in SOURCES}
    assert {FOUNDATION, BUS, GATEWAYS, ACTORS, JOBS, APP, AGENTS} <= floors
    assert {"actors.launcher", "actors.reaper", "actors.queue_worker"} <= ACTOR_MODULES
    assert not any(name.endswith("_policy") for name in ACTOR_MODULES)


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_a_module_imports_only_what_stands_below_it(module: str):
    path, source = SOURCES[module]
    assert violations(module, source, is_package=path.name == "__init__.py") == []


def test_the_known_exceptions_still_exist():
    # An exception whose edge is gone must be deleted, or it would hide a new one.
    stale = [
        (module, imported)
        for module, imported in sorted(KNOWN_EXCEPTIONS)
        if module not in SOURCES or imported not in imports_of(SOURCES[module][1], module)
    ]
    assert stale == []


def test_the_demo_agent_shim_runs_the_agent_without_importing_it():
    source = SOURCES["conveyor.demo_agent"][1]
    assert imports_of(source, "conveyor.demo_agent") == set()
    assert '"conveyor.agents.demo_agent"' in source


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("conveyor.config", "from bus.messages import Alert"),
        ("conveyor.clock", "import actors.reaper_policy"),
        ("conveyor.logs", "from gateways import git"),
        ("conveyor.errors", "from conveyor.app import wiring"),
        ("conveyor.layout", "from conveyor.agents import demo_repo"),
        ("bus.bridge", "from gateways.forge import Forge"),
        ("bus.subjects", "from actors import queue_policy"),
        ("bus.server", "from conveyor.app.client import Client"),
        ("gateways.gitea", "from actors.stage_policy import Task"),
        ("gateways.git", "from conveyor.app import node"),
        ("actors.reaper", "from conveyor.app.wiring import TABLE"),
        ("actors.reaper", "from actors.lease_keeper import LeaseStatus"),
        ("actors.common", "from actors import stage_engine"),
        ("actors.jobs.steps", "from actors.launcher import Slots"),
        ("actors.jobs.steps", "from ..launcher import Slots"),
        ("actors.jobs.steps", "from actors import launcher"),
        ("conveyor.agents.demo_agent", "from bus import subjects"),
        ("conveyor.agents.demo_agent", "from actors import queue_policy"),
    ],
)
def test_the_layering_check_catches_a_forbidden_import(module: str, source: str):
    assert violations(module, source) != []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("conveyor.config", "from conveyor.errors import ConfigError\nimport msgspec"),
        ("conveyor.runwrap", "from conveyor import clock"),
        ("bus.bridge", "from conveyor.logs import get_logger\nfrom bus import messages"),
        ("gateways.gitea", "from bus.bridge import Bus\nfrom gateways.forge import Forge"),
        ("actors.reaper", "from actors.reaper_policy import ReaperState\nfrom bus import subjects"),
        ("actors.stage_engine", "from gateways.forge import Forge\nfrom actors import common"),
        ("actors.jobs.steps", "from actors.launcher_policy import Run\nfrom . import steps"),
        ("conveyor.app.node", "from actors.reaper import Reaper\nfrom conveyor.agents import x"),
        ("conveyor.agents.demo_agent", "from conveyor.clock import SystemClock"),
    ],
)
def test_the_layering_check_accepts_an_allowed_import(module: str, source: str):
    assert violations(module, source) == []
