"""Real agent CLIs, installed once per session from the registries, against fake model APIs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.models import FakeModel, Script

INSTALLER = Path(__file__).resolve().parents[2] / "scripts" / "install-agent-clis"
INSTALL_TIMEOUT_S = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The first test to use the CLIs pays for a fresh install inside its own timeout; each
    # run of a CLI is still bounded by run_agent's timeout.
    for item in items:
        if "agent_clis" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(INSTALL_TIMEOUT_S + 120))


@pytest.fixture(scope="session")
def agent_clis() -> dict[str, str]:
    """name -> binary path; an install failure fails the tests with the installer's output."""
    try:
        proc = subprocess.run(
            [str(INSTALLER)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(
            f"install-agent-clis did not finish in {INSTALL_TIMEOUT_S} s\n{err.stderr!r}",
            pytrace=False,
        )
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
