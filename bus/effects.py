"""The effect ledger: an idempotency key per external side effect, stored before and after.

`once(key, do, probe)` skips an effect whose key is recorded `done`. An effect
recorded only as `started` was interrupted: `probe` asks the outside world
whether it happened (a pull request for this head exists, the merge is on
main), and only if it did not is `do` called again. Keys name the task, stage,
step and what the effect acts on, so a replay of the same step finds them.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from bus.bridge import KeyExists, Store, Versioned
from conveyor.clock import Clock
from conveyor.errors import Fenced
from conveyor.logs import get_logger

log = get_logger(__name__)

STARTED = "started"
DONE = "done"


class Effect(msgspec.Struct, frozen=True, kw_only=True):
    """One side effect's record; `result` is what the effect returned (e.g. a PR number)."""

    key: str
    status: str
    started_at: float
    done_at: float | None = None
    result: str = ""
    by: str = ""


class Ledger:
    """Runs side effects at most once per key, surviving crashes between call and record."""

    def __init__(self, store: Store[Effect], clock: Clock, who: str) -> None:
        self._store = store
        self._clock = clock
        self._who = who

    def once(self, key: str, do: Callable[[], str], probe: Callable[[], str | None]) -> str:
        """Run `do` unless the effect `key` already happened; return its result."""
        entry = self._store.get(key)
        if entry is not None and entry.value.status == DONE:
            log.info("effects.skipped", key=key, reason="done before")
            return entry.value.result
        if entry is not None:
            # Started but never recorded done: the call may or may not have landed.
            found = probe()
            if found is not None:
                self._finish(key, found, entry.revision, entry.value.started_at)
                log.info("effects.adopted", key=key, result=found)
                return found
            revision, started_at = entry.revision, entry.value.started_at
        else:
            started_at = self._clock.now()
            record = Effect(key=key, status=STARTED, started_at=started_at, by=self._who)
            try:
                revision = self._store.create(key, record)
            except KeyExists:
                return self.once(key, do, probe)
        result = do()
        self._finish(key, result, revision, started_at)
        log.info("effects.done", key=key, result=result)
        return result

    def read(self, key: str) -> Versioned[Effect] | None:
        """The record of `key` with its revision (the CAS token of `record`), or None."""
        return self._store.get(key)

    def record(self, key: str, result: str, *, expect: int | None) -> int:
        """Store `result` as `key`'s done effect: created when `expect` is None, else a CAS.

        Raises `KeyExists` or `Fenced` when another writer got there first; the caller
        reads again and decides again.
        """
        now = self._clock.now()
        done = Effect(
            key=key, status=DONE, started_at=now, done_at=now, result=result, by=self._who
        )
        if expect is None:
            return self._store.create(key, done)
        return self._store.update(key, done, expect=expect)

    def _finish(self, key: str, result: str, revision: int, started_at: float) -> None:
        """Record the effect done over the started record we hold (`revision`).

        Should the record have moved since (written by hand, or by another writer the
        leases should have kept out), it is read again and written over: the effect
        happened, and its result must not be lost.
        """
        done = Effect(
            key=key,
            status=DONE,
            started_at=started_at,
            done_at=self._clock.now(),
            result=result,
            by=self._who,
        )
        try:
            self._store.update(key, done, expect=revision)
        except Fenced:
            log.warning("effects.record_moved", key=key, revision=revision)
        else:
            return
        current = self._store.get(key)
        if current is None:
            self._store.create(key, done)
        else:
            self._store.update(key, done, expect=current.revision)


def effect_key(*parts: object) -> str:
    """A KV-safe key from its parts: `task.stage.step.what`."""
    return ".".join(str(p).replace("/", "_").replace(".", "_") for p in parts)
