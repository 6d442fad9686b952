"""The StageEngine's tasks in memory: the hot set, settled rows, indexes, and checkpoints.

A mixin of the StageEngine (the sole writer of tasks): `_keep` is the one place a
task's stored state enters memory, and keeps every index with it. Tasks that
settled (done or cancelled, nothing left to publish) leave the hot set once the
message that settled them is handled; see `actors/task_settled.py` for what stays
and for the checkpoint that lets start-up read only hot tasks.
"""

from __future__ import annotations

from typing import Any

from actors import task_settled
from actors.checkpoint_policy import head_due
from actors.task_ids import IdBook
from actors.task_index import StatusIndex, status_row
from actors.task_policy import Task
from actors.task_settled import (
    CheckpointUnusable,
    IndexStores,
    SettledTasks,
    TasksHead,
    hot_and_tail,
    read_checkpoint,
    write_checkpoint,
)
from actors.task_summary import TaskIndex
from actors.usage_policy import Delivered
from bus.bridge import Bus
from bus.kv import Store, Versioned
from conveyor.clock import Clock
from conveyor.logs import get_logger
from conveyor.pipeline import DONE

log = get_logger(__name__)

MIGRATION_BATCH = 5000
"""Task records the one-time upgrade reads (and settles) at a time."""


class TaskState:
    """Tasks as the StageEngine holds them; `_store` is the tasks bucket."""

    _store: Store[Task]
    _bus: Bus
    _clock: Clock

    def _init_state(self) -> None:
        self._tasks: dict[str, Versioned[Task]] = {}
        self._index = TaskIndex()
        self._status_index = StatusIndex()
        self._delivered = Delivered()
        # Kept as tasks change, so a tick and a submit never walk every stored task.
        self._unflushed: set[str] = set()
        # New ids' numbers, also taken by the submit front on the bus loop (it locks).
        self._ids = IdBook()
        # Settled tasks leave `_tasks` for `_settled` (their rows) once a message is handled.
        self._settled = SettledTasks()
        self._settling: set[str] = set()
        self._seq = 0
        self._head_seq = -1
        self._head_at = float("-inf")
        # Every task write up to `_covered` is reflected here; `_writes` of ours came after.
        self._covered = 0
        self._writes = 0
        self._loading = False
        self._counting = True
        self._index_stores: IndexStores | None = None

    def _load(self, index: IndexStores) -> None:
        """The hot tasks and the rows of settled ones, from the checkpoint when there is one."""
        self._loading = True
        try:
            cold = read_checkpoint(self._store, index, self._settled)
        except CheckpointUnusable as err:
            log.warning("stage_engine.checkpoint_unusable", error=str(err))
            self._settled, cold = SettledTasks(), None
        if cold is None:
            self._migrate()
        else:
            self._delivered, self._seq = cold.delivered, cold.seq
            kept, _, last = hot_and_tail(self._store, cold.hot_ids, cold.seq, self._tail)
            # The head's hot tasks not written since are in its delivered sum already.
            self._counting = False
            for entry in kept.values():
                self._keep(entry)
            self._seq = max(self._seq, last)
        self._counting, self._loading = True, False
        self._covered, self._writes = self._seq, 0
        self._evict()
        for row in self._settled:
            self._ids.seen(row.id)
        # Oldest first, so the status index appends instead of inserting.
        keyed: list[tuple[float, str]] = [(e.value.created_at, k) for k, e in self._tasks.items()]
        keyed += [(row.created_at, row.id) for row in self._settled]
        for _, task_id in sorted(keyed):
            hot = self._tasks.get(task_id)
            if hot is not None:
                self._status_index.put(hot.value)
            elif (row := self._settled.get(task_id)) is not None:
                self._status_index.put_settled(task_id, row.created_at, row.stage, row.repo)

    def _tail(self, task_id: str, entry: Versioned[Task] | None) -> None:
        """One write since the checkpoint; settled tasks leave memory batch by batch."""
        if entry is None:
            self._tasks.pop(task_id, None)
            self._settling.discard(task_id)
            self._settled.drop(task_id)
        else:
            self._keep(entry)
        if len(self._settling) >= task_settled.TAIL_BATCH:
            self._evict()

    def _migrate(self) -> None:
        """No checkpoint yet (data of an older version): read every task once, in batches.

        Each batch's settled tasks leave memory before the next is read, so the
        upgrade's peak is one batch of full records, not the whole bucket.
        """
        seq = 0
        while True:
            writes, _ = self._store.walk(seq, limit=MIGRATION_BATCH)
            for _, at, entry in writes:
                if entry is not None:
                    self._keep(entry)
                seq = at
            self._evict()
            if len(writes) < MIGRATION_BATCH:
                return

    def _evict(self) -> None:
        """Move tasks that settled (done or cancelled, outbox empty) out of the hot set."""
        for task_id in self._settling:
            entry = self._tasks.pop(task_id, None)
            if entry is not None:
                self._settled.settle(entry.value)
        self._settling.clear()

    def _checkpoint(self, *, force: bool = False) -> None:
        """Write what settled and the hot ids, when anything changed and the writes pay for it.

        `force`: whatever the writes since (the end of a start).
        """
        index = self._index_stores
        if index is None or (self._seq == self._head_seq and not self._settled.dirty):
            return
        now = self._clock.now()
        due = head_due(hot=len(self._tasks), writes=self._writes, age_s=now - self._head_at)
        if not (force or due):
            return
        if self._store.last_seq() - self._covered > self._writes:
            self._adopt()
        max_bytes = int(self._bus.nc.max_payload)
        self._settled.flush(index.segments, max_bytes)
        head = TasksHead(
            seq=self._seq,
            hot=sorted(self._tasks),
            segments=self._settled.segments,
            delivered=self._delivered,
        )
        write_checkpoint(index, head, max_bytes)
        self._head_seq = self._covered = self._seq
        self._writes, self._head_at = 0, now

    def _adopt(self) -> None:
        """Read the task writes since the last checkpoint that were not ours.

        The head's sequence promises that every write up to it is reflected: a
        record written behind the engine's back (by hand, by a restore) is read here,
        and one that does not decode is quarantined, before the head moves past it.
        """
        tail, last = self._store.since(self._covered)
        for key, entry in tail.items():
            mine = self._tasks.get(key)
            if entry is not None and (mine is None or mine.revision < entry.revision):
                self._keep(entry)
        self._seq = max(self._seq, last)
        self._evict()
        log.info("stage_engine.writes_adopted", read=len(tail), since=self._covered)

    def _keep(self, entry: Versioned[Task]) -> None:
        task_id = entry.value.id
        hot = self._tasks.get(task_id)
        settled = self._settled.get(task_id)
        before = hot.value.stage if hot is not None else settled.stage if settled else ""
        if self._counting and entry.value.stage == DONE and before != DONE:
            # Counted once, as the task reaches done: the cost per delivered item is O(1).
            self._delivered = self._delivered.with_task(entry.value.usage)
        self._tasks[task_id] = entry
        if entry.revision > self._seq:
            self._writes += 1  # a new write (ours, but for a read-back of a foreign one)
        self._seq = max(self._seq, entry.revision)
        if entry.value.terminal and not entry.value.outbox:
            self._settling.add(task_id)
        else:
            self._settling.discard(task_id)
            self._settled.drop(task_id)
        if entry.value.outbox:
            self._unflushed.add(entry.value.id)
        else:
            self._unflushed.discard(entry.value.id)
        self._ids.seen(entry.value.id)
        self._index.put(entry.value)
        if not self._loading:
            self._status_index.put(entry.value)

    def _entry(self, task_id: str) -> Versioned[Task] | None:
        """A task by id: from the hot set, or read back from KV when it settled."""
        entry = self._tasks.get(task_id)
        if entry is None and task_id in self._settled:
            entry = self._store.get(task_id)
            if entry is not None:
                self._keep(entry)  # handled as usual; it leaves again after this message
        return entry

    def _row(self, task_id: str) -> dict[str, Any]:
        entry = self._tasks.get(task_id)
        return status_row(entry.value) if entry is not None else self._settled.row(task_id)
