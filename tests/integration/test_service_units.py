"""The systemd units in deploy/systemd: valid for systemd, and stopping them spares agents."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.app import exit_codes
from conveyor.app.cli import PARTS

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
INSTALLED_BINARY = "/opt/conveyor/venv/bin/conveyor"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart is executable: point it at this checkout's conveyor
    here = str(Path(sys.executable).parent / "conveyor")
    for unit in UNITS.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_BINARY, here))
    units = sorted(str(p) for p in tmp_path.iterdir())
    assert len(units) == 6
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=45,
    )
    # It exits 0 on a directive it ignores; what it says is the verdict.
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_a_unit_that_runs_a_launcher_stops_only_conveyor_and_no_unit_retries_a_bad_config() -> None:
    for name in ("conveyor.service", "conveyor-launcher.service"):
        assert _unit(name)["Service"]["KillMode"] == "process", name
    for unit in UNITS.glob("*.service"):
        service = _unit(unit.name)["Service"]
        assert service["RestartPreventExitStatus"] == str(exit_codes.CONFIG), unit.name
        assert service["ExecStart"].startswith(f"{INSTALLED_BINARY} --config "), unit.name


def test_the_split_units_run_the_parts_of_the_procfile() -> None:
    procfile = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
    )
    wanted = _unit("conveyor-split.target")["Unit"]["Wants"].split()
    assert sorted(wanted) == sorted(f"conveyor-{part}.service" for part in procfile)
    for part in procfile:
        assert part in PARTS, part
        exec_start = _unit(f"conveyor-{part}.service")["Service"]["ExecStart"]
        assert exec_start.endswith(f" up --parts {part}"), exec_start
    assert _unit("conveyor.service")["Service"]["ExecStart"].endswith(" up")
