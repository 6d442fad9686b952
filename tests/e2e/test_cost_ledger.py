"""The cost ledger end to end: a developer that reports usage, the status answers, the ceiling."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from bus import subjects
from conveyor.app.cli import main
from gateways.tracker import LocalTracker
from tests.harness import Harness, wait_until

pytestmark = pytest.mark.e2e

# The demo agent does the work; a Claude-style `result` line after it reports what it spent.
REPORTING_DEVELOPER = """
import json, subprocess, sys
done = subprocess.run([sys.executable, "-P", "-m", "conveyor.demo_agent", *sys.argv[1:]])
print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                  "usage": {"input_tokens": 1000, "output_tokens": 200,
                            "cache_read_input_tokens": 50},
                  "total_cost_usd": 0.02}), flush=True)
sys.exit(done.returncode)
"""
DEVELOPER = {"developer": {"command": ["{python}", "-P", "-c", REPORTING_DEVELOPER]}}


def _usage(harness: Harness) -> dict[str, Any]:
    answer: dict[str, Any] = harness.client.request(subjects.STATUS_USAGE)
    return answer


def test_the_ledger_shows_what_a_delivered_item_cost(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(agents=DEVELOPER)
    item = harness.submit("Add a greeting")["task"]["id"]

    harness.wait_stage(item, "done")

    usage = _usage(harness)
    developer = usage["by_role"]["developer"]
    assert (developer["input_tokens"], developer["output_tokens"], developer["tokens"]) == (
        1000,
        200,
        1200,
    )
    assert developer["cost_usd"] == pytest.approx(0.02)
    assert usage["by_repo"]["demo"]["cost_usd"] == pytest.approx(0.02)
    assert usage["today"]["by_repo"]["demo"]["tokens"] == 1200
    delivered = usage["delivered"]
    assert (delivered["count"], delivered["tokens_per_item"]) == (1, 1200)
    assert delivered["cost_per_item_usd"] == pytest.approx(0.02)

    base = ["--nats-url", harness.url]
    detail = CliRunner().invoke(main, [*base, "status", item, "--json"])
    assert detail.exit_code == 0, detail.output
    record = json.loads(detail.output)
    assert (record["input_tokens"], record["output_tokens"], record["tokens"]) == (1000, 200, 1200)
    assert record["cost_usd"] == pytest.approx(0.02)
    (left,) = [e for e in record["history"] if e["old"] == "development"]
    assert (left["input_tokens"], left["output_tokens"]) == (1000, 200)
    assert left["cost_usd"] == pytest.approx(0.02)
    assert all(e["cost_usd"] == 0 for e in record["history"] if e["old"] != "development")

    overview = CliRunner().invoke(main, [*base, "status", "--all", "--json"])
    assert overview.exit_code == 0, overview.output
    status = json.loads(overview.output)
    assert status["usage"]["delivered"]["count"] == 1
    (row,) = status["tasks"]
    assert row["tokens"] == 1200
    table = CliRunner().invoke(main, [*base, "status"])
    assert "Cost ledger" in table.output
    assert "$0.0200 / 1,200" in table.output

    tracker = LocalTracker(harness.layout.tracker)
    wait_until(
        lambda: any(
            "spent $0.0200, 1,200 tokens on development" in c for c in tracker.comments(item)
        ),
        what="the stage-change comment with the development visit's cost",
    )


def test_a_repository_over_its_daily_ceiling_holds_the_next_items_job(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(agents=DEVELOPER, queue={"max_repo_usd_per_day": 0.01})
    first = harness.submit("Spend the budget")["task"]["id"]

    def _held() -> str:
        status: dict[str, Any] = harness.client.request(subjects.STATUS_QUEUE)
        held: dict[str, str] = status.get("held") or {}
        return held.get("demo", "")

    harness.wait_stage(first, "development", "review", "testing")
    why = wait_until(_held, what="the repository held by its daily ceiling")
    assert "queue.max_repo_usd_per_day" in why
    second = harness.submit("Wait for tomorrow")["task"]["id"]

    def _second_job_held() -> Any:
        jobs = [j for j in harness.jobs().values() if j.task_id == second]
        return jobs if jobs and all(j.held for j in jobs) else None

    (job,) = wait_until(_second_job_held, what=f"{second}'s job held")
    assert (job.status, job.attempts) == ("queued", 0)
    assert "queue.max_repo_usd_per_day" in job.held
    assert harness.task(second)["job_status"] == "queued"
    assert _usage(harness)["today"]["by_repo"]["demo"]["cost_usd"] == pytest.approx(0.02)
