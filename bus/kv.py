"""Typed KV buckets: reads with their revision, compare-and-swap writes, a full load.

Every record read from a bucket is decoded here, by `Store._decode`. A record that
does not decode (written by a newer or broken version, or by hand) is quarantined:
logged as `kv.quarantined`, alerted once (`Alert.kind` `quarantined`, one stream
message per record revision), skipped by `load_all`, and left where it is, untouched,
for the operator to read, fix or delete. `get` of such a key raises `Quarantined`.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from bus import fence
from bus.messages import Alert, encode
from conveyor.clock import SystemClock
from conveyor.errors import BusUnavailable, ConveyorError, Fenced
from conveyor.logs import get_logger

if TYPE_CHECKING:
    from bus.bridge import Bus

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

log = get_logger(__name__)

QUARANTINED = "quarantined"
"""`Alert.kind` of a record that does not decode."""

_quarantined: weakref.WeakKeyDictionary[Bus, set[tuple[str, str, int]]] = (
    weakref.WeakKeyDictionary()
)
"""Per connection, the record revisions already reported: a reload stays quiet."""
_quarantined_lock = threading.Lock()


class Versioned(msgspec.Struct, Generic[T], frozen=True):
    """A stored value and the KV revision it was read at (the CAS token)."""

    value: T
    revision: int


class KeyExists(Exception):
    """`create` found the key already present."""


class Quarantined(ConveyorError):
    """The record at a key does not decode; it is left in place for the operator."""


class _Unreadable(msgspec.Struct, frozen=True):
    """A record that did not decode, carried out of the loop to be reported."""

    key: str
    revision: int
    error: str


def quarantine(bus: Bus, bucket: str, key: str, revision: int, error: str) -> None:
    """Log and alert once for an undecodable record; it stays where it is.

    Once per record revision and connection: a load that meets it again says
    nothing more, and the alert's message id makes a second process's (or a
    restart's) report of the same revision a duplicate on the stream.
    """
    with _quarantined_lock:
        seen = _quarantined.setdefault(bus, set())
        if (bucket, key, revision) in seen:
            return
        seen.add((bucket, key, revision))
    log.error("kv.quarantined", bucket=bucket, key=key, revision=revision, error=error)
    text = (
        f"record {bucket}/{key} (revision {revision}) does not decode and is skipped; "
        f"it is kept as it is for you to fix or delete: {error}"
    )
    alert = Alert(level="error", text=text, source="kv", at=SystemClock().now(), kind=QUARANTINED)
    try:
        bus.emit(alert, msg_id=f"{QUARANTINED}:{bucket}:{key}:{revision}")
    except BusUnavailable as err:
        # The log line stands; the loaded rest matters more than the alert.
        log.warning("kv.quarantine_alert_failed", bucket=bucket, key=key, error=str(err))


class Store(Generic[S]):
    """A typed view of one KV bucket; writes are compare-and-swap on the revision."""

    def __init__(self, bus: Bus, kv: KeyValue, value_type: type[S]) -> None:
        self._bus = bus
        self._kv = kv
        self._decoder = msgspec.json.Decoder(value_type)
        self.bucket: str = kv._name

    def _decode(self, key: str, revision: int | None, data: bytes | None) -> S | _Unreadable | None:
        """The record, None for an empty value, or what to report when it does not decode."""
        if not data:
            return None
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as err:  # ValidationError is one too
            return _Unreadable(key, revision or 0, str(err))

    def _quarantine(self, bad: _Unreadable) -> None:
        quarantine(self._bus, self.bucket, bad.key, bad.revision, bad.error)

    def get(self, key: str) -> Versioned[S] | None:
        """Read one key (leader-routed), or None when absent or deleted."""

        async def _get() -> Versioned[S] | _Unreadable | None:
            try:
                entry = await self._kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None
            value = self._decode(key, entry.revision, entry.value)
            if value is None or isinstance(value, _Unreadable) or entry.revision is None:
                return value if isinstance(value, _Unreadable) else None
            return Versioned(value, entry.revision)

        found = self._bus.call(_get())
        if isinstance(found, _Unreadable):
            self._quarantine(found)
            raise Quarantined(f"{self.bucket}/{key} does not decode: {found.error}")
        return found

    def create(self, key: str, value: S) -> int:
        """Store `value` only if `key` does not exist; raise KeyExists otherwise."""
        data = encode(value)
        stamp = self._bus.write_stamp()

        async def _create(attempt: int) -> int:
            try:
                return int(await fence.create(self._kv, key, data, stamp))
            except nats.js.errors.KeyWrongLastSequenceError as err:
                landed = await self._landed_async(key, data) if attempt else None
                if landed is None:
                    raise KeyExists(key) from err
                return landed

        try:
            return self._bus.write(_create, what=f"{self.bucket}/{key}")
        except BusUnavailable:
            landed = self._landed(key, data)
            if landed is None:
                raise
            return landed

    def update(self, key: str, value: S, *, expect: int) -> int:
        """Store `value` if the key is still at revision `expect`; raise Fenced otherwise."""
        data = encode(value)
        stamp = self._bus.write_stamp()

        async def _update(attempt: int) -> int:
            try:
                return int(await fence.update(self._kv, key, data, expect, stamp))
            except nats.js.errors.KeyWrongLastSequenceError as err:
                landed = await self._landed_async(key, data) if attempt else None
                if landed is None:
                    raise Fenced(f"{self.bucket}/{key} moved past revision {expect}") from err
                return landed

        try:
            return self._bus.write(_update, what=f"{self.bucket}/{key}")
        except BusUnavailable:
            landed = self._landed(key, data)
            if landed is None:
                raise
            return landed

    def _landed(self, key: str, data: bytes) -> int | None:
        """After an ambiguous write (no answer), the revision it got if it did land.

        A timeout does not mean the write failed; re-reading tells, and a write that
        landed must not later look like someone else's (which would fence us).
        """
        try:
            return self._bus.call(self._landed_async(key, data))
        except BusUnavailable:
            return None

    async def _landed_async(self, key: str, data: bytes) -> int | None:
        """`_landed` on the loop: a retried write whose CAS failed may have been our own.

        The read is leader-routed (the buckets allow no direct get), so it sees the
        write that moved the revision.
        """
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return entry.revision if entry.value == data else None

    def load_all(self) -> dict[str, Versioned[S]]:
        """Read the latest value of every key (one ordered consumer, not one get per key).

        A record that does not decode is quarantined and left out; the rest loads.
        """
        bad: list[_Unreadable] = []

        async def _load() -> dict[str, Versioned[S]]:
            out: dict[str, Versioned[S]] = {}
            # A short inactivity threshold: the server drops the ephemeral consumer soon
            # after, instead of keeping one per call for minutes.
            watcher = await self._kv.watchall(ignore_deletes=True, inactive_threshold=2.0)
            try:
                while True:
                    entry = await watcher.updates(timeout=10.0)  # type: ignore[no-untyped-call]
                    if entry is None and not out:
                        entry = await self._after_early_marker(watcher)
                    if entry is None:
                        break
                    value = self._decode(entry.key, entry.revision, entry.value)
                    if isinstance(value, _Unreadable):
                        bad.append(value)
                    elif value is not None and entry.revision is not None:
                        out[entry.key] = Versioned(value, entry.revision)
                    if entry.delta == 0:
                        break
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
            return out

        loaded = self._bus.call(_load(), timeout_s=120.0)
        # Reported from the caller's thread: alerting publishes, which must not run on the loop.
        for unreadable in bad:
            self._quarantine(unreadable)
        return loaded

    async def _after_early_marker(self, watcher: Any) -> Any:
        """The first entry after an "initial values done" marker that came before any.

        nats-py sends that marker when the consumer reports nothing pending and its
        callback has handled nothing yet, which is also the case when every entry was
        already delivered but not yet handled (seen under load: an empty load of a
        full bucket). A bucket that holds messages gets a moment for them to arrive.
        """
        status = await self._kv.status()
        if status.values == 0:
            return None
        try:
            return await watcher.updates(timeout=0.5)
        except nats.errors.TimeoutError:
            return None  # only delete markers: every key was deleted

    def delete(self, key: str, *, expect: int) -> None:
        """Delete `key` if it is still at revision `expect`; raise Fenced otherwise."""
        self._bus.write_stamp()

        async def _delete(attempt: int) -> None:
            try:
                await self._kv.delete(key, last=expect)
            except nats.js.errors.KeyWrongLastSequenceError as err:
                if attempt and await self._gone(key):
                    return  # an earlier try that got no answer did delete it
                raise Fenced(f"{self.bucket}/{key} moved past revision {expect}") from err

        self._bus.write(_delete, what=f"{self.bucket}/{key}")

    async def _gone(self, key: str) -> bool:
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return True
        # nats-py returns a delete marker left by a TTL as an entry without a value.
        return entry.value is None
