"""Status indexes kept with the StageEngine's tasks: counts and ordered ids per filter.

The StageEngine puts every task here as it changes (and once per task at start,
oldest first), so the overview's counts cost O(stages + repositories) and a page
of `conveyor.status.tasks` costs O(page), never O(all tasks).

Tasks are ordered by (created_at, id): a task's place never changes and new
tasks come last, so a cursor (the key of the last row sent) walks every task of
a filter exactly once even while tasks are added.
"""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from typing import Any

import msgspec

from actors.task_policy import Task
from actors.task_summary import summarize
from actors.usage_policy import as_dict

STATES = ("active", "finished", "escalated", "all")
"""`state` filters: active = not done nor cancelled (escalated included),
escalated = active and escalated, finished = done or cancelled."""
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
ENVELOPE_BYTES = 1024
"""Room kept for the reply's envelope (`next`, `total`) and the bus's own headers."""

Key = tuple[float, str]
Bucket = tuple[str, str, str]
"""(state, stage, repo); an empty stage or repo matches every one."""


class PageError(ValueError):
    """A bad page request; `field` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PageRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `conveyor.status.tasks` (an empty body means these defaults)."""

    state: str = "active"
    stage: str = ""
    repo: str = ""
    cursor: str = ""
    limit: int = DEFAULT_LIMIT


def parse_request(data: bytes) -> PageRequest:
    """Decode and check a page request; raise PageError naming the field."""
    try:
        request = msgspec.json.decode(data.strip() or b"{}", type=PageRequest)
    except msgspec.ValidationError as err:
        raise PageError("body", str(err)) from err
    except msgspec.DecodeError as err:
        raise PageError("body", f"not valid JSON: {err}") from err
    if request.state not in STATES:
        raise PageError("state", f"{request.state!r} is not one of {', '.join(STATES)}")
    if not 1 <= request.limit <= MAX_LIMIT:
        raise PageError("limit", f"{request.limit} is not within 1..{MAX_LIMIT}")
    decode_cursor(request.cursor)
    return request


def encode_cursor(key: Key) -> str:
    """An opaque cursor for the row with `key`."""
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key | None:
    """The key a cursor points after, None for the first page; raise PageError when bad."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, task_id = msgspec.json.decode(raw, type=tuple[float, str])
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError) as err:
        raise PageError("cursor", "not a cursor from a previous reply") from err
    return (created_at, task_id)


def status_row(task: Task) -> dict[str, Any]:
    """A task's row in `conveyor.status.tasks`: its summary and the tokens it spent."""
    row: dict[str, Any] = msgspec.to_builtins(summarize(task))
    row.update((k, v) for k, v in as_dict(task.usage).items() if k != "cost_usd")
    return row


def states_of(task: Task) -> tuple[str, ...]:
    """The `state` filters that list `task`."""
    if task.terminal:
        return ("all", "finished")
    return ("all", "active", "escalated") if task.escalated else ("all", "active")


def _buckets(task: Task) -> tuple[Bucket, ...]:
    return tuple(
        (state, stage, repo)
        for state in states_of(task)
        for stage in (task.stage, "")
        for repo in (task.repo, "")
    )


class StatusIndex:
    """Ordered task keys per (state, stage, repo) filter; the counts are their lengths."""

    def __init__(self) -> None:
        self._lists: dict[Bucket, list[Key]] = {}
        self._where: dict[str, tuple[Key, tuple[Bucket, ...]]] = {}
        self._shared: dict[tuple[Bucket, ...], tuple[Bucket, ...]] = {}
        self._settled: dict[tuple[str, str], tuple[Bucket, ...]] = {}

    def put(self, task: Task) -> None:
        """Index `task` as it is now; O(1) when its state, stage and repo did not change."""
        self._place(task.id, (task.created_at, task.id), _buckets(task))

    def put_settled(self, task_id: str, created_at: float, stage: str, repo: str) -> None:
        """Index a settled (done or cancelled) task known only by its kept row.

        Start-up puts every settled task (100,000 after a year): their filter sets
        come from a cache instead of being built and hashed once per task.
        """
        buckets = self._settled.get((stage, repo))
        if buckets is None:
            buckets = tuple(
                (state, s, r)
                for state in ("all", "finished")
                for s in (stage, "")
                for r in (repo, "")
            )
            buckets = self._settled[stage, repo] = self._shared.setdefault(buckets, buckets)
        self._place(task_id, (created_at, task_id), buckets, shared=True)

    def drop(self, task_id: str) -> None:
        """Forget a task (its record was deleted)."""
        before = self._where.pop(task_id, None)
        if before is not None:
            for bucket in before[1]:
                self._remove(bucket, before[0])

    def _place(
        self, task_id: str, key: Key, buckets: tuple[Bucket, ...], *, shared: bool = False
    ) -> None:
        # One shared tuple per distinct filter set: at 100,000 tasks a copy each is ~60 MB.
        # (`shared`: it is that tuple already, so the hash of its 24 strings is not needed.)
        if not shared:
            buckets = self._shared.setdefault(buckets, buckets)
        before = self._where.get(task_id)
        if before == (key, buckets):
            return
        if before is not None:
            for bucket in before[1]:
                self._remove(bucket, before[0])
        for bucket in buckets:
            keys = self._lists.setdefault(bucket, [])
            if not keys or keys[-1] < key:
                keys.append(key)  # the usual case: a new task, or a start-up load oldest first
            else:
                insort(keys, key)
        self._where[task_id] = (key, buckets)

    def _remove(self, bucket: Bucket, key: Key) -> None:
        keys = self._lists[bucket]
        at = bisect_left(keys, key)
        if at < len(keys) and keys[at] == key:
            del keys[at]
        if not keys:
            del self._lists[bucket]

    def total(self, state: str = "all", stage: str = "", repo: str = "") -> int:
        """How many tasks match the filter."""
        return len(self._lists.get((state, stage, repo), ()))

    def counts(self) -> dict[str, Any]:
        """The overview's counts: by state, by stage and per repository (by state)."""
        by_stage: dict[str, int] = {}
        by_repo: dict[str, dict[str, int]] = {}
        for (state, stage, repo), keys in self._lists.items():
            if state == "all" and stage and not repo:
                by_stage[stage] = len(keys)
            if state != "all" and repo and not stage:
                by_repo.setdefault(repo, {})[state] = len(keys)
        return {
            "tasks": self.total(),
            "by_state": {state: self.total(state) for state in STATES if state != "all"},
            "by_stage": by_stage,
            "by_repo": by_repo,
        }

    def page(
        self,
        request: PageRequest,
        row_of: Callable[[str], dict[str, Any]],
        max_bytes: int,
    ) -> dict[str, Any]:
        """One page: at most `limit` rows whose encoded reply stays under `max_bytes`."""
        keys = self._lists.get((request.state, request.stage, request.repo), [])
        after = decode_cursor(request.cursor)
        at = bisect_right(keys, after) if after is not None else 0
        budget = max_bytes - ENVELOPE_BYTES
        rows: list[dict[str, Any]] = []
        last: Key | None = None
        while at < len(keys) and len(rows) < request.limit:
            row = row_of(keys[at][1])
            size = len(msgspec.json.encode(row)) + 1
            if rows and size > budget:
                break
            # A first row always goes: a title is at most 200 characters, far under any payload.
            budget -= size
            rows.append(row)
            last = keys[at]
            at += 1
        return {
            "tasks": rows,
            "next": encode_cursor(last) if last is not None and at < len(keys) else "",
            "total": len(keys),
        }
