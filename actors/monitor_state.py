"""The PostDeployMonitor's watches: open ones in memory, closed ones counted, a checkpoint.

A watch that closed (its verdict acted on, its log written) never changes again; it
stays in `conveyor_monitor` (until the Janitor's retention) and leaves memory. What
the monitor keeps of closed watches is small: their counts by status and the few
most recently closed, for its status. It checkpoints into `conveyor_index` (see
docs/adr/0012-cold-state.md):

- `monitor.head`: the stream sequence it covers, the keys of the open watches (in
  `monitor.hot.*` parts when too many for one message), and the closed watches'
  counts and most recent ones.

Start-up reads the head, the open watches by key and only the watch writes after the
head's sequence, never every watch ever kept. Without a head (data of an older
version), or with one that does not decode, it walks the bucket once in batches.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from actors import monitor_policy as policy
from actors.monitor_policy import Watch
from actors.task_settled import CheckpointUnusable, HotPart, hot_and_since, read_hot, write_hot
from bus import subjects
from bus.bridge import Bus
from bus.kv import Quarantined, Store, Versioned
from conveyor.logs import get_logger

log = get_logger(__name__)

HEAD_KEY = "monitor.head"
PREFIX = "monitor"
RECENT = 20
"""Closed watches the status lists (the most recently closed)."""
WALK_BATCH = 5000
"""Watch records the one-time upgrade reads at a time."""


class KeptWatch(msgspec.Struct, frozen=True, array_like=True):
    """A closed watch as the status lists it, with its revision."""

    watch: Watch
    revision: int


class MonitorHead(msgspec.Struct, frozen=True, kw_only=True):
    """The monitor's checkpoint: every watch write up to `seq` is reflected in it."""

    seq: int
    hot: list[str]
    """The open watches' keys."""
    counts: dict[str, int]
    """Closed watches by status (as `monitor_policy.summary` counts them)."""
    recent: list[KeptWatch]
    """The most recently closed watches, oldest first."""
    hot_parts: int = 0


def _added(counts: dict[str, int], watch: Watch) -> dict[str, int]:
    one = policy.summary([watch])
    return {k: counts.get(k, 0) + one.get(k, 0) for k in {*counts, *one}}


class Watches:
    """Open watches by task id, and what stays of the closed ones; sole writer's view."""

    def __init__(self, bus: Bus, store: Store[Watch]) -> None:
        self._bus, self._store = bus, store
        self.open: dict[str, Versioned[Watch]] = {}
        self._counts: dict[str, int] = {}
        self._recent: deque[KeptWatch] = deque(maxlen=RECENT)
        self._heads: Store[MonitorHead] = bus.store(subjects.BUCKET_INDEX, MonitorHead)
        self._parts: Store[HotPart] = bus.store(subjects.BUCKET_INDEX, HotPart)
        self._covered = 0
        """The stream sequence the last head covers."""
        self._writes = 0
        """Our own watch writes since the last head."""
        self._written: dict[str, int] = {}
        self._changed = True

    # --- keeping ------------------------------------------------------------------------

    def keep(self, entry: Versioned[Watch], *, own: bool = True) -> None:
        """Take a watch as stored now (`own`: we just wrote it); a closed one leaves memory."""
        key = entry.value.task_id
        if own:
            self._writes += 1
            self._written[key] = entry.revision
        self._changed = True
        if not entry.value.closed:
            self.open[key] = entry
            return
        if self.open.pop(key, None) is not None or own:
            self._close(entry)

    def forget(self, task_id: str) -> None:
        """A watch that is gone from KV."""
        if self.open.pop(task_id, None) is not None:
            self._changed = True

    def _close(self, entry: Versioned[Watch]) -> None:
        self._counts = _added(self._counts, entry.value)
        self._recent.append(KeptWatch(entry.value, entry.revision))

    # --- status -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Counts by status of every watch, closed ones included."""
        live = policy.summary([e.value for e in self.open.values()])
        return {k: live.get(k, 0) + self._counts.get(k, 0) for k in {*live, *self._counts}}

    def listed(self) -> list[dict[str, Any]]:
        """The open watches and the most recently closed, by start, with their revisions."""
        kept = [(e.value, e.revision) for e in self.open.values()]
        kept += [(k.watch, k.revision) for k in self._recent if k.watch.task_id not in self.open]
        return [
            {**msgspec.structs.asdict(w), "revision": revision}
            for w, revision in sorted(kept, key=lambda wr: wr[0].started_at)
        ]

    # --- start-up -----------------------------------------------------------------------

    def load(self) -> int:
        """Fill the open watches and the closed counts; how many watch records were read."""
        try:
            read = self._from_head()
        except CheckpointUnusable as err:
            log.warning("monitor.checkpoint_unusable", error=str(err))
            read = None
        if read is None:
            self.open, self._counts, self._recent = {}, {}, deque(maxlen=RECENT)
            read = self._walk()
        self._writes, self._written, self._changed = 0, {}, True
        return read

    def _from_head(self) -> int | None:
        try:
            entry = self._heads.get(HEAD_KEY)
        except Quarantined as err:
            raise CheckpointUnusable(str(err)) from err
        if entry is None:
            return None
        head = entry.value
        ids = read_hot(self._parts, PREFIX, head.hot, head.hot_parts)
        hot, tail, last = hot_and_since(self._store, ids, head.seq)
        self._counts = dict(head.counts)
        self._recent = deque(head.recent, maxlen=RECENT)
        self.open = {k: e for k, e in hot.items() if not e.value.closed}
        for key, found in tail.items():
            # Open at the head or new since: a closed one is counted once, here.
            self._read(key, found)
        self._covered = max(head.seq, last)
        return len(hot) + len(tail)

    def _read(self, key: str, found: Versioned[Watch] | None) -> None:
        """Take a watch read at start (None: deleted); a closed one is counted."""
        self.open.pop(key, None)
        if found is None:
            return
        if found.value.closed:
            self._close(found)
        else:
            self.open[key] = found

    def _walk(self) -> int:
        seq = read = 0
        while True:
            writes, last = self._store.walk(seq, limit=WALK_BATCH)
            for key, at, found in writes:
                self._read(key, found)
                seq = at
            read += len(writes)
            if len(writes) < WALK_BATCH:
                self._covered = max(seq, last)
                return read

    # --- the checkpoint -----------------------------------------------------------------

    def checkpoint(self) -> None:
        """Write the head when anything changed since the last one.

        A write by someone else while nothing changed here waits: the head does not
        move past it, so a start reads it among the writes since.
        """
        if not self._changed:
            return
        last = self._store.last_seq()
        if last - self._covered > self._writes:
            last = self._adopt()
        hot = sorted(self.open)
        head = MonitorHead(seq=last, hot=hot, counts=self._counts, recent=list(self._recent))
        max_bytes = int(self._bus.nc.max_payload)
        n = write_hot(self._parts, PREFIX, hot, len(msgspec.json.encode(head)), max_bytes)
        self._heads.put(HEAD_KEY, msgspec.structs.replace(head, hot=[], hot_parts=n) if n else head)
        self._covered, self._writes, self._written, self._changed = last, 0, {}, False

    def _adopt(self) -> int:
        """Take the watch writes since the last head that were not ours (by hand, a restore).

        Deletions (the Janitor's retention of closed watches) change no count.
        """
        tail, last = self._store.since(self._covered)
        adopted = 0
        for key, found in tail.items():
            if found is None:
                self.forget(key)
            elif found.revision > self._written.get(key, 0):
                mine = self.open.get(key)
                if mine is None or mine.revision < found.revision:
                    self.keep(found, own=False)
                    adopted += 1
        log.info("monitor.writes_adopted", read=len(tail), adopted=adopted)
        return last
