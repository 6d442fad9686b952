"""The `conveyor` command line, driven as an operator would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from bus import subjects
from bus.messages import LeaseAcquire, LeaseHolder, encode
from conveyor.app.cli import main
from tests.harness import Harness, make_config

ROOT = Path(__file__).resolve().parents[2]

COMMANDS = [
    "up",
    "run",
    "submit",
    "status",
    "tail",
    "approve",
    "reject",
    "cancel",
    "retry",
    "confirm-deploy",
    "release-lease",
    "drain",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_an_unknown_config_key_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[queue]\nmax_concurency = 2\n")
    result = CliRunner().invoke(main, ["--config", str(config), "up"])
    assert result.exit_code != 0
    assert "queue.max_concurency: unknown key" in result.output


def test_a_wrong_type_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[launcher]\nslots = "four"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code != 0
    assert "launcher.slots" in result.output


def test_commands_without_a_running_conveyor_say_so(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "nothing"}"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code != 0
    assert "not reachable" in result.output


@pytest.fixture
def running(tmp_path: Path, nats_url: str) -> Iterator[tuple[Harness, list[str]]]:
    cfg = make_config(tmp_path / "data", nats_url)
    harness = Harness(cfg, nats_url).start()
    try:
        yield harness, ["--nats-url", nats_url]
    finally:
        harness.close()


def test_submit_status_and_cancel_through_the_cli(running: tuple[Harness, list[str]]) -> None:
    harness, base = running
    runner = CliRunner()

    submitted = runner.invoke(main, [*base, "submit", "Add login", "--repo", "demo", "--json"])
    assert submitted.exit_code == 0, submitted.output
    item = json.loads(submitted.output)["task"]["id"]

    table = runner.invoke(main, [*base, "status"])
    assert table.exit_code == 0, table.output
    assert item in table.output
    assert "stage_engine" in table.output

    detail = runner.invoke(main, [*base, "status", item, "--json"])
    assert json.loads(detail.output)["id"] == item

    cancelled = runner.invoke(main, [*base, "cancel", item, "--reason", "dup"])
    assert cancelled.exit_code == 0, cancelled.output
    again = runner.invoke(main, [*base, "cancel", item])
    assert again.exit_code == 1
    assert "already cancelled" in again.output
    assert harness.task(item)["stage"] == "cancelled"


def test_a_refused_command_exits_non_zero_with_the_reason(
    running: tuple[Harness, list[str]],
) -> None:
    _, base = running
    result = CliRunner().invoke(main, [*base, "submit", "x", "--id", "../../etc", "--repo", "demo"])
    assert result.exit_code == 1
    assert "id:" in result.output


def test_status_of_a_bad_id_is_a_usage_error(running: tuple[Harness, list[str]]) -> None:
    _, base = running
    result = CliRunner().invoke(main, [*base, "status", "a.b"])
    assert result.exit_code == 2


def test_status_lists_finished_tasks_only_with_all_and_filters_by_stage_and_repo(
    running: tuple[Harness, list[str]],
) -> None:
    harness, base = running
    runner = CliRunner()
    kept = harness.submit("Kept open")["task"]["id"]
    gone = harness.submit("Cancelled soon")["task"]["id"]
    assert harness.command("cancel", gone)["ok"]

    def listed(*args: str) -> list[str]:
        result = runner.invoke(main, [*base, "status", "--json", *args])
        assert result.exit_code == 0, result.output
        pages = [json.loads(line) for line in result.output.splitlines()]
        return [row["id"] for page in pages for row in page["tasks"]]

    assert kept in listed()
    assert gone not in listed()
    assert listed("--all") == [kept, gone]
    assert listed("--all", "--stage", "cancelled") == [gone]
    assert listed("--all", "--repo", "nowhere") == []
    table = runner.invoke(main, [*base, "status", "--all"])
    assert table.exit_code == 0, table.output
    assert "2 of 2 tasks" in table.output
    assert "cancelled 1" in table.output


def test_an_operator_can_force_release_a_stuck_merge_lease(
    running: tuple[Harness, list[str]],
) -> None:
    harness, base = running
    me = psutil.Process()
    holder = LeaseHolder(
        task_id="DEMO-9",
        job_id="DEMO-9.deploy-staging.1.merge",
        launcher="x",
        host="elsewhere",
        pid=me.pid,
        create_time=me.create_time(),
        boot_id="",
    )
    harness.client.bus.request(
        subjects.LEASE_ACQUIRE, encode(LeaseAcquire(name="merge.demo", holder=holder))
    )
    runner = CliRunner()
    refused = runner.invoke(main, [*base, "release-lease", "merge.demo", "--task", "DEMO-1"])
    assert refused.exit_code == 1
    assert "held by DEMO-9" in refused.output
    forced = runner.invoke(main, [*base, "release-lease", "merge.demo", "--force"])
    assert forced.exit_code == 0, forced.output
    assert harness.client.request(subjects.status_actor("lease_keeper"))["leases"] == []


def test_run_approves_the_analysis_when_it_asks_for_approval_and_follows_it_to_done(
    tmp_path: Path, nats_url: str
) -> None:
    # The shipped defaults (the demo repository), on the fixture server.
    defaults = (ROOT / "conveyor" / "default_config.toml").read_text()
    config = tmp_path / "config.toml"
    config.write_text(
        defaults.replace('data_dir = ".conveyor"', f'data_dir = "{tmp_path / "data"}"', 1).replace(
            'url = ""', f'url = "{nats_url}"', 1
        )
    )

    result = CliRunner().invoke(
        main, ["--config", str(config), "run", "Add a greeting feature", "--deadline", "120"]
    )

    assert result.exit_code == 0, result.output
    assert "analysis is ready: approve or reject it" in result.output
    assert "$ conveyor approve DEMO-1 → ok" in result.output
    assert "DEMO-1 is done" in result.output
