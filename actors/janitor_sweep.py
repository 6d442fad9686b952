"""The Janitor's incremental sweep: cursors over writes, never a read of every bucket.

A sweep walks `conveyor_tasks` from a cursor (a stream sequence), at most
`SWEEP_BATCH` task writes per walk. The bucket keeps one message per key,
so a task comes once, at its latest write. The walk stops at the first settled task
that is still too young: later writes are younger still. Tasks that were not settled
enough yet (a run not reported, a watch open) wait in a short list and are tried
again on each sweep. A task's jobs, runs and effects are found by key prefix (their
keys start with the task id), never by reading whole buckets. Effects that name no
task (`telegram.…`) have a cursor of their own over their keys. The cursors are
kept in `conveyor_index`, so a restart goes on where the last sweep stopped.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from actors import janitor_policy as policy
from actors.launcher_policy import Run
from actors.monitor_policy import Watch
from actors.queue_policy import Job
from actors.task_policy import Task
from bus import subjects
from bus.bridge import Bus
from bus.effects import DONE, Effect
from bus.kv import Store, Versioned

CURSOR_KEY = "janitor.cursor"
SWEEP_BATCH = 100
"""Task writes one walk examines at most; a backlog goes on at the next, paced sweep."""


class SweepCursor(msgspec.Struct, kw_only=True):
    """Where each walk stands: sequences in `conveyor_tasks` (and `conveyor_effects`)."""

    files: int = 0
    records: int = 0
    taskless: dict[str, int] = msgspec.field(default_factory=dict)
    files_waiting: list[str] = msgspec.field(default_factory=list)
    records_waiting: list[str] = msgspec.field(default_factory=list)


class Stores(NamedTuple):
    """The buckets the Janitor reads, and deletes closed records from."""

    tasks: Store[Task]
    jobs: Store[Job]
    runs: Store[Run]
    watches: Store[Watch]
    effects: Store[Effect]
    cursor: Store[SweepCursor] | None = None


def stores(bus: Bus) -> Stores:
    """The Janitor's views of the buckets it keeps trim."""
    return Stores(
        tasks=bus.store(subjects.BUCKET_TASKS, Task),
        jobs=bus.store(subjects.BUCKET_JOBS, Job),
        runs=bus.store(subjects.BUCKET_RUNS, Run),
        watches=bus.store(subjects.BUCKET_MONITOR, Watch),
        effects=bus.store(subjects.BUCKET_EFFECTS, Effect),
        cursor=bus.store(subjects.BUCKET_INDEX, SweepCursor),
    )


class TaskRecords(NamedTuple):
    """One task's records, read by key prefix."""

    jobs: dict[str, Versioned[Job]]
    runs: dict[str, Versioned[Run]]
    watches: dict[str, Versioned[Watch]]
    effects: dict[str, Versioned[Effect]]

    def settled(self, task: Task, before: float) -> bool:
        """True when `task` is settled at `before` with none of these records still open."""
        return task.id in policy.settled(
            [task],
            before=before,
            jobs=[e.value for e in self.jobs.values()],
            runs=[e.value for e in self.runs.values()],
            watches=[e.value for e in self.watches.values()],
        )


def settled_now(stores: Stores, task: Task, before: float) -> bool:
    """`records_of(...).settled(task, before)`, reading only what can still say no.

    The task itself first, then its watch (open for the post-deploy window, the
    usual reason to wait), then its runs and jobs; never its effects, which do not
    count. A task tried again every interval while its watch is open costs one read.
    """
    if task.id not in policy.settled([task], before=before):
        return False
    watch = stores.watches.get(task.id)
    if watch is not None and not watch.value.closed:
        return False
    runs = stores.runs.get_many(stores.runs.keys_under(f"{task.id}."))
    if task.id not in policy.settled([task], before=before, runs=[e.value for e in runs.values()]):
        return False
    jobs = stores.jobs.get_many(stores.jobs.keys_under(f"{task.id}."))
    return task.id in policy.settled([task], before=before, jobs=[e.value for e in jobs.values()])


def records_of(stores: Stores, task_id: str) -> TaskRecords:
    """The jobs, runs, watch and effects of `task_id` (keys `<ID>.…`, `monitor.<ID>.…`)."""
    watch = stores.watches.get(task_id)
    effect_keys = stores.effects.keys_under(f"{task_id}.")
    effect_keys += stores.effects.keys_under(f"monitor.{task_id}.")
    return TaskRecords(
        jobs=stores.jobs.get_many(stores.jobs.keys_under(f"{task_id}.")),
        runs=stores.runs.get_many(stores.runs.keys_under(f"{task_id}.")),
        watches={task_id: watch} if watch is not None else {},
        effects=stores.effects.get_many(effect_keys),
    )


class Walked(NamedTuple):
    """Settled tasks old enough to act on, the cursor after them, and whether more wait."""

    due: list[Versioned[Task]]
    cursor: int
    more: bool


def walk_tasks(
    tasks: Store[Task], cursor: int, waiting: list[str], *, before: float, batch: int
) -> Walked:
    """The waiting tasks again, then task writes after `cursor` up to the first too young."""
    due = dict(tasks.get_many(waiting)) if waiting else {}
    writes, last = tasks.walk(cursor, limit=batch)
    at = cursor
    for key, seq, entry in writes:
        if entry is not None and entry.value.terminal and entry.value.updated_at > before:
            return Walked(list(due.values()), at, False)
        at = seq
        if entry is not None and entry.value.terminal and not entry.value.outbox:
            due[key] = entry
    return Walked(list(due.values()), max(at, last), len(writes) >= batch)


def walk_taskless(
    effects: Store[Effect], prefix: str, cursor: int, *, before: float, batch: int
) -> tuple[dict[str, Versioned[Effect]], int, bool]:
    """Done effects under `prefix` (a taskless kind) older than `before`, and the new cursor."""
    writes, last = effects.walk(cursor, limit=batch, keys=f"{prefix}.>")
    gone: dict[str, Versioned[Effect]] = {}
    at = cursor
    for key, seq, entry in writes:
        if entry is not None and entry.value.status == DONE:
            done_at = entry.value.done_at
            if (done_at if done_at is not None else entry.value.started_at) > before:
                return gone, at, False
            gone[key] = entry
        at = seq
    return gone, max(at, last), len(writes) >= batch
