"""What one launch does never reaches back into the Launcher actor."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


JOB_MODULES = sorted((ROOT / "actors" / "jobs").glob("*.py"))


def test_the_job_modules_are_found():
    names = {p.name for p in JOB_MODULES}
    expected = {"context.py", "leases.py", "steps.py", "agent.py", "merge_gate.py", "deploy.py"}
    assert expected <= names


def test_no_job_module_imports_the_launcher_actor():
    for path in JOB_MODULES:
        assert "actors.launcher" not in _imports(path), path.name


def test_the_monitor_takes_its_process_helpers_from_the_foundation():
    assert not any(
        name == "actors.launcher" or name.startswith("actors.launcher.")
        for name in _imports(ROOT / "actors" / "monitor.py")
    )
