"""The leader lease: one active control process, the others standbys that take over.

The lease is the key `leader` of the KV bucket `conveyor_control`, written with a
per-message TTL (`Nats-TTL`) and renewed by revision with a raw publish, because
nats-py's `kv.update` drops the TTL. Every write expects the key's last sequence,
read with `get_last_msg`, so taking over after an expiry works over the server's
expiry marker (which blocks nats-py's `kv.create`). The revision the lease was won
at is the epoch: the fencing token stamped on every write the active makes
(`Bus.write_stamp`), refused by the active itself once its own monotonic clock
says the lease may have run out (`leader_policy`).

Each control process also keeps a presence key `member.<id>` (same TTL) saying
whether it is active or standby, for `conveyor status`. `Leadership` runs all of
this from one thread over its own connection and calls `elected(epoch)` and
`deposed(reason)`; the node starts and stops the control actors in them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api

from actors import leader_policy as policy
from actors.leader_policy import Held, Holder, Seen
from bus.bridge import Bus
from bus.writes import retry_js
from conveyor.clock import Clock, SystemClock
from conveyor.config_control import ControlConfig
from conveyor.errors import BusUnavailable, ConveyorError, Fenced
from conveyor.logs import get_logger

log = get_logger(__name__)

BUCKET = "conveyor_control"
STREAM = f"KV_{BUCKET}"
LEADER_KEY = "leader"
MEMBER_PREFIX = "member."
EPOCH_HEADER = "Conveyor-Epoch"
"""Header every KV write and publish of the active carries: its lease's epoch."""

_EXPECT = api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE
_TTL = "Nats-TTL"
_OPERATION = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"
_WRONG_LAST = (10071, 10164)
_holder = msgspec.json.Decoder(Holder)


def default_id() -> str:
    """`<host>-<pid>`: unique among the control processes of one NATS."""
    return f"{socket.gethostname()}-{os.getpid()}"


class LeaseBucket:
    """Reads and writes of the lease key and the presence keys, on one connection."""

    def __init__(self, bus: Bus, ttl_s: float) -> None:
        self._bus = bus
        self._ttl = f"{int(ttl_s)}s"
        self._ttl_s = ttl_s

    def ensure(self) -> None:
        """Create the bucket if missing (an expiry marker lives one TTL)."""

        async def _ensure() -> None:
            try:
                await self._bus.js.key_value(BUCKET)
            except nats.js.errors.BucketNotFoundError:
                config = api.KeyValueConfig(
                    bucket=BUCKET,
                    history=1,
                    storage=api.StorageType.FILE,
                    limit_marker_ttl=self._ttl_s,
                    replicas=self._bus.replicas,
                )
                # Another control process may have created it meanwhile.
                with contextlib.suppress(nats.js.errors.BadRequestError):
                    await self._bus.js.create_key_value(config)

        # A cluster may not answer for a stream being created by another process yet.
        self._bus.call(retry_js(_ensure), timeout_s=60.0)

    def read(self) -> Seen:
        """What the lease key holds now, with the revision a write must expect."""

        async def _read() -> Seen:
            try:
                msg = await self._bus.js.get_last_msg(STREAM, f"$KV.{BUCKET}.{LEADER_KEY}")
            except nats.js.errors.NotFoundError:
                return Seen(kind="absent")
            headers = msg.headers or {}
            revision = int(msg.seq or 0)
            if headers.get(_MARKER_REASON):
                # The server's marker (`Nats-Rollup: sub`, no KV-Operation header).
                return Seen(kind="expired", revision=revision)
            if headers.get(_OPERATION) in ("DEL", "PURGE") or not msg.data:
                return Seen(kind="released", revision=revision)
            try:
                holder = _holder.decode(msg.data or b"")
            except msgspec.DecodeError:
                holder = None
            return Seen(kind="held", revision=revision, holder=holder)

        return self._bus.call(_read())

    def write(self, holder: Holder, *, expect: int) -> int:
        """Write the lease at `expect` keeping the TTL; raise Fenced when it moved."""
        headers = {_EXPECT: str(expect), _TTL: self._ttl}
        return self._publish(LEADER_KEY, msgspec.json.encode(holder), headers)

    def release(self, *, expect: int) -> None:
        """Delete the lease if it is still at `expect` (a standby may take it at once)."""
        self._publish(LEADER_KEY, b"", {_EXPECT: str(expect), _OPERATION: "DEL"})

    def announce(self, holder: Holder) -> None:
        """Say this process is here (and in which role) for one TTL."""
        self._publish(f"{MEMBER_PREFIX}{holder.id}", msgspec.json.encode(holder), {_TTL: self._ttl})

    def forget(self, member: str) -> None:
        """Remove a process's presence key (it is stopping)."""
        # The delete marker expires too: otherwise every clean stop leaves a subject
        # that `members` reads on every status request, forever.
        self._publish(f"{MEMBER_PREFIX}{member}", b"", {_OPERATION: "DEL", _TTL: self._ttl})

    def _publish(self, key: str, data: bytes, headers: dict[str, str]) -> int:
        async def _pub() -> int:
            try:
                ack = await self._bus.js.publish(f"$KV.{BUCKET}.{key}", data, headers=headers)
            except nats.js.errors.APIError as err:
                if err.err_code in _WRONG_LAST:
                    raise Fenced(f"{BUCKET}/{key} moved past {headers.get(_EXPECT)}") from err
                raise
            return int(ack.seq)

        return self._bus.call(_pub())

    def members(self) -> list[Holder]:
        """Every control process that announced itself within the last TTL."""

        async def _members() -> list[Holder]:
            info = await self._bus.js.stream_info(
                STREAM, subjects_filter=f"$KV.{BUCKET}.{MEMBER_PREFIX}>"
            )
            found: list[Holder] = []
            for subject in sorted((info.state.subjects or {}).keys()):
                try:
                    msg = await self._bus.js.get_last_msg(STREAM, subject)
                except nats.js.errors.NotFoundError:
                    continue
                if not msg.data:
                    continue  # an expiry marker: that process is gone
                try:
                    found.append(_holder.decode(msg.data))
                except msgspec.DecodeError:
                    continue
            return found

        return self._bus.call(_members())


class Leadership:
    """Campaigns for the lease, renews it, stands down on its own clock; one thread."""

    def __init__(
        self,
        bus: Bus,
        cfg: ControlConfig,
        *,
        elected: Callable[[int], None],
        deposed: Callable[[str], None],
        clock: Clock | None = None,
    ) -> None:
        self._bus = bus
        self._cfg = cfg
        self._ttl_s = cfg.leader_ttl_s
        self._elected = elected
        self._deposed = deposed
        self._clock = clock or SystemClock()
        self.lease = LeaseBucket(bus, cfg.leader_ttl_s)
        self.me = Holder(
            id=cfg.id or default_id(),
            host=socket.gethostname(),
            pid=os.getpid(),
            since=self._clock.now(),
        )
        self._held: Held | None = None
        self._acting = False
        self._act_at = 0.0
        self._announced_at = -1e18
        self._resigned = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)

    # --- the fence the active's writes pass ----------------------------------------------

    def fence_for(self, epoch: int) -> Callable[[], dict[str, str]]:
        """The `Bus.write_stamp` of the control actors started for `epoch`."""

        def _fence() -> dict[str, str]:
            held = self._held
            if held is None or held.epoch != epoch:
                raise Fenced(f"leader lease of epoch {epoch} is no longer held")
            if policy.must_stand_down(held, self._clock.monotonic(), self._ttl_s):
                raise Fenced(f"leader lease of epoch {epoch} may have run out")
            return {EPOCH_HEADER: str(epoch)}

        return _fence

    # --- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.lease.ensure()
        except BusUnavailable as err:
            # Campaigning retries it: a standby must not die of a slow cluster.
            log.warning("leader.bucket_unavailable", error=str(err))
        self._thread.start()

    def stop(self) -> None:
        """Stop campaigning; an active stops its actors and releases the lease."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        held = self._held
        if held is not None:
            self._stand_down("stopping", release=True)
        try:
            self.lease.forget(self.me.id)
        except (BusUnavailable, nats.errors.Error) as err:
            log.warning("leader.forget_failed", error=repr(err))  # it expires within a TTL

    def resign(self, reason: str) -> None:
        """Give the lease up at the next step (the control actors could not start)."""
        self._resigned = reason

    def _run(self) -> None:
        while not self._stop.wait(self._cfg.poll_s):
            try:
                self.step()
            except Exception:  # the lease thread must outlive any one failure
                log.exception("leader.step_failed")

    def step(self) -> None:
        """One pass: campaign (standby), or stand down, renew; then start acting when due."""
        resigned, self._resigned = self._resigned, ""
        held = self._held
        if held is None:
            self._campaign()
        elif resigned:
            self._stand_down(resigned, release=True)
        elif policy.must_stand_down(held, self._clock.monotonic(), self._ttl_s):
            self._stand_down("no renewal acknowledged in time", release=True)
        elif policy.renew_due(held, self._clock.monotonic(), self._ttl_s):
            self._renew(held)
        held = self._held
        if held is not None and not self._acting and self._clock.monotonic() >= self._act_at:
            self._acting = True
            log.info("leader.acting", id=self.me.id, epoch=held.epoch)
            self._elected(held.epoch)
        self._announce()

    def _campaign(self) -> None:
        try:
            seen = self.lease.read()
        except (BusUnavailable, nats.errors.Error) as err:
            log.warning("leader.read_failed", error=repr(err))
            with contextlib.suppress(BusUnavailable, nats.errors.Error):
                self.lease.ensure()  # the bucket may be missing (never created, or deleted)
            return
        if not policy.may_take_over(seen):
            return
        sent_at = self._clock.monotonic()
        since = self._clock.now()
        try:
            # The epoch is the revision this write gets; the record names it on renewal.
            revision = self.lease.write(
                msgspec.structs.replace(self.me, since=since, role="active"), expect=seen.revision
            )
        except Fenced:
            return  # another standby won
        except (BusUnavailable, nats.errors.Error) as err:
            log.warning("leader.campaign_failed", error=repr(err))
            with contextlib.suppress(BusUnavailable, nats.errors.Error):
                self.lease.ensure()  # no stream answers for a missing bucket
            return
        held = policy.won(revision, sent_at)
        self.me = msgspec.structs.replace(self.me, since=since, epoch=revision, role="active")
        self._announced_at = -1e18
        self._act_at = sent_at + policy.campaign_delay_s(seen, self._cfg.campaign_delay_s)
        self._held = held
        log.info(
            "leader.won",
            id=self.me.id,
            epoch=revision,
            over=seen.kind,
            previous=seen.holder.id if seen.holder else "",
        )
        # Written again at once so the value carries the epoch it was won at.
        self._renew(held)

    def _renew(self, held: Held) -> None:
        sent_at = self._clock.monotonic()
        try:
            revision = self.lease.write(self.me, expect=held.revision)
        except Fenced:
            log.warning("leader.deposed", id=self.me.id, epoch=held.epoch)
            self._stand_down("another process holds the lease", release=False)
            return
        except (BusUnavailable, nats.errors.Error, ConveyorError) as err:
            self._after_ambiguous(held, sent_at, err)
            return
        self._held = policy.renewed(held, revision, sent_at)

    def _after_ambiguous(self, held: Held, sent_at: float, err: Exception) -> None:
        log.warning("leader.renew_unanswered", epoch=held.epoch, error=repr(err))
        try:
            seen = self.lease.read()
        except (BusUnavailable, nats.errors.Error):
            return  # still unknown: the clock decides
        after = policy.after_ambiguous(held, seen, self.me.id, sent_at)
        if after is None:
            self._stand_down("the lease moved on", release=False)
        else:
            self._held = after

    def _stand_down(self, reason: str, *, release: bool) -> None:
        held = self._held
        # First: from here on every write of the control actors is refused.
        self._held = None
        was_acting = self._acting
        self._acting = False
        self.me = msgspec.structs.replace(self.me, epoch=0, role="standby")
        self._announced_at = -1e18  # says so at once
        log.warning(
            "leader.stood_down",
            id=self.me.id,
            epoch=held.epoch if held else 0,
            reason=reason,
            was_acting=was_acting,
        )
        if was_acting:
            self._deposed(reason)
        if release and held is not None:
            try:
                self.lease.release(expect=held.revision)
                log.info("leader.released", epoch=held.epoch)
            except (Fenced, BusUnavailable, nats.errors.Error):
                pass  # taken or expired already; nothing of ours is left there

    def _announce(self) -> None:
        now = self._clock.monotonic()
        if now - self._announced_at < policy.renew_every_s(self._ttl_s):
            return
        try:
            self.lease.announce(self.me)
        except (BusUnavailable, nats.errors.Error) as err:
            log.warning("leader.announce_failed", error=repr(err))
            return
        self._announced_at = now

    # --- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The active control (id, host, since, epoch) and the standbys, read from KV."""
        seen = self.lease.read()
        active = msgspec.to_builtins(seen.holder) if seen.kind == "held" and seen.holder else None
        members = self.lease.members()
        standbys = [
            msgspec.to_builtins(m) for m in members if active is None or m.id != active["id"]
        ]
        return {"active": active, "standbys": standbys, "ttl_s": self._ttl_s}
