"""Submits through the service, many in flight at once, on a real nats-server.

The submit endpoint runs on the bus loop (`actors/submit_front.py`): the StageEngine
plans each submit and the loop creates the record. Racing submits must still get
distinct ids, one id given by many at once must be stored once, and refused input
must write nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from actors.task_policy import Task
from bus import subjects
from bus.bridge import Bus
from bus.server import EmbeddedNats
from tests.harness import Harness, make_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("submit-front")
    server = EmbeddedNats(root / "nats")
    server.start()
    h = Harness(make_config(root / "data", server.url), server.url).start()
    try:
        yield h
    finally:
        h.close()
        server.stop()


def _submit_all(url: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send every submit at once from one connection; the replies in the same order."""

    async def _all() -> list[dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            replies = await asyncio.gather(
                *(
                    nc.request(subjects.CMD_SUBMIT, json.dumps(body).encode(), timeout=20)
                    for body in bodies
                )
            )
            return [json.loads(reply.data) for reply in replies]
        finally:
            await nc.close()

    return asyncio.run(_all())


def test_racing_submits_get_distinct_ids_each_stored_and_known_to_the_engine(
    harness: Harness,
) -> None:
    # When 40 submits without an id race, all in flight together
    replies = _submit_all(harness.url, [{"repo": "demo", "title": f"race {n}"} for n in range(40)])

    # Then each is answered ok with an id of its own
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]]
    ids = [r["task"]["id"] for r in replies]
    assert len(set(ids)) == 40, sorted(ids)
    # ... each id holds its own submit's record, and the engine answers for every one
    store = harness.client.bus.store(subjects.BUCKET_TASKS, Task)
    for reply in replies:
        stored = store.get(reply["task"]["id"])
        assert stored is not None
        assert stored.value.title == reply["task"]["title"]
        assert harness.task(reply["task"]["id"])["title"] == reply["task"]["title"]


def test_one_id_submitted_by_many_at_once_is_stored_once(harness: Harness) -> None:
    # When eight submits give the same id at once
    body = {"repo": "demo", "title": "same id", "id": "DEMO-5000"}
    replies = _submit_all(harness.url, [body] * 8)

    # Then one created it and the rest were told it was already submitted
    assert all(r["ok"] for r in replies), replies
    assert sorted(r.get("note", "") for r in replies) == [""] + ["already submitted"] * 7
    # ... and every reply is about the one stored task
    stored = harness.client.bus.store(subjects.BUCKET_TASKS, Task).get("DEMO-5000")
    assert stored is not None
    assert [e.new for e in stored.value.history] == ["created"]
    created = [r for r in replies if not r.get("note")]
    first = {k: created[0]["task"][k] for k in ("id", "job_id", "branch")}
    assert all({k: r["task"][k] for k in first} == first for r in replies)
    # The same id with another title is refused, naming the field
    clash = harness.submit("other title", item_id="DEMO-5000")
    assert (clash["ok"], clash["field"]) == (False, "id")


def test_refused_submits_write_nothing_and_take_no_number(harness: Harness) -> None:
    store = harness.client.bus.store(subjects.BUCKET_TASKS, Task)
    first = harness.submit("numbered")
    known = {row["id"] for row in harness.tasks()}
    before = store.last_seq()

    # When submits with bad input arrive, all at once
    bad = [
        {"repo": "nope", "title": "x"},
        {"repo": "demo", "title": ""},
        {"repo": "demo", "title": "x", "id": "OTHER-1"},
        {"repo": "demo", "title": "x", "description": "\x1b[31m"},
    ]
    replies = _submit_all(harness.url, bad)

    # Then each is refused naming its field, and nothing was written
    assert [(r["ok"], r["field"]) for r in replies] == [
        (False, "repo"),
        (False, "title"),
        (False, "id"),
        (False, "description"),
    ]
    # (the writes since are the ticks clearing the outboxes of tasks stored before)
    assert set(store.since(before)[0]) <= known
    # ... and the next good submit takes the next number: a refusal reserved none
    number = int(first["task"]["id"].rsplit("-", 1)[1])
    assert harness.submit("next")["task"]["id"] == f"DEMO-{number + 1}"


def test_an_endpoint_on_the_loop_handles_requests_in_flight_together(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    bus = Bus.connect(server.url)
    try:
        both = asyncio.Event()
        seen: list[bytes] = []

        async def _handler(_subject: str, data: bytes) -> bytes:
            # Answers only once two requests are inside: one at a time would never answer.
            seen.append(data)
            if len(seen) == 2:
                both.set()
            await asyncio.wait_for(both.wait(), timeout=10)
            return data

        bus.add_service("together", "0.0.1", "test", [("echo", "test.together", _handler)])

        async def _two() -> list[bytes]:
            nc = await nats.connect(server.url)
            try:
                replies = await asyncio.gather(
                    nc.request("test.together", b"a", timeout=15),
                    nc.request("test.together", b"b", timeout=15),
                )
                return [r.data for r in replies]
            finally:
                await nc.close()

        assert asyncio.run(_two()) == [b"a", b"b"]
    finally:
        bus.close()
        server.stop()
