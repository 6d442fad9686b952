"""`conveyor drain`: a launcher stops taking orders, its runs finish, and it resumes.

A real node (control and launcher on a fixture nats-server); the command line is
driven as an operator would, and the orders are read from the launch stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from bus import subjects
from conveyor.app import exit_codes
from conveyor.app.cli import main
from tests.harness import Harness, make_config, stored_jobs, wait_until


@pytest.fixture
def running(tmp_path: Path, nats_url: str) -> Iterator[tuple[Harness, list[str], str]]:
    cfg = make_config(tmp_path / "data", nats_url)
    harness = Harness(cfg, nats_url).start()
    try:
        yield harness, ["--nats-url", nats_url], cfg.launcher.identity()
    finally:
        harness.close()


def _orders_waiting(harness: Harness) -> int:
    bus = harness.client.bus
    info = bus.call(bus.js.stream_info(subjects.STREAM_LAUNCH))
    return int(info.state.messages)


def _drain(base: list[str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*base, "drain", *args])
    return result.exit_code, result.output


def test_a_drained_launcher_takes_no_order_until_it_resumes(
    running: tuple[Harness, list[str], str],
) -> None:
    # Given the only launcher drained
    harness, base, name = running
    code, out = _drain(base, name, "--json")
    assert code == 0, out
    assert json.loads(out) == {"ok": True, "launcher": name, "draining": True, "busy": 0}

    # When an item is submitted
    item = harness.submit("Drained")["task"]["id"]

    # Then its first order waits in the launch stream, and the launcher stays idle
    wait_until(lambda: _orders_waiting(harness) == 1, what="the intake order waiting")
    code, out = _drain(base, name, "--wait", "10", "--json")
    assert code == 0, out
    assert json.loads(out)["busy"] == 0
    assert _orders_waiting(harness) == 1
    assert harness.task(item)["stage"] == "created"
    launcher = harness.client.request(subjects.status_actor("launcher"))
    assert (launcher["draining"], launcher["running"]) == (True, [])

    # When it resumes
    code, out = _drain(base, name, "--resume")
    assert code == 0, out
    assert out.strip() == f"{name}: taking orders, 0 run(s) busy"

    # Then it takes the order and the item moves on
    wait_until(lambda: harness.task(item)["stage"] != "created", what="the item moving on")


def test_a_drain_of_a_launcher_nobody_runs_is_unreachable_and_a_bad_body_is_refused(
    running: tuple[Harness, list[str], str],
) -> None:
    harness, base, name = running
    code, out = _drain(base, "no-such-launcher")
    assert code == exit_codes.UNREACHABLE
    assert "no launcher named 'no-such-launcher' answered" in out

    reply = harness.client.request(subjects.launcher_drain(name), {"drain": "yes"})
    assert reply["ok"] is False
    assert "bad request" in reply["error"]
    launcher = harness.client.request(subjects.status_actor("launcher"))
    assert launcher["draining"] is False


def test_a_run_going_on_when_its_launcher_is_drained_finishes_and_reports(
    running: tuple[Harness, list[str], str],
) -> None:
    # Given an analyst running
    harness, base, name = running
    item = harness.submit("Slow analysis", description="demo: analyst=slow:2")["task"]["id"]
    wait_until(
        lambda: any(j.role == "analyst" and j.pid for j in stored_jobs(harness.client)),
        what="the analyst running",
    )

    # When its launcher is drained, waiting for its runs
    code, out = _drain(base, name, "--wait", "60", "--json")

    # Then the drain waited for the run, which finished and reported as usual
    assert code == 0, out
    assert json.loads(out)["busy"] == 0
    analyst = wait_until(
        lambda: next(
            (j for j in stored_jobs(harness.client) if j.role == "analyst" and j.status == "done"),
            None,
        ),
        what="the analyst's job done",
    )
    assert analyst.attempts == 1
    assert harness.task(item)["stage"] == "analysis"
