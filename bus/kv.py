"""Typed KV buckets: reads with their revision, compare-and-swap writes, a full load.

Every record read from a bucket is decoded here, by `Store._decode`. A record that
does not decode (written by a newer or broken version, or by hand) is quarantined:
logged as `kv.quarantined`, alerted once (`Alert.kind` `quarantined`, one stream
message per record revision), skipped by `load_all`, and left where it is, untouched,
for the operator to read, fix or delete. `get` of such a key raises `Quarantined`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api as js_api
from nats.js.kv import KeyValue

from bus import fence
from bus.messages import Alert, encode
from bus.writes import retry_write
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

GET_MANY_BATCH = 256
"""Reads `get_many` keeps in flight at once."""


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

    def create(self, key: str, value: S, *, over: int = 0) -> int:
        """Store `value` only if `key` does not exist; raise KeyExists otherwise.

        `over`: the revision of the key's delete marker, if the caller knows it (its
        own `delete`'s answer): then one write, where creating over an unknown marker
        takes three (a refused write, a read of the marker, the write).
        """
        data = encode(value)
        try:
            return self._bus.write(self._creating(key, data, over), what=f"{self.bucket}/{key}")
        except BusUnavailable:
            landed = self._landed(key, data)
            if landed is None:
                raise
            return landed

    async def create_async(self, key: str, data: bytes) -> int:
        """`create` of encoded `data` from the bus loop itself, with no thread in between."""
        what = f"{self.bucket}/{key}"
        op = fence.refenced(self._creating(key, data), self._bus.write_stamp)
        try:
            return await retry_write(op, budget_s=self._bus.write_retry_s, what=what)
        except BusUnavailable:
            landed = await self._landed_async(key, data)
            if landed is None:
                raise
            return landed

    def _creating(self, key: str, data: bytes, over: int = 0) -> Callable[[int], Awaitable[int]]:
        """The create's write, tried again by `bus.writes.retry_write` while unanswered."""
        stamp = self._bus.write_stamp()

        async def _create(attempt: int) -> int:
            try:
                if over > 0:
                    with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                        # Written since the marker (or never deleted): the plain create decides.
                        return await fence.update(self._kv, key, data, over, stamp)
                return int(await fence.create(self._kv, key, data, stamp))
            except nats.js.errors.KeyWrongLastSequenceError as err:
                landed = await self._landed_async(key, data) if attempt else None
                if landed is None:
                    raise KeyExists(key) from err
                return landed

        return _create

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

    def put(self, key: str, value: S) -> int:
        """Store `value` whatever the key holds (for records with one writer, e.g. indexes)."""
        data = encode(value)

        async def _put() -> int:
            return int(await self._kv.put(key, data))

        return self._bus.call(_put())

    def update_many(self, writes: list[tuple[str, S, int]]) -> dict[str, int]:
        """CAS-write many (key, value, expected revision) at once, updates in flight together.

        Returns the revisions of the writes that landed; a key left out was not written
        (a moved revision, an outage) and is the caller's to write again one at a time.
        """
        stamp = self._bus.write_stamp()

        async def _one(key: str, value: S, expect: int) -> int | None:
            data = encode(value)
            try:
                return await fence.update(self._kv, key, data, expect, stamp)
            except Exception:  # noqa: BLE001 - an unanswered write may have landed all the same
                return await self._landed_async(key, data)

        async def _all() -> dict[str, int]:
            done = await asyncio.gather(*(_one(*write) for write in writes))
            return {w[0]: r for w, r in zip(writes, done, strict=True) if r is not None}

        return self._bus.call(_all(), timeout_s=120.0) if writes else {}

    def get_many(self, keys: list[str]) -> dict[str, Versioned[S]]:
        """Read many keys at once (requests in flight together); absent keys are left out."""
        bad: list[_Unreadable] = []

        async def _one(key: str) -> Versioned[S] | None:
            try:
                entry = await self._kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None
            value = self._decode(key, entry.revision, entry.value)
            if isinstance(value, _Unreadable):
                bad.append(value)
                return None
            if value is None or entry.revision is None:
                return None
            return Versioned(value, entry.revision)

        async def _all() -> dict[str, Versioned[S]]:
            out: dict[str, Versioned[S]] = {}
            for start in range(0, len(keys), GET_MANY_BATCH):
                batch = keys[start : start + GET_MANY_BATCH]
                for key, got in zip(batch, await asyncio.gather(*map(_one, batch)), strict=True):
                    if got is not None:
                        out[key] = got
            return out

        found = self._bus.call(_all(), timeout_s=120.0)
        for unreadable in bad:
            self._quarantine(unreadable)
        return found

    def since(self, seq: int) -> tuple[dict[str, Versioned[S] | None], int]:
        """The latest write of every key written after stream sequence `seq`, and the last one.

        A key deleted or purged since maps to None. Reads only those writes (one ordered
        consumer from `seq` + 1), so its cost is the number of writes since, not the
        bucket's size.
        """
        writes, last = self.walk(seq)
        return {key: value for key, _, value in writes}, last

    def walk(
        self, seq: int, *, limit: int = 0, keys: str = ">"
    ) -> tuple[list[tuple[str, int, Versioned[S] | None]], int]:
        """Writes after stream sequence `seq` in order, as (key, sequence, value or None).

        At most `limit` of them (0: all), of keys matching the `keys` pattern. The bucket
        keeps one message per key, so each key comes once, at its latest write. Also
        returns the stream's last sequence when every write was read, else the last read.
        """
        bad: list[_Unreadable] = []
        pre: str = self._kv._pre

        async def _walk() -> tuple[list[tuple[str, int, Versioned[S] | None]], int]:
            js = self._kv._js
            info = await js.stream_info(self._kv._stream)
            last = int(info.state.last_seq)
            out: list[tuple[str, int, Versioned[S] | None]] = []
            if last <= seq:
                return out, last
            if keys != ">":
                try:
                    # One lookup instead of a consumer that would wait to find nothing.
                    await js.get_msg(
                        self._kv._stream, seq=seq + 1, subject=f"{pre}{keys}", next=True
                    )
                except nats.js.errors.NotFoundError:
                    return out, last
            sub = await js.subscribe(
                f"{pre}{keys}",
                ordered_consumer=True,
                config=js_api.ConsumerConfig(
                    deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=seq + 1,
                ),
                inactive_threshold=2.0,
            )
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=2.0 if keys != ">" else 10.0)
                    except nats.errors.TimeoutError:
                        return out, last  # nothing matching after `seq`
                    meta = msg.metadata
                    at = meta.sequence.stream
                    key = msg.subject[len(pre) :]
                    operation = (msg.headers or {}).get("KV-Operation", "")
                    value = None if operation else self._decode(key, at, msg.data)
                    if isinstance(value, _Unreadable):
                        bad.append(value)
                    else:
                        out.append((key, at, None if value is None else Versioned(value, at)))
                    if at >= last or meta.num_pending == 0:
                        return out, max(last, at)
                    if limit and len(out) >= limit:
                        return out, at
            finally:
                await sub.unsubscribe()

        found = self._bus.call(_walk(), timeout_s=120.0)
        for unreadable in bad:
            self._quarantine(unreadable)
        return found

    def last_seq(self) -> int:
        """The bucket stream's last sequence: the revision of its newest write."""

        async def _last() -> int:
            info = await self._kv._js.stream_info(self._kv._stream)
            return int(info.state.last_seq)

        return self._bus.call(_last())

    def keys_under(self, prefix: str) -> list[str]:
        """Keys that start with `prefix`, deleted ones too (from the subject counts, no values)."""
        pre: str = self._kv._pre

        async def _keys() -> list[str]:
            info = await self._kv._js.stream_info(
                self._kv._stream, subjects_filter=f"{pre}{prefix}>"
            )
            return sorted(subject[len(pre) :] for subject in info.state.subjects or {})

        return self._bus.call(_keys())

    def delete(self, key: str, *, expect: int) -> int:
        """Delete `key` if it is still at revision `expect`; raise Fenced otherwise.

        Returns the delete marker's revision (0 when an earlier, unanswered try
        deleted it): `create(key, value, over=that)` writes over it in one request.
        """
        stamp = self._bus.write_stamp()

        async def _delete(attempt: int) -> int:
            try:
                return await fence.delete(self._kv, key, expect, stamp)
            except nats.js.errors.KeyWrongLastSequenceError as err:
                if attempt and await self._gone(key):
                    return 0  # an earlier try that got no answer did delete it
                raise Fenced(f"{self.bucket}/{key} moved past revision {expect}") from err

        return int(self._bus.write(_delete, what=f"{self.bucket}/{key}"))

    async def _gone(self, key: str) -> bool:
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return True
        # nats-py returns a delete marker left by a TTL as an entry without a value.
        return entry.value is None
