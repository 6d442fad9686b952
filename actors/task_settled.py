"""Settled tasks out of memory, and the checkpoint that lets start-up skip them.

A task that is done or cancelled, with nothing left in its outbox, leaves the
StageEngine's hot set. What stays is its status row (encoded, as `conveyor.status.tasks`
sends it) and the fields the status index orders and filters by. Its record stays in
`conveyor_tasks` and is read from there on request.

The engine checkpoints into `conveyor_index` (see docs/adr/0012-cold-state.md):

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

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from actors.task_index import status_row
from actors.task_policy import Task
from actors.usage_policy import Delivered
from bus.kv import Quarantined, Store, Versioned

SEGMENT_ROWS = 200
"""Rows per segment record at most (about 100 KB); fewer when a segment would pass half
the server's max payload."""
S = TypeVar("S", bound=msgspec.Struct)

TAIL_BATCH = 5000
"""Writes since a checkpoint that `hot_and_tail` decodes and hands over at a time."""

HEAD_KEY = "tasks.head"
SEGMENT_PREFIX = "tasks.settled"
ROW_OVERHEAD = 64
"""Bytes a row's envelope adds to its encoded status row (id, created_at, stage, repo)."""


def _size(row: SettledRow) -> int:
    return len(row.row) + len(row.id) + len(row.stage) + len(row.repo) + ROW_OVERHEAD


def hot_key(number: int, prefix: str = "tasks") -> str:
    """The index key of part `number` of a hot-id list too long for the head."""
    return f"{prefix}.hot.{number:06d}"


def segment_key(number: int) -> str:
    """The index key of segment `number` (zero-padded, so keys sort in order)."""
    return f"{SEGMENT_PREFIX}.{number:06d}"


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
    hot_parts: int = 0
    """When the hot ids would not fit in the head: how many `tasks.hot.*` parts hold them."""


class HotPart(msgspec.Struct, frozen=True):
    """Part of the hot ids of a head that had too many to hold them itself."""

    ids: list[str]


class IndexStores(msgspec.Struct, frozen=True):
    """The engine's views of the index bucket."""

    heads: Store[TasksHead]
    segments: Store[Segment]
    hot: Store[HotPart]


def settled_row(task: Task) -> SettledRow:
    """The row kept for `task` once it settled."""
    raw = msgspec.Raw(msgspec.json.encode(status_row(task)))
    return SettledRow(task.id, task.created_at, task.stage, task.repo, raw)


class SettledTasks:
    """Rows of settled tasks by id; rows settled since the last checkpoint wait to be written."""

    def __init__(self) -> None:
        self._rows: dict[str, SettledRow] = {}
        self._open: list[SettledRow] = []
        self._open_bytes = 0
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

    def load(self, segments: list[Segment | None], hot: Iterable[str]) -> None:
        """Start from the stored segments in order (None: one not found); `hot` are not settled."""
        for segment in segments:
            for row in segment.rows if segment is not None else ():
                self._rows[row.id] = row
        # Only the last segment can still take rows.
        self._full = max(0, len(segments) - 1)
        last = segments[-1] if segments else None
        self._open = list(last.rows) if last is not None else []
        self._open_bytes = sum(map(_size, self._open))
        for task_id in hot:
            self._rows.pop(task_id, None)

    def flush(self, store: Store[Segment], max_bytes: int) -> None:
        """Append the pending rows to the open segment (and new ones), then forget them.

        A segment takes at most `SEGMENT_ROWS` rows and stays under half of `max_bytes`.
        """
        budget = max(4096, max_bytes // 2)
        at = 0
        while at < len(self._pending):
            size = _size(self._pending[at])
            if self._open and (len(self._open) >= SEGMENT_ROWS or self._open_bytes + size > budget):
                self._full, self._open, self._open_bytes = self._full + 1, [], 0
            while at < len(self._pending) and len(self._open) < SEGMENT_ROWS:
                size = _size(self._pending[at])
                if self._open and self._open_bytes + size > budget:
                    break
                self._open.append(self._pending[at])
                self._open_bytes += size
                at += 1
            store.put(segment_key(self._full), Segment(rows=list(self._open)))
        self._pending = []


class ColdStart(msgspec.Struct):
    """What a checkpoint's head says: the tasks that were hot, and what it covers.

    The caller reads the writes since `seq` (`hot_and_tail`), then the hot tasks
    not among them: those are already counted in `delivered`.
    """

    hot_ids: list[str]
    seq: int
    delivered: Delivered


class CheckpointUnusable(Exception):
    """A checkpoint record is missing or does not decode: start as if there were none."""


def read_checkpoint(
    store: Store[Task], index: IndexStores, settled: SettledTasks
) -> ColdStart | None:
    """Load the checkpoint's settled rows into `settled`; None when there is none.

    Raise CheckpointUnusable when part of it is missing or does not decode (it is
    derived state: reading every task rebuilds it). The writes since it are the
    caller's to read, batch by batch, so a long tail is never held whole.
    """
    try:
        head_entry = index.heads.get(HEAD_KEY)
    except Quarantined as err:
        raise CheckpointUnusable(str(err)) from err
    if head_entry is None:
        return None
    head = head_entry.value
    keys = [segment_key(n) for n in range(head.segments)]
    found = _segments(index.segments, keys)
    if len(found) != len(keys):
        raise CheckpointUnusable(f"{len(keys) - len(found)} segments missing or unreadable")
    hot_ids = read_hot(index.hot, "tasks", head.hot, head.hot_parts)
    settled.load([found[k].value if k in found else None for k in keys], hot=hot_ids)
    return ColdStart(hot_ids=hot_ids, seq=head.seq, delivered=head.delivered)


def _segments(store: Store[Segment], keys: list[str]) -> dict[str, Versioned[Segment]]:
    """The segments named by `keys`, read by one ordered consumer rather than a get each.

    A get's reply carries the record base64-encoded inside JSON; at 100,000 settled
    tasks (500 segments, 50 MB) unwrapping those cost about half a second of a restart.
    A segment that does not decode is quarantined and left out, as by `get_many`.
    """
    if not keys:
        return {}
    wanted = set(keys)
    writes, _ = store.walk(0, keys=f"{SEGMENT_PREFIX}.>")
    return {key: value for key, _, value in writes if value is not None and key in wanted}


def write_checkpoint(index: IndexStores, head: TasksHead, max_bytes: int) -> None:
    """Write `head`; hot ids that would make it too big go into `tasks.hot.*` parts first."""
    parts = write_hot(index.hot, "tasks", head.hot, len(msgspec.json.encode(head)), max_bytes)
    index.heads.put(
        HEAD_KEY, msgspec.structs.replace(head, hot=[], hot_parts=parts) if parts else head
    )


def write_hot(
    store: Store[HotPart], prefix: str, hot: list[str], head_bytes: int, max_bytes: int
) -> int:
    """Write `hot` into `<prefix>.hot.*` parts when a head of `head_bytes` would be too big.

    Returns how many parts were written (0: the ids fit in the head itself). Parts are
    written before the head that names them.
    """
    if head_bytes + ROW_OVERHEAD <= max_bytes // 2:
        return 0
    per_part = max(1, (max_bytes // 2 - ROW_OVERHEAD) // (max(map(len, hot)) + 3))
    chunks = [hot[n : n + per_part] for n in range(0, len(hot), per_part)]
    for number, chunk in enumerate(chunks):
        store.put(hot_key(number, prefix), HotPart(ids=chunk))
    return len(chunks)


def read_hot(store: Store[HotPart], prefix: str, ids: list[str], parts: int) -> list[str]:
    """A head's hot ids and those of its `parts` parts (CheckpointUnusable: one is gone)."""
    found = store.get_many([hot_key(n, prefix) for n in range(parts)])
    if len(found) != parts:
        raise CheckpointUnusable(f"{parts - len(found)} hot-id parts missing or unreadable")
    return [*ids, *(i for _, part in sorted(found.items()) for i in part.value.ids)]


def hot_and_tail(
    store: Store[S],
    hot_ids: list[str],
    seq: int,
    each: Callable[[str, Versioned[S] | None], None],
) -> tuple[dict[str, Versioned[S]], int, int]:
    """`each(key, value or None)` for every write after `seq`, then the hot records not among them.

    The writes are read `TAIL_BATCH` at a time and handed over as read, so a long tail
    (a restore, records written behind the owner's back, 810,000 runs in the scale
    bench) is never held decoded at once, nor read in one call that could outlast the
    bus's timeout. A key written again while it is read comes again, at its later write.
    Returns the hot records by key, how many writes were read, and the last sequence.
    """
    hot, written, read = set(hot_ids), set(), 0
    while True:
        writes, last = store.walk(seq, limit=TAIL_BATCH)
        for key, _, value in writes:
            if key in hot:
                written.add(key)
            each(key, value)
        read += len(writes)
        if len(writes) < TAIL_BATCH:
            return store.get_many([k for k in hot_ids if k not in written]), read, last
        seq = last


def hot_and_since(
    store: Store[S], hot_ids: list[str], seq: int
) -> tuple[dict[str, Versioned[S]], dict[str, Versioned[S] | None], int]:
    """The hot records by key, the writes after `seq` (None: deleted), and the last sequence.

    A hot record written since comes from the writes only (read once, at its latest).
    The writes are read in batches (`hot_and_tail`): one read of 90,000 tasks written
    behind the engine's back outlasted a bus call's 120 s on a loaded machine, and the
    engine never started. Unlike `hot_and_tail`, every write is held until the end.
    """
    tail: dict[str, Versioned[S] | None] = {}

    def write(key: str, value: Versioned[S] | None) -> None:
        tail[key] = value  # a key read again (written while read) keeps its latest

    hot, _, last = hot_and_tail(store, hot_ids, seq, write)
    return hot, tail, last
