"""Active/standby control on one real nats-server: two `control` processes and a launcher.

Shared by the end-to-end tests of the leader lease and by `bench/takeover.py`.
`EpochWatch` records every message on the server that carries a leader epoch
(`Conveyor-Epoch`: KV writes and publishes of an active control), when it was seen.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors

from actors.leader import EPOCH_HEADER, LeaseBucket
from actors.leader_policy import Seen
from bus import subjects
from bus.bridge import Bus
from conveyor.app.client import Client
from conveyor.clock import SystemClock
from conveyor.errors import ConveyorError
from tests.harness import Processes, wait_until

TTL_S = 10.0
"""The smallest TTL validation allows: a takeover takes about this long."""

CLOCK = SystemClock()


def standby_toml(ttl_s: float = TTL_S, *, campaign_delay_s: float = 1.0, side: bool = True) -> str:
    """The `[control]` section that turns the leader lease on (and a second repository)."""
    text = (
        f"\n[control]\nleader_lease = true\nleader_ttl_s = {ttl_s}\n"
        f"campaign_delay_s = {campaign_delay_s}\npoll_s = 0.2\n"
    )
    # A second repository: the items' jobs run side by side (one job per repository).
    return text + (
        '\n[[repos]]\nname = "side"\nprefix = "SIDE"\ntemplate = "demo"\n' if side else ""
    )


@dataclass(frozen=True)
class Stamped:
    """One message carrying an epoch: when it was seen (monotonic), where, which epoch."""

    at: float
    subject: str
    epoch: int


class EpochWatch:
    """Every message on the server with an epoch header, from a core subscription on `>`."""

    def __init__(self, url: str) -> None:
        self._bus = Bus.connect(url, name="epoch-watch")
        self._lock = threading.Lock()
        self._seen: list[Stamped] = []

        async def _cb(msg: Any) -> None:
            epoch = (msg.headers or {}).get(EPOCH_HEADER)
            # A consumer's delivery of a stored message (`$JS.ACK…` reply) is a read, not a write.
            if epoch and not (msg.reply or "").startswith("$JS.ACK"):
                with self._lock:
                    self._seen.append(Stamped(CLOCK.monotonic(), msg.subject, int(epoch)))

        async def _sub() -> None:
            await self._bus.nc.subscribe(">", cb=_cb)
            await self._bus.nc.flush()

        self._bus.call(_sub())
        self.lease = LeaseBucket(self._bus, TTL_S)

    def stamped(self, *, since: float = 0.0) -> list[Stamped]:
        with self._lock:
            return [s for s in self._seen if s.at >= since]

    def leader(self) -> Seen:
        return self.lease.read()

    def close(self) -> None:
        self._bus.close()


def active_of(watch: EpochWatch, procs: Processes, names: tuple[str, ...]) -> tuple[str, int]:
    """Which of `names` holds the lease now, and its epoch (waits for one to hold it)."""

    def _held() -> tuple[str, int] | None:
        try:
            seen = watch.leader()
        except (ConveyorError, nats.errors.Error):
            # The bucket is being created, or its stream's leader was just killed and the
            # cluster answers 503 until it elects another: as the leader actor, try again.
            return None
        holder = seen.holder
        if seen.kind != "held" or holder is None or not holder.epoch:
            return None
        for name in names:
            proc = procs.procs.get(name)
            if proc is not None and proc.pid == holder.pid:
                return name, holder.epoch
        return None

    found: tuple[str, int] = wait_until(_held, what="an active control", deadline_s=30)
    return found


def start_pair(
    procs: Processes, client: Client, watch: EpochWatch, *, launcher: bool = True
) -> tuple[str, str, int]:
    """Start controls `c1` and `c2` (and a launcher) at once: (active, standby, epoch)."""
    procs.start("c1", "control")
    procs.start("c2", "control")
    if launcher:
        procs.start("launcher", "launcher")
    active, epoch = active_of(watch, procs, ("c1", "c2"))
    wait_until(
        lambda: len(_status(client).get("control", {}).get("standbys", [])) >= 1,
        what="the standby announced",
        deadline_s=30,
    )
    return active, "c2" if active == "c1" else "c1", epoch


def _status(client: Client) -> dict[str, Any]:
    try:
        status: dict[str, Any] = client.request(subjects.STATUS)
    except Exception:
        return {}
    return status


def status(client: Client) -> dict[str, Any]:
    """`conveyor.status`, or {} while nobody answers."""
    return _status(client)


def kill(procs: Processes, name: str) -> float:
    """Kill -9 `name`; the monotonic time it died."""
    procs.kill(name)
    return CLOCK.monotonic()


def freeze(procs: Processes, name: str) -> int:
    pid = procs.procs[name].pid
    os.kill(pid, signal.SIGSTOP)
    return pid


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def log_of(procs: Processes, name: str) -> str:
    path: Path = procs.tmp / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""
