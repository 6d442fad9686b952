"""Pure decisions about other hosts: when a host is silent, what its answers prove.

The Reaper and the LeaseKeeper can probe a process only on their own host. For
another host they use what that host says: its launchers' heartbeats (every
tick) and their answers to a liveness question. A host heard by neither for
`silence_s` is dead, counted from the last time it was heard, or from the
watcher's own start when it was never heard (a control process that just
restarted knows nothing yet, so it waits a full silence). A host that speaks
again is alive again, and may be alerted again if it falls silent again.
Nothing here does I/O, reads a clock or logs.
"""

from __future__ import annotations

import math

import msgspec

ALIVE = "alive"
DEAD = "dead"
UNCERTAIN = "uncertain"


class Seen(msgspec.Struct, frozen=True, kw_only=True):
    """When a host was last heard (the watcher's clock) and under which boot."""

    at: float
    boot_id: str = ""


class HostState(msgspec.Struct, frozen=True, kw_only=True):
    """What one watcher knows of the other hosts."""

    since: float
    """When the watcher started: the silence of a host never heard counts from here."""
    seen: dict[str, Seen] = msgspec.field(default_factory=dict)
    alerted: frozenset[str] = frozenset()
    """Hosts whose silence was alerted, until they are heard again."""


def heard(state: HostState, host: str, boot_id: str, *, now: float) -> HostState:
    """`host` spoke (a heartbeat or an answer) at `now`."""
    seen = {**state.seen, host: Seen(at=now, boot_id=boot_id)}
    return msgspec.structs.replace(state, seen=seen, alerted=state.alerted - {host})


def silence(state: HostState, host: str, *, now: float) -> float:
    """Seconds since `host` was last heard (since the watcher started, if never)."""
    seen = state.seen.get(host)
    last = seen.at if seen is not None else state.since
    age = now - last
    return age if math.isfinite(age) else 0.0


def is_silent(state: HostState, host: str, *, now: float, silence_s: float) -> bool:
    """Whether `host` has been silent for `silence_s`; this watcher's host never is."""
    return bool(host) and silence(state, host, now=now) >= silence_s


def alert_due(state: HostState, host: str) -> tuple[HostState, bool]:
    """Whether a silent `host` gets its one alert now (and the state remembering it)."""
    if host in state.alerted:
        return state, False
    return msgspec.structs.replace(state, alerted=state.alerted | {host}), True


def holder_alive(
    state: HostState,
    host: str,
    holder_boot: str,
    answer: str | None,
    *,
    now: float,
    silence_s: float,
) -> bool | None:
    """A lease holder on another host: True/False when proven, None when it cannot be told.

    `answer` is what the holder's host said of it (None: not asked, or no answer).
    Silence proves death; so does a host heard fresh under another boot than the
    holder's. Anything else counts as alive (None), as for a local probe.
    """
    if answer == ALIVE:
        return True
    if answer == DEAD:
        return False
    if is_silent(state, host, now=now, silence_s=silence_s):
        return False
    seen = state.seen.get(host)
    if seen is not None and holder_boot and seen.boot_id and seen.boot_id != holder_boot:
        return False
    return None


def run_liveness(
    probed: str, recorded: tuple[int, float] | None, *, now: float
) -> tuple[str, int | None, float | None]:
    """What a launcher says of one of its host's runs: (liveness, exit code, age of the exit).

    `probed` is the wrapper's probe (boot id included); `recorded` the exit file's
    (code, time), both on this host's clock, so the age carries no clock skew.
    """
    if recorded is None:
        return probed, None, None
    code, at = recorded
    return probed, code, max(0.0, now - at)
