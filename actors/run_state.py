"""The Launcher's runs to look after, found at start without reading every run.

A Launcher keeps only its unreported runs (a finished run leaves once its result is
reported; it stays in `conveyor_runs`). It checkpoints their keys into
`conveyor_index` under `runs.<name>.head`, with the stream sequence it had read up to
(see docs/adr/0012-cold-state.md). Start-up reads the head, those runs by key and the
run writes after the head's sequence, never every run ever recorded. Without a head
(data of an older version), or with one that does not decode, it walks the bucket
once in batches, keeping only its own unreported runs.
"""

from __future__ import annotations

import re

import msgspec

from actors.checkpoint_policy import HEAD_MIN_INTERVAL_S
from actors.launcher_policy import Run
from actors.task_settled import CheckpointUnusable, HotPart, hot_and_tail, read_hot, write_hot
from bus import subjects
from bus.bridge import Bus
from bus.kv import Quarantined, Store, Versioned
from conveyor.clock import Clock
from conveyor.logs import get_logger

log = get_logger(__name__)

WALK_BATCH = 5000
"""Run records the one-time upgrade reads at a time."""


class RunsHead(msgspec.Struct, frozen=True, kw_only=True):
    """A Launcher's checkpoint: its unreported runs as of stream sequence `seq`."""

    seq: int
    hot: list[str]
    hot_parts: int = 0


def _prefix(name: str) -> str:
    return "runs." + re.sub(r"[^-_=a-zA-Z0-9]", "_", name)


class RunsCheckpoint:
    """Loads a Launcher's runs at start; writes its head when the set of runs changed.

    At most one head a `HEAD_MIN_INTERVAL_S` (the start's is forced): a later head only
    makes the next start read a few more run writes.
    """

    def __init__(self, bus: Bus, store: Store[Run], name: str, clock: Clock) -> None:
        self._bus, self._store, self._name, self._clock = bus, store, name, clock
        self._head_at: float | None = None
        self._prefix = _prefix(name)
        self._heads: Store[RunsHead] = bus.store(subjects.BUCKET_INDEX, RunsHead)
        self._parts: Store[HotPart] = bus.store(subjects.BUCKET_INDEX, HotPart)
        self._written: list[str] | None = None

    def load(self) -> dict[str, Versioned[Run]]:
        """This launcher's unreported runs, by key."""
        try:
            found, read = self._from_head()
        except CheckpointUnusable as err:
            log.warning("launcher.checkpoint_unusable", error=str(err))
            found = None
        if found is None:
            found, read = self._walk()
        runs = {k: v for k, v in found.items() if self._mine(v)}
        log.info("launcher.runs_loaded", read=read, kept=len(runs))
        return runs

    def write(self, runs: dict[str, Versioned[Run]], seq: int = 0, *, force: bool = False) -> None:
        """Write the head when the run keys changed since the last one (`seq`: read up to).

        `force`: even within `HEAD_MIN_INTERVAL_S` of the last head (the end of a start).
        """
        now = self._clock.now()
        recent = self._head_at is not None and now - self._head_at < HEAD_MIN_INTERVAL_S
        if recent and not force:
            return
        hot = sorted(runs)
        if hot == self._written:
            return
        # Every run of ours up to the stream's last sequence is in `runs` (we wrote them).
        head = RunsHead(seq=seq or self._store.last_seq(), hot=hot)
        max_bytes = int(self._bus.nc.max_payload)
        n = write_hot(self._parts, self._prefix, hot, len(msgspec.json.encode(head)), max_bytes)
        key = f"{self._prefix}.head"
        self._heads.put(key, msgspec.structs.replace(head, hot=[], hot_parts=n) if n else head)
        self._written, self._head_at = hot, now

    def _mine(self, entry: Versioned[Run] | None) -> bool:
        return entry is not None and entry.value.launcher == self._name and not entry.value.reported

    def _from_head(self) -> tuple[dict[str, Versioned[Run]] | None, int]:
        try:
            entry = self._heads.get(f"{self._prefix}.head")
        except Quarantined as err:
            raise CheckpointUnusable(str(err)) from err
        if entry is None:
            return None, 0
        head = entry.value
        ids = read_hot(self._parts, self._prefix, head.hot, head.hot_parts)
        kept: dict[str, Versioned[Run]] = {}

        def tail(key: str, run: Versioned[Run] | None) -> None:
            # Only its own unreported runs stay: a long tail is mostly other runs.
            if run is not None and self._mine(run):
                kept[key] = run
            else:
                kept.pop(key, None)

        hot, read, _ = hot_and_tail(self._store, ids, head.seq, tail)
        return {**hot, **kept}, len(hot) + read

    def _walk(self) -> tuple[dict[str, Versioned[Run]], int]:
        seq, read, kept = 0, 0, {}
        while True:
            writes, _ = self._store.walk(seq, limit=WALK_BATCH)
            for key, at, entry in writes:
                if entry is not None and self._mine(entry):
                    kept[key] = entry
                seq = at
            read += len(writes)
            if len(writes) < WALK_BATCH:
                return kept, read
