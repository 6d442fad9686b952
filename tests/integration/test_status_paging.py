"""Paged status on a real nats-server with thousands of stored tasks.

The tasks are written straight into the tasks bucket before the node starts (as a
year of use would leave them); the server's max payload is small, so a page of
long-titled rows must stop by bytes, not only by its limit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from actors.task_policy import Task
from bus import subjects
from bus.bridge import Bus
from bus.messages import encode
from bus.server import EmbeddedNats
from conveyor.app.cli import main
from tests.harness import Harness, make_config

STORED = 3_000
ESCALATED = 40
ACTIVE = 160
MAX_PAYLOAD = 128 * 1024


def _stored(n: int) -> Task:
    """Task n: the newest ACTIVE are in analysis (some escalated), the rest done."""
    active = n >= STORED - ACTIVE
    return Task(
        id=f"DEMO-{n + 1}",
        repo="demo",
        title=f"{n:05d} " + "long title " * 17,
        branch=f"feature/DEMO-{n + 1}-long-title",
        stage="analysis" if active else "done",
        escalated=active and n % (ACTIVE // ESCALATED) == 0,
        last_reason="finished long ago " * 10,
        created_at=1_700_000_000.0 + n,
        updated_at=1_700_000_000.0 + n,
    )


def _write_tasks(url: str) -> None:
    bus = Bus.connect(url, name="paging-test-writer")
    try:
        bus.setup()
        kv = bus.call(bus.js.key_value(subjects.BUCKET_TASKS))

        async def _put_all() -> None:
            for start in range(0, STORED, 500):
                chunk = [_stored(n) for n in range(start, min(start + 500, STORED))]
                await asyncio.gather(*(kv.create(t.id, encode(t)) for t in chunk))

        bus.call(_put_all(), timeout_s=120.0)
    finally:
        bus.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("paging")
    server = EmbeddedNats(root / "nats", max_payload=MAX_PAYLOAD)
    server.start()
    _write_tasks(server.url)
    h = Harness(make_config(root / "data", server.url), server.url).start()
    try:
        yield h
    finally:
        h.close()
        server.stop()


def _cli(harness: Harness, *args: str) -> Any:
    return CliRunner().invoke(main, ["--nats-url", harness.url, "status", *args])


def test_status_all_json_lists_every_task_exactly_once_in_pages(harness: Harness) -> None:
    result = _cli(harness, "--all", "--json")
    assert result.exit_code == 0, result.output[-2000:]
    lines = result.output.splitlines()
    pages = [json.loads(line) for line in lines]
    ids = [row["id"] for page in pages for row in page["tasks"]]
    assert len(ids) == STORED
    assert sorted(ids) == sorted(f"DEMO-{n + 1}" for n in range(STORED))
    assert ids[:3] == ["DEMO-1", "DEMO-2", "DEMO-3"]  # oldest first
    assert len(pages) >= STORED // 100
    assert all(page["total"] == STORED for page in pages)
    assert pages[0]["overview"]["by_state"]["finished"] == STORED - ACTIVE
    assert "usage" in pages[0]
    assert "overview" not in pages[1]
    assert all(len(line) < MAX_PAYLOAD for line in lines)


def test_the_default_table_shows_active_tasks_and_the_counts(harness: Harness) -> None:
    result = _cli(harness)
    assert result.exit_code == 0, result.output[-2000:]
    assert f"active {ACTIVE}, finished {STORED - ACTIVE}, escalated {ESCALATED}" in result.output
    assert f"{ACTIVE} of {ACTIVE} active tasks" in result.output
    # Titles start with the task's number; a narrow terminal cuts the id column.
    assert f"{STORED - 1:05d}" in result.output
    assert "00000" not in result.output  # finished: only with --all


def test_a_page_with_the_largest_limit_stops_under_the_max_payload(harness: Harness) -> None:
    body = json.dumps({"state": "all", "limit": 1000}).encode()
    raw = harness.client.bus.request(subjects.STATUS_TASKS, body, timeout_s=10)
    page = json.loads(raw)
    assert len(raw) < MAX_PAYLOAD
    assert 0 < len(page["tasks"]) < 1000
    assert page["next"]
    assert page["total"] == STORED


def test_filters_page_through_only_their_tasks(harness: Harness) -> None:
    rows = [
        row
        for page in harness.client.pages(state="escalated", stage="analysis", repo="demo", limit=7)
        for row in page["tasks"]
    ]
    assert len(rows) == ESCALATED
    assert all(row["escalated"] and row["stage"] == "analysis" for row in rows)
    (first,) = list(harness.client.pages(state="finished", stage="done", limit=1000))[:1]
    assert first["total"] == STORED - ACTIVE
    nowhere = harness.client.request(subjects.STATUS_TASKS, {"state": "all", "repo": "nowhere"})
    assert nowhere == {"tasks": [], "next": "", "total": 0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"state": "sleeping"}, "state"),
        ({"limit": 5000}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
    ],
)
def test_bad_page_requests_are_refused_naming_the_field(
    harness: Harness, body: dict[str, Any], field: str
) -> None:
    reply = harness.client.request(subjects.STATUS_TASKS, body)
    assert reply["ok"] is False, reply
    assert reply["field"] == field
    assert field in reply["error"]
    assert harness.client.request(subjects.STATUS_TASKS)["total"] == ACTIVE


def test_the_overview_counts_every_stored_task(harness: Harness) -> None:
    overview = harness.client.request(subjects.STATUS)
    assert overview["tasks"] == STORED
    assert overview["by_stage"] == {"done": STORED - ACTIVE, "analysis": ACTIVE}
    assert overview["by_state"] == {
        "active": ACTIVE,
        "finished": STORED - ACTIVE,
        "escalated": ESCALATED,
    }
    assert overview["by_repo"] == {"demo": {"active": ACTIVE, "escalated": ESCALATED,
                                            "finished": STORED - ACTIVE}}  # fmt: skip
