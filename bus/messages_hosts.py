"""Messages between hosts: launchers answer for their own runs and lease holders.

The Reaper and the LeaseKeeper can prove a process dead only on their own host.
For a run or a holder on another host they ask that host (`LivenessQuery` on
`conveyor.hosts.<host>.liveness`), and every launcher says the same unasked on
each tick (`HostHeartbeat` on `conveyor.heartbeats.hosts`). A host heard by
neither for `launcher.host_silence_s` is dead.
"""

from __future__ import annotations

import msgspec

from bus.messages import LeaseHolder, Message


class RunLiveness(msgspec.Struct, frozen=True, kw_only=True):
    """One run as its own host sees it."""

    job_id: str
    attempt: int
    liveness: str
    """`alive`, `dead` or `uncertain` (`conveyor.procs.probe`, boot id included)."""
    exit_code: int | None = None
    """What the run wrapper recorded in the run's exit file; None: nothing recorded."""
    exit_age_s: float | None = None
    """How long ago it was recorded, by the owning host's clock (no cross-host skew)."""
    known: bool = True
    """False: this host has no such run (never had it, or it was forgotten)."""


class HostHeartbeat(Message, frozen=True):
    """Launcher -> Reaper, LeaseKeeper, core NATS, every tick: this host and its runs live."""

    host: str
    boot_id: str
    launcher: str
    pid: int
    create_time: float
    """The launcher process itself: the lease holder of its built-in steps and post-steps."""
    at: float
    runs: list[RunLiveness] = msgspec.field(default_factory=list)


class LivenessQuery(Message, frozen=True):
    """Reaper/LeaseKeeper -> the launchers of one host (request-reply): these, alive or not."""

    runs: list[str] = msgspec.field(default_factory=list)
    """Run keys `<job>.<attempt>`."""
    holders: list[LeaseHolder] = msgspec.field(default_factory=list)


class LivenessAnswer(Message, frozen=True):
    """The answer, from any launcher of the host asked (they probe the same machine)."""

    host: str
    boot_id: str
    runs: list[RunLiveness] = msgspec.field(default_factory=list)
    holders: list[str] = msgspec.field(default_factory=list)
    """Per holder asked, in order: `alive`, `dead` or `uncertain`."""
