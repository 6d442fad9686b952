"""Real agent CLIs, installed once per session from the registries, against fake model APIs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.models import FakeModel, Script

INSTALLER = Path(__file__).resolve().parents[2] / "scripts" / "install-agent-clis"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "agent_cli: runs a real agent CLI binary against a fake model API"
    )


@pytest.fixture(scope="session")
def agent_clis() -> dict[str, str]:
    """name -> binary path; an install failure fails the tests with the installer's output."""
    try:
        proc = subprocess.run(
            [str(INSTALLER)], capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"install-agent-clis did not finish in 900 s\n{err.stderr!r}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"install-agent-clis exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    paths = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    missing = [name for name, path in paths.items() if not Path(path).exists()]
    if missing:
        pytest.fail(f"install-agent-clis reported missing binaries: {missing}", pytrace=False)
    return paths


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


@pytest.fixture
def fake_model(workdir: Path) -> Iterator[FakeModel]:
    server = FakeModel(Script(workdir=workdir))
    server.start()
    yield server
    server.stop()
