"""The command line as a service manager and a script see it: version, exit codes, config."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor import __version__, config_nats_auth
from conveyor.app import exit_codes
from conveyor.app.cli import main
from tests.harness import Harness, make_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_profile() -> None:
    config_nats_auth.use(None)  # `_load` sets the process's NATS profile; start each test clean


def _config(tmp_path: Path, text: str = "") -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{text}')
    return ["--config", str(path)]


def test_version_from_the_script_and_from_python_dash_m() -> None:
    assert CliRunner().invoke(main, ["--version"]).output == f"conveyor, version {__version__}\n"
    shown = subprocess.run(
        [sys.executable, "-m", "conveyor", "--version"], capture_output=True, text=True, timeout=30
    )
    assert (shown.returncode, shown.stdout) == (0, f"conveyor, version {__version__}\n")


def test_a_usage_error_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*_config(tmp_path), "submit"])
    assert result.exit_code == exit_codes.USAGE == 2


def test_no_conveyor_to_reach_exits_69_with_or_without_a_nats_server(
    tmp_path: Path, nats_url: str
) -> None:
    runner = CliRunner()
    no_server = runner.invoke(main, [*_config(tmp_path), "status"])
    assert no_server.exit_code == exit_codes.UNREACHABLE == 69, no_server.output
    assert "Conveyor is not reachable" in no_server.output
    no_daemon = runner.invoke(main, [*_config(tmp_path), "--nats-url", nats_url, "status"])
    assert no_daemon.exit_code == exit_codes.UNREACHABLE, no_daemon.output
    no_daemon = runner.invoke(main, [*_config(tmp_path), "--nats-url", nats_url, "approve", "X-1"])
    assert no_daemon.exit_code == exit_codes.UNREACHABLE, no_daemon.output


def test_a_refusal_exits_1(tmp_path: Path, nats_url: str) -> None:
    harness = Harness(make_config(tmp_path / "data", nats_url), nats_url).start()
    try:
        result = CliRunner().invoke(main, ["--nats-url", nats_url, "approve", "DEMO-404"])
    finally:
        harness.close()
    assert result.exit_code == exit_codes.REFUSED == 1, result.output
    assert "refused:" in result.output


def test_a_config_error_exits_78_for_commands_and_for_the_daemon(tmp_path: Path) -> None:
    base = _config(tmp_path, "[queue]\nmax_concurency = 2\n")
    for args in (["status"], ["up"], ["config", "check"], ["config", "show"]):
        result = CliRunner().invoke(main, [*base, *args])
        assert result.exit_code == exit_codes.CONFIG == 78, (args, result.output)
        assert "queue.max_concurency: unknown key" in result.output
    missing = CliRunner().invoke(main, ["--config", str(tmp_path / "absent.toml"), "status"])
    assert missing.exit_code == exit_codes.CONFIG, missing.output


def test_config_check_lists_every_nats_problem(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, [*_config(tmp_path), "config", "check"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("ok: ")
    bad = runner.invoke(
        main,
        [*_config(tmp_path, '[nats]\ncreds_file = "gone.creds"\n'), "config", "check"],
    )
    assert bad.exit_code == exit_codes.CONFIG
    assert f"nats.creds_file: no such file '{tmp_path / 'gone.creds'}'" in bad.output
    assert "nats.url is empty" in bad.output
    (tmp_path / "gone.creds").write_text("creds")
    creds = _config(tmp_path, '[nats]\ncreds_file = "gone.creds"\n')
    named = runner.invoke(main, [*creds, "--nats-url", "nats://h:1", "config", "check"])
    assert named.exit_code == 0, named.output


def test_config_show_redacts_and_loads_back(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("gt-secret\n")
    base = _config(tmp_path, '[gitea]\ntoken_file = "token"\nurl = "http://gitea:3000"\n')
    shown = CliRunner().invoke(main, [*base, "config", "show"])
    assert shown.exit_code == 0, shown.output
    assert "gt-secret" not in shown.output
    data = tomllib.loads(shown.output)
    assert data["gitea"]["token"] == "***"
    assert data["data_dir"] == str(tmp_path / "data")
    (tmp_path / "shown.toml").write_text(shown.output)
    again = CliRunner().invoke(main, ["--config", str(tmp_path / "shown.toml"), "config", "show"])
    assert again.output.splitlines()[1:] == shown.output.splitlines()[1:]


def test_nats_url_reaches_a_running_conveyor(tmp_path: Path, nats_url: str) -> None:
    harness = Harness(make_config(tmp_path / "data", nats_url), nats_url).start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "conveyor", *_config(tmp_path), "status", "--json"],
            capture_output=True,
            text=True,
            env={**os.environ, "NATS_URL": nats_url},
            timeout=30,
        )
    finally:
        harness.close()
    assert result.returncode == 0, result.stderr
    assert '"healthy"' in result.stdout
