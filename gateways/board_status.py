"""What the board and `/metrics` read: the status subjects, asked on the bus loop.

Every read is a request to a status subject the control process answers in
O(stages + page) (`conveyor.status` keeps its counts as tasks change, and
`conveyor.status.tasks` pages an index), so the board's first page and a scrape
cost the same with 100 or 100,000 stored tasks. One snapshot serves every page
view and scrape for `board.refresh_s`; concurrent askers share one read.

A task's page adds that task's jobs and effects, read from their KV buckets by
key prefix (`<ID>.>`): O(the task's own records).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import nats.errors
import nats.js.api as js_api
import nats.js.errors

from bus import subjects
from bus.bridge import Bus
from conveyor.clock import Clock

ASK_TIMEOUT_S = 12.0
"""Longer than the overview's own 10 s wait for an actor that does not answer."""
FIRST_PAGE = {"state": "active", "limit": 200}
"""The board's one page of task rows: the oldest active tasks, as `conveyor status` lists."""
MAX_RECORDS = 500
"""A task's jobs or effects read at most (a task in a long rework loop has many)."""

SNAPSHOT_PARTS = {
    "overview": (subjects.STATUS, b""),
    "page": (subjects.STATUS_TASKS, msgspec.json.encode(FIRST_PAGE)),
    "queue": (subjects.STATUS_QUEUE, b""),
    "leases": (subjects.status_actor("lease_keeper"), b""),
    "usage": (subjects.STATUS_USAGE, b""),
}


def _unavailable(subject: str, err: Exception) -> dict[str, Any]:
    return {"ok": False, "error": f"no answer on {subject}: {type(err).__name__}"}


class StatusReader:
    """Cached reads of the status subjects; call its coroutines on the bus loop only."""

    def __init__(self, bus: Bus, clock: Clock, refresh_s: float) -> None:
        self._bus = bus
        self._clock = clock
        self._refresh_s = refresh_s
        self._snapshot: dict[str, Any] = {}
        self._taken_at = float("-inf")
        self._pending: asyncio.Task[dict[str, Any]] | None = None

    async def ask(self, subject: str, payload: bytes = b"") -> Any:
        """One status request; an `{ok: false}` dict when nobody answers."""
        try:
            reply = await self._bus.nc.request(subject, payload, timeout=ASK_TIMEOUT_S)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as err:
            return _unavailable(subject, err)
        try:
            return msgspec.json.decode(reply.data)
        except msgspec.DecodeError:
            return {"ok": False, "error": f"{subject} answered with non-JSON"}

    async def snapshot(self, *, fresh: bool = False) -> dict[str, Any]:
        """Overview, first page, queue, leases and usage, at most `refresh_s` old."""
        if not fresh and self._clock.monotonic() - self._taken_at < self._refresh_s:
            return self._snapshot
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._read())
        pending = self._pending
        try:
            return await asyncio.shield(pending)
        finally:
            if pending.done() and self._pending is pending:
                self._pending = None

    async def _read(self) -> dict[str, Any]:
        names = list(SNAPSHOT_PARTS)
        answers = await asyncio.gather(*(self.ask(*SNAPSHOT_PARTS[name]) for name in names))
        self._snapshot = dict(zip(names, answers, strict=True))
        self._taken_at = self._clock.monotonic()
        return self._snapshot

    def stale(self) -> None:
        """The next snapshot is read anew (a task moved: the board must not show it back)."""
        self._taken_at = float("-inf")

    def last(self) -> dict[str, Any]:
        """The latest snapshot without asking (empty before the first read)."""
        return self._snapshot

    async def task(self, task_id: str) -> dict[str, Any]:
        """One task's record with its jobs (attempts included) and its effects."""
        record = await self.ask(subjects.status_task(task_id))
        if not isinstance(record, dict) or record.get("ok") is False:
            return record if isinstance(record, dict) else {"ok": False, "error": "bad answer"}
        jobs, effects = await asyncio.gather(
            self._records(subjects.BUCKET_JOBS, task_id),
            self._records(subjects.BUCKET_EFFECTS, task_id),
        )
        jobs.sort(key=lambda job: (job.get("enqueued_at") or 0.0, job.get("id", "")))
        effects.sort(key=lambda effect: (effect.get("started_at") or 0.0, effect.get("key", "")))
        return {**record, "jobs": [_job_row(job) for job in jobs], "effects": effects}

    async def _records(self, bucket: str, task_id: str) -> list[dict[str, Any]]:
        """The latest value of every key `<task_id>.…` in `bucket` (one ephemeral consumer)."""
        subject = f"$KV.{bucket}.{task_id}.>"
        return await read_last_per_subject(self._bus, f"KV_{bucket}", subject, MAX_RECORDS)


async def read_last_per_subject(
    bus: Bus, stream: str, subject: str, limit: int
) -> list[dict[str, Any]]:
    """The newest message of each subject under `subject`, decoded as JSON, at most `limit`."""
    config = js_api.ConsumerConfig(
        deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=js_api.AckPolicy.NONE,
        inactive_threshold=5.0,
    )
    try:
        sub = await bus.js.pull_subscribe(subject, stream=stream, config=config)
    except nats.js.errors.NotFoundError:
        return []
    out: list[dict[str, Any]] = []
    try:
        info = await sub.consumer_info()
        wanted = min(int(info.num_pending or 0), limit)
        while len(out) < wanted:
            batch = await sub.fetch(min(100, wanted - len(out)), timeout=ASK_TIMEOUT_S)
            for msg in batch:
                if msg.data and (msg.headers or {}).get("KV-Operation") is None:
                    try:
                        out.append(msgspec.json.decode(msg.data))
                    except msgspec.DecodeError:
                        continue
                else:
                    wanted -= 1  # a delete or purge marker: the key is gone
    finally:
        await sub.unsubscribe()
    return out


def _job_row(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the task page shows it (the brief and deploy commits left out)."""
    keep = (
        "id",
        "stage",
        "role",
        "visit",
        "status",
        "attempts",
        "max_attempts",
        "enqueued_at",
        "started_at",
        "finished_at",
        "exit_code",
        "error",
        "reason",
        "outcome",
        "cost_usd",
        "host",
    )
    return {key: job.get(key) for key in keep}
