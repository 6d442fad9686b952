"""Decisions of the leader lease: when to renew, when to stand down, when to take over.

The lease is one KV key with a per-message TTL, renewed by revision. Everything
here is judged on this process's own monotonic clock, never on a wall clock
compared across hosts: a renewal counts from the moment it was *sent* (the server
wrote it later, so its expiry on the server's clock comes later still), and the
active stands down `fence_margin_s` before the TTL would run out from there. A
standby takes over only a key that is absent, deleted by a holder that stood down,
or expired (the server's marker), and after an expiry it waits the campaign delay
first. The revision the lease was won at is the epoch, the fencing token.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Kind = Literal["absent", "held", "expired", "released"]
"""What the lease key holds: nothing ever (or a marker long gone), a holder's record,
the server's expiry marker, or the delete marker a holder left when it stood down."""


class Holder(msgspec.Struct, frozen=True, kw_only=True):
    """The value of the lease key and of each control process's presence key."""

    id: str
    host: str
    pid: int = 0
    since: float = 0.0
    """Wall-clock time it won the lease (or started, in a presence key): for people."""
    epoch: int = 0
    """The revision the lease was won at (0 in a standby's presence key)."""
    role: str = "standby"


class Seen(msgspec.Struct, frozen=True, kw_only=True):
    """One read of the lease key: what it holds and the revision to expect when writing."""

    kind: Kind
    revision: int = 0
    holder: Holder | None = None


class Held(msgspec.Struct, frozen=True, kw_only=True):
    """This process's lease: its epoch, the key's revision, and when it was last renewed."""

    epoch: int
    revision: int
    sent_at: float
    """Monotonic time the last acknowledged write (win or renewal) was sent."""


def fence_margin_s(ttl_s: float) -> float:
    """How long before the TTL (counted from a renewal's send) the active stops acting."""
    return ttl_s / 4


def renew_every_s(ttl_s: float) -> float:
    """How often the active renews: three tries fit in one TTL."""
    return ttl_s / 3


def valid_until(held: Held, ttl_s: float) -> float:
    """The monotonic time after which this process must not write or act."""
    return held.sent_at + ttl_s - fence_margin_s(ttl_s)


def renew_due(held: Held, now: float, ttl_s: float) -> bool:
    """Whether the next renewal is due."""
    return now - held.sent_at >= renew_every_s(ttl_s)


def must_stand_down(held: Held, now: float, ttl_s: float) -> bool:
    """Whether the lease may have run out already by this process's own clock."""
    return now >= valid_until(held, ttl_s)


def may_take_over(seen: Seen) -> bool:
    """Whether a standby may try to win the lease now (nobody holds it)."""
    return seen.kind != "held"


def campaign_delay_s(seen: Seen, delay_s: float) -> float:
    """How long a winner waits before acting.

    Only after an expiry: the former active may still be finishing what it was
    doing when its own clock told it to stop. A holder that deleted the key has
    stopped already, and an absent key means any expiry was long ago.
    """
    return delay_s if seen.kind == "expired" else 0.0


def won(revision: int, sent_at: float) -> Held:
    """The lease just won at `revision`: that revision is the epoch."""
    return Held(epoch=revision, revision=revision, sent_at=sent_at)


def renewed(held: Held, revision: int, sent_at: float) -> Held:
    """The lease after an acknowledged renewal."""
    return msgspec.structs.replace(held, revision=revision, sent_at=sent_at)


def after_ambiguous(held: Held, seen: Seen, me: str, sent_at: float) -> Held | None:
    """After a renewal that got no answer, what a fresh read says about the lease.

    A renewal that timed out may have landed: if the key still carries this
    process's record at this epoch, its revision is adopted (counted from the
    unanswered send, which came before the write). Anything else: deposed (None).
    """
    holder = seen.holder
    if seen.kind != "held" or holder is None or holder.id != me:
        return None
    # The record written when the lease was won names no epoch yet (it is that write's revision).
    if holder.epoch != held.epoch and seen.revision != held.epoch:
        return None
    if seen.revision == held.revision:
        # The renewal did not land; the lease still counts from the last one that did.
        return held
    return renewed(held, seen.revision, sent_at)
