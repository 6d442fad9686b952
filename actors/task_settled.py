"""Settled tasks out of memory, and the checkpoint that lets start-up skip them.

A task that is done or cancelled, with nothing left in its outbox, leaves the
StageEngine's hot set. What stays is its status row (encoded, as `conveyor.status.tasks`
sends it) and the fields the status index orders and filters by. Its record stays in
`conveyor_tasks` and is read from there on request.

The engine checkpoints into `conveyor_index` (see docs/adr/0010-cold-state.md):

- `tasks.settled.NNNNNN`: segments of `SEGMENT_ROWS` settled rows, appended in the
  order tasks settled; only the last (open) segment is ever rewritten.
- `tasks.head`: the stream sequence the checkpoint covers, the ids of the hot tasks,
  how many segments there are, and the delivered-usage sum.

Start-up reads the head, the segments, the hot tasks, and only the writes to
`conveyor_tasks` after the head's sequence, never every task. With no head (data
written before this index existed) it loads every task once and writes the
checkpoint: the upgrade's one-time migration.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from actors.task_index import status_row
from actors.task_policy import Task
from actors.usage_policy import Delivered
from bus.kv import Store, Versioned

SEGMENT_ROWS = 200
"""Rows per segment record: about 100 KB, well under a message's max payload."""
HEAD_KEY = "tasks.head"


def segment_key(number: int) -> str:
    """The index key of segment `number` (zero-padded, so keys sort in order)."""
    return f"tasks.settled.{number:06d}"


class SettledRow(msgspec.Struct, frozen=True, array_like=True):
    """A settled task as status needs it: ordering and filter fields, and its row."""

    id: str
    created_at: float
    stage: str
    repo: str
    row: msgspec.Raw


class Segment(msgspec.Struct, frozen=True):
    """Settled rows in the order their tasks settled; a later row of an id wins."""

    rows: list[SettledRow]


class TasksHead(msgspec.Struct, frozen=True, kw_only=True):
    """The StageEngine's checkpoint: every task write up to `seq` is reflected in it."""

    seq: int
    hot: list[str]
    segments: int
    delivered: Delivered = msgspec.field(default_factory=Delivered)


class IndexStores(msgspec.Struct, frozen=True):
    """The engine's views of the index bucket."""

    heads: Store[TasksHead]
    segments: Store[Segment]


def settled_row(task: Task) -> SettledRow:
    """The row kept for `task` once it settled."""
    raw = msgspec.Raw(msgspec.json.encode(status_row(task)))
    return SettledRow(task.id, task.created_at, task.stage, task.repo, raw)


class SettledTasks:
    """Rows of settled tasks by id; rows settled since the last checkpoint wait to be written."""

    def __init__(self) -> None:
        self._rows: dict[str, SettledRow] = {}
        self._open: list[SettledRow] = []
        self._full = 0
        self._pending: list[SettledRow] = []

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Any:
        return iter(self._rows.values())

    def get(self, task_id: str) -> SettledRow | None:
        """The kept row of a settled task, or None."""
        return self._rows.get(task_id)

    def row(self, task_id: str) -> dict[str, Any]:
        """The status row of a settled task, decoded."""
        row: dict[str, Any] = msgspec.json.decode(self._rows[task_id].row)
        return row

    def settle(self, task: Task) -> None:
        """Keep `task`'s row; written at the next checkpoint unless already kept as is."""
        row = settled_row(task)
        before = self._rows.get(task.id)
        self._rows[task.id] = row
        if before is None or bytes(before.row) != bytes(row.row) or before.stage != row.stage:
            self._pending.append(row)

    def drop(self, task_id: str) -> None:
        """Forget a task that is hot again (reopened); its stale segment rows are overridden."""
        self._rows.pop(task_id, None)

    @property
    def dirty(self) -> bool:
        """True when rows settled since the last checkpoint."""
        return bool(self._pending)

    @property
    def segments(self) -> int:
        """Segment records written so far (the open one included)."""
        return self._full + (1 if self._open else 0)

    def load(self, segments: Iterable[Segment], hot: Iterable[str]) -> None:
        """Start from stored segments, oldest first; ids in `hot` are not settled."""
        for segment in segments:
            for row in segment.rows:
                self._rows[row.id] = row
            if len(segment.rows) >= SEGMENT_ROWS:
                self._full += 1
            else:
                self._open = list(segment.rows)
        for task_id in hot:
            self._rows.pop(task_id, None)

    def flush(self, store: Store[Segment]) -> None:
        """Append the pending rows to the open segment (and new ones), then forget them."""
        while self._pending:
            room = SEGMENT_ROWS - len(self._open)
            self._open.extend(self._pending[:room])
            del self._pending[:room]
            store.put(segment_key(self._full), Segment(rows=list(self._open)))
            if len(self._open) >= SEGMENT_ROWS:
                self._full += 1
                self._open = []


class ColdLoad(msgspec.Struct):
    """What a checkpointed start read: the hot and recently written tasks, and the head."""

    entries: list[Versioned[Task] | str]
    """Hot tasks first (already counted in `delivered`), then the writes since the head;
    a bare id is a task deleted since."""
    fresh: int
    """How many of `entries` come from the head's hot set (the rest are newer writes)."""
    seq: int
    delivered: Delivered


def read_checkpoint(
    store: Store[Task], index: IndexStores, settled: SettledTasks
) -> ColdLoad | None:
    """Load from the checkpoint into `settled` and return the hot tasks; None when there is none."""
    head_entry = index.heads.get(HEAD_KEY)
    if head_entry is None:
        return None
    head = head_entry.value
    keys = [segment_key(n) for n in range(head.segments)]
    found = index.segments.get_many(keys)
    tail, last = store.since(head.seq)
    hot = store.get_many([k for k in head.hot if k not in tail])
    settled.load((found[k].value for k in keys if k in found), hot=[*hot, *tail])
    entries: list[Versioned[Task] | str] = list(hot.values())
    entries += [value if value is not None else key for key, value in tail.items()]
    return ColdLoad(
        entries=entries, fresh=len(hot), seq=max(head.seq, last), delivered=head.delivered
    )
