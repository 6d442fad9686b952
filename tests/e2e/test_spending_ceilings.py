"""A task ceiling end to end: the heartbeat that crosses it kills the running agent."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bus import subjects
from bus.messages import Alert
from tests.actors.conftest import Captured
from tests.harness import Harness

pytestmark = pytest.mark.e2e

# Reports 1,200 tokens at once, then keeps going as if it had much more to do. (A plain
# command has no model to price its running totals by: the tokens are what counts.)
SPENDING_DEVELOPER = """
import json, time
print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                  "usage": {"input_tokens": 1000, "output_tokens": 200},
                  "total_cost_usd": 0.5}), flush=True)
time.sleep(120)
"""


def test_a_running_agent_is_killed_when_its_task_crosses_its_ceiling(
    harness_factory: Callable[..., Harness],
) -> None:
    # Given a task ceiling of 1,000 tokens and a developer that uses 1,200 and keeps running
    harness = harness_factory(
        agents={"developer": {"command": ["{python}", "-P", "-c", SPENDING_DEVELOPER]}},
        pipeline={"max_task_tokens": 1000},
    )
    alerts = Captured(harness.client.bus, subjects.ALERTS, Alert)
    item = harness.submit("Too dear")["task"]["id"]

    # When it runs, the task is escalated (well before the agent's two minutes are up)
    task = harness.wait_stage(item, "escalated", deadline_s=60)

    # Then the run was killed for the ceiling, once, and its job failed without a retry
    assert task["stage"] == "development"
    [job] = [j for j in harness.jobs().values() if j.task_id == item and j.role == "developer"]
    assert (job.status, job.attempts, job.outcome) == ("failed", 1, "over_budget")
    assert "pipeline.max_task_tokens" in job.ceiling
    assert (job.input_tokens, job.output_tokens) == (1000, 200)
    assert task["tokens"] == 1200
    texts = [a.text for a in alerts.of(Alert) if a.task_id == item]
    assert any("pipeline.max_task_tokens" in t and "escalated" in t for t in texts), texts
    assert any("killed on crossing a spending ceiling" in t for t in texts), texts
