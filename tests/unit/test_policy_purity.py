"""Policy modules stay pure: their imports are read with `ast`, never executed."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ACTORS = Path(__file__).resolve().parents[2] / "actors"
POLICIES = sorted(ACTORS.glob("*_policy.py"))

ALLOWED_PROJECT = {
    "msgspec",
    "bus.messages",
    "conveyor.config",
    "conveyor.validate",
    "conveyor.pipeline",
    "conveyor.retry",
}
FORBIDDEN = {
    "time",
    "datetime",
    "random",
    "secrets",
    "pykka",
    "nats",
    "subprocess",
    "os",
    "logging",
    "socket",
    "threading",
    "asyncio",
    "shutil",
}


def _allowed_policy(module: str) -> bool:
    return module.startswith("actors.") and module.endswith("_policy") and module.count(".") == 1


def imported_names(source: str, package: str = "actors") -> list[tuple[str, ...]]:
    """Per imported name, the modules it may be: `from X import y` is `X` or `X.y`."""
    names: list[tuple[str, ...]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend((alias.name,) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package, base]) if base else package
            names.extend((base, f"{base}.{alias.name}") for alias in node.names)
    return names


def _ok(candidates: tuple[str, ...]) -> bool:
    top = candidates[0].split(".")[0]
    if top in FORBIDDEN:
        return False
    if top in sys.stdlib_module_names or top == "msgspec":
        return True
    return any(m in ALLOWED_PROJECT or _allowed_policy(m) for m in candidates)


def violations(source: str) -> list[str]:
    """Imports a policy module may not have, and any dynamic import."""
    found = [names[-1] for names in imported_names(source) if not _ok(names)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id == "__import__":
            found.append("__import__")
        if isinstance(node, ast.Attribute) and node.attr == "import_module":
            found.append("importlib.import_module")
    return found


def test_the_policy_modules_are_found():
    names = {p.name for p in POLICIES}
    assert {"stage_policy.py", "queue_policy.py", "launcher_policy.py"} <= names


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_a_policy_imports_only_stdlib_msgspec_messages_config_and_other_policies(path: Path):
    assert violations(path.read_text()) == []


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_a_policy_never_imports_clock_io_randomness_actors_or_logging(path: Path):
    tops = {names[0].split(".")[0] for names in imported_names(path.read_text())}
    assert tops.isdisjoint(FORBIDDEN), tops & FORBIDDEN


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "from os import environ",
        "from datetime import datetime",
        "import random as rnd",
        "from nats.js import kv",
        "import pykka",
        "import logging",
        "from subprocess import run",
        "from conveyor import clock",
        "from conveyor.logs import get",
        "from bus import bridge",
        "from bus.messages import Alert\nfrom bus import bridge",
        "import bus",
        "from actors import stage_engine",
        "from . import launcher",
        "import gateways.forge",
        "import yaml",
        "def f():\n    import time\n",
        "mod = __import__('os')",
        "import importlib\nm = importlib.import_module('os')",
    ],
)
def test_the_purity_check_catches_a_forbidden_import(source: str):
    assert violations(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations",
        "import json\nfrom collections.abc import Mapping",
        "import msgspec",
        "from bus.messages import Alert",
        "from bus import messages",
        "from conveyor.config import Config",
        "from conveyor import validate",
        "from actors import queue_policy",
        "from actors.stage_policy import Task",
        "from .queue_policy import Job",
    ],
)
def test_the_purity_check_accepts_allowed_imports(source: str):
    assert violations(source) == []
