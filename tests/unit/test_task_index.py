"""The status index: counts by state, stage and repository, and pages walked by cursor."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from actors.task_index import (
    MAX_LIMIT,
    PageError,
    PageRequest,
    StatusIndex,
    decode_cursor,
    encode_cursor,
    parse_request,
    status_row,
)
from actors.task_policy import Task
from conveyor.clock import FakeClock


def _task(n: int, at: float, *, repo: str = "demo", stage: str = "development", **kw: Any) -> Task:
    return Task(
        id=f"T-{n}", repo=repo, title=f"task {n}", branch=f"feature/T-{n}", stage=stage,
        created_at=at, updated_at=at, **kw,
    )  # fmt: skip


class Board:
    """An index with the tasks it was given, as the StageEngine holds both."""

    def __init__(self) -> None:
        self.index = StatusIndex()
        self.tasks: dict[str, Task] = {}

    def put(self, task: Task) -> None:
        self.tasks[task.id] = task
        self.index.put(task)

    def row(self, task_id: str) -> dict[str, Any]:
        return status_row(self.tasks[task_id])

    def page(self, max_bytes: int = 1 << 20, **query: Any) -> dict[str, Any]:
        return self.index.page(PageRequest(**query), self.row, max_bytes)

    def walk(self, max_bytes: int = 1 << 20, **query: Any) -> list[str]:
        ids: list[str] = []
        cursor = ""
        while True:
            page = self.page(max_bytes, cursor=cursor, **query)
            ids += [row["id"] for row in page["tasks"]]
            cursor = page["next"]
            if not cursor:
                return ids


def test_counts_follow_every_change_of_stage_escalation_and_repo() -> None:
    board, clock = Board(), FakeClock()
    for n in range(6):
        clock.advance(1.0)
        board.put(_task(n, clock.now(), repo="demo" if n % 2 else "web"))
    board.put(_task(0, 1.0, repo="web", stage="done"))
    board.put(_task(1, 2.0, escalated=True))
    board.put(_task(2, 3.0, repo="web", stage="cancelled"))
    counts = board.index.counts()
    assert counts["tasks"] == 6
    assert counts["by_state"] == {"active": 4, "finished": 2, "escalated": 1}
    assert counts["by_stage"] == {"development": 4, "done": 1, "cancelled": 1}
    assert counts["by_repo"] == {
        "demo": {"active": 3, "escalated": 1},
        "web": {"active": 1, "finished": 2},
    }
    board.put(_task(1, 2.0, stage="done", escalated=True))
    counts = board.index.counts()
    assert counts["by_state"] == {"active": 3, "finished": 3, "escalated": 0}
    assert counts["by_repo"]["demo"] == {"active": 2, "finished": 1}


def test_a_cursor_walks_every_task_once_in_creation_order_whatever_the_load_order() -> None:
    board = Board()
    tasks = [_task(n, float(n // 3)) for n in range(250)]  # ties on created_at: the id decides
    for task in random.Random(7).sample(tasks, len(tasks)):
        board.put(task)
    walked = board.walk(state="all", limit=7)
    assert walked == [t.id for t in sorted(tasks, key=lambda t: (t.created_at, t.id))]
    first = board.page(state="all", limit=7)
    assert (len(first["tasks"]), first["total"]) == (7, 250)


def test_tasks_added_while_walking_are_listed_once_and_nothing_is_repeated() -> None:
    board, clock = Board(), FakeClock()
    for n in range(20):
        clock.advance(1.0)
        board.put(_task(n, clock.now()))
    seen: list[str] = []
    cursor, added = "", 20
    while True:
        page = board.page(state="all", limit=2, cursor=cursor)
        seen += [row["id"] for row in page["tasks"]]
        cursor = page["next"]
        if not cursor:
            break
        if added < 30:  # a task submitted between two pages
            clock.advance(1.0)
            board.put(_task(added, clock.now()))
            added += 1
    assert len(seen) == len(set(seen))
    assert set(seen) == set(board.tasks)
    assert added == 30


def test_filters_by_state_stage_and_repo_and_report_their_total() -> None:
    board = Board()
    board.put(_task(1, 1.0, repo="web", stage="review"))
    board.put(_task(2, 2.0, repo="web", stage="done"))
    board.put(_task(3, 3.0, repo="demo", stage="review", escalated=True))
    board.put(_task(4, 4.0, repo="web", stage="review"))

    def ids(**query: Any) -> tuple[list[str], int]:
        page = board.page(**query)
        return [row["id"] for row in page["tasks"]], page["total"]

    assert ids() == (["T-1", "T-3", "T-4"], 3)  # the default: active tasks
    assert ids(state="finished") == (["T-2"], 1)
    assert ids(state="escalated") == (["T-3"], 1)
    assert ids(state="all", repo="web") == (["T-1", "T-2", "T-4"], 3)
    assert ids(stage="review", repo="web") == (["T-1", "T-4"], 2)
    assert ids(state="all", repo="nowhere") == ([], 0)


def test_a_page_stops_before_the_reply_would_pass_the_payload_limit() -> None:
    board = Board()
    for n in range(300):
        board.put(_long(n))
    max_bytes = 20_000
    pages = 0
    cursor = ""
    walked: list[str] = []
    while True:
        page = board.page(max_bytes, state="all", limit=MAX_LIMIT, cursor=cursor)
        assert len(msgspec.json.encode(page)) < max_bytes
        walked += [row["id"] for row in page["tasks"]]
        pages += 1
        cursor = page["next"]
        if not cursor:
            break
    assert walked == [f"T-{n}" for n in range(300)]
    assert pages > 5


def _long(n: int) -> Task:
    task = _task(n, float(n))
    return msgspec.structs.replace(task, title="x" * 200, last_reason="why " * 50)


def test_the_row_is_the_summary_with_the_tokens_spent() -> None:
    row = status_row(_task(1, 1.0, input_tokens=10, output_tokens=5, cost_usd=0.5))
    assert (row["id"], row["cost_usd"], row["tokens"], row["input_tokens"]) == ("T-1", 0.5, 15, 10)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"state": "sleeping"}', "state"),
        (b'{"limit": 0}', "limit"),
        (b'{"limit": 1001}', "limit"),
        (b'{"cursor": "not a cursor!"}', "cursor"),
        (b'{"cursor": "bm9wZQ"}', "cursor"),
        (b'{"colour": "red"}', "body"),
        (b'{"limit": "ten"}', "body"),
        (b"[1, 2", "body"),
    ],
)
def test_bad_requests_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(PageError) as err:
        parse_request(body)
    assert err.value.field == field


def test_an_empty_body_means_the_defaults_and_cursors_round_trip() -> None:
    defaults = PageRequest(state="active", stage="", repo="", cursor="", limit=100)
    assert parse_request(b"") == defaults
    key = (1765000000.123456, "DEMO-42")
    assert decode_cursor(encode_cursor(key)) == key
    assert parse_request(b'{"cursor": "%s"}' % encode_cursor(key).encode()).cursor


def test_putting_an_unchanged_task_again_changes_nothing() -> None:
    board = Board()
    board.put(_task(1, 1.0))
    before = board.index.counts()
    board.put(_task(1, 1.0, job_status="running"))
    assert board.index.counts() == before
    assert board.walk(state="all") == ["T-1"]
