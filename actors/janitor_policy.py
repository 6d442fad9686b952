"""Pure decisions of the Janitor: what retention may remove, and the disk's alerts and pause.

A task's files and records go only once the task is settled: done or cancelled,
unchanged since the cutoff, with no job, run or post-deploy watch still open.
Records are removed only in their final state (a finished job with nothing left to
publish, a finished run already reported, a closed watch), which their owners never
write again, so deleting them never fences an owner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import msgspec

from actors.launcher_policy import FINISHED as RUN_FINISHED
from actors.launcher_policy import Run
from actors.monitor_policy import Watch
from actors.queue_policy import FINISHED as JOB_FINISHED
from actors.queue_policy import Job
from actors.task_policy import Task
from bus.messages import Alert
from conveyor.config import DiskConfig

DAY_S = 86400.0
MB = 1024 * 1024

TASKLESS_EFFECTS = ("telegram",)
"""Effect-key prefixes that name no task (one sent alert each): they go by age alone."""

KIND_DISK_USAGE = "disk_usage"
KIND_LAUNCH_PAUSED = "launch_paused"
KIND_LAUNCH_RESUMED = "launch_resumed"


class LaunchPause(msgspec.Struct, frozen=True):
    """Janitor -> QueueWorker (tell): start no job while `reason` is set; "" resumes."""

    reason: str = ""


def cutoff(now: float, days: float) -> float:
    """The newest last-change time a record may have and still be removed."""
    return now - days * DAY_S


def settled(
    tasks: Iterable[Task],
    *,
    before: float,
    jobs: Iterable[Job] = (),
    runs: Iterable[Run] = (),
    watches: Iterable[Watch] = (),
) -> set[str]:
    """Ids of tasks done or cancelled at or before `before` that nothing still works on."""
    open_ids = {j.task_id for j in jobs if j.status not in JOB_FINISHED or j.outbox}
    open_ids |= {r.task_id for r in runs if r.status != RUN_FINISHED or not r.reported}
    open_ids |= {w.task_id for w in watches if not w.closed}
    return {
        t.id
        for t in tasks
        if t.terminal and not t.outbox and t.updated_at <= before and t.id not in open_ids
    }


class EffectRow(NamedTuple):
    """What the policy needs of one effect-ledger entry."""

    key: str
    done: bool
    at: float
    """When it was recorded done (or started, when it never was)."""


class Compaction(NamedTuple):
    """Keys to delete, per bucket."""

    jobs: list[str]
    runs: list[str]
    watches: list[str]
    effects: list[str]

    @property
    def total(self) -> int:
        return len(self.jobs) + len(self.runs) + len(self.watches) + len(self.effects)


def compaction(
    gone: set[str],
    known: set[str],
    *,
    jobs: Mapping[str, Job],
    runs: Mapping[str, Run],
    watches: Mapping[str, Watch],
    effects: Iterable[EffectRow],
    before: float,
) -> Compaction:
    """The records of the settled tasks `gone`; `known` are all task ids.

    An effect belongs to the task its key names first (`<ID>.merge.…`,
    `monitor.<ID>.rollback`); one naming no known task goes only if its prefix is a
    taskless kind, it is done, and it is older than `before`. Any other is kept.
    """
    return Compaction(
        jobs=sorted(k for k, j in jobs.items() if j.task_id in gone),
        runs=sorted(k for k, r in runs.items() if r.task_id in gone),
        watches=sorted(k for k, w in watches.items() if w.task_id in gone),
        effects=sorted(e.key for e in effects if _effect_goes(e, gone, known, before)),
    )


def _effect_goes(effect: EffectRow, gone: set[str], known: set[str], before: float) -> bool:
    parts = effect.key.split(".")
    owner = next((p for p in parts[:2] if p in known), None)
    if owner is not None:
        return owner in gone
    return parts[0] in TASKLESS_EFFECTS and effect.done and effect.at <= before


def log_generations(path: str, keep: int) -> list[tuple[str, str]]:
    """Renames that make room for a new `<path>.1`, oldest first (`.keep` is overwritten)."""
    return [(f"{path}.{n - 1}", f"{path}.{n}") for n in range(keep, 1, -1)]


# --- the disk --------------------------------------------------------------------------


class DiskUsage(NamedTuple):
    """The shape of `shutil.disk_usage`: bytes."""

    total: int
    used: int
    free: int


class DiskState(msgspec.Struct, frozen=True, kw_only=True):
    """What the last probe saw, and which alert is standing."""

    percent: float = 0.0
    free_mb: float = 0.0
    alerted: bool = False
    """The use is over `disk.alert_percent` and that was alerted (once per crossing)."""
    paused: bool = False
    """Free space is under `disk.min_free_mb`: launching is paused."""
    probed_at: float | None = None


class DiskDecision(NamedTuple):
    """The disk's new state, the alerts to send, and whether launching pauses."""

    state: DiskState
    alerts: tuple[Alert, ...]
    pause: str
    """Why launching is paused now; "" when it may go on."""


def on_probe(
    state: DiskState, usage: DiskUsage, *, now: float, cfg: DiskConfig, where: str
) -> DiskDecision:
    """Alert once when the use crosses the threshold; pause below the floor, resume above."""
    percent = 100.0 * usage.used / usage.total if usage.total > 0 else 0.0
    free_mb = usage.free / MB
    over = cfg.alert_percent > 0 and percent >= cfg.alert_percent
    low = cfg.min_free_mb > 0 and free_mb < cfg.min_free_mb
    alerts: list[Alert] = []
    if over and not state.alerted:
        alerts.append(
            _alert(
                "warning",
                KIND_DISK_USAGE,
                f"disk {percent:.1f}% used under {where} "
                f"(alert above {cfg.alert_percent:g}%), {free_mb:.0f} MB free",
                now,
            )
        )
    reason = (
        f"{free_mb:.0f} MB free under {where}, below the floor of {cfg.min_free_mb:g} MB"
        if low
        else ""
    )
    if low and not state.paused:
        alerts.append(
            _alert("error", KIND_LAUNCH_PAUSED, f"launching paused: {reason}", now),
        )
    if state.paused and not low:
        alerts.append(
            _alert(
                "info",
                KIND_LAUNCH_RESUMED,
                f"launching resumed: {free_mb:.0f} MB free under {where} "
                f"(floor {cfg.min_free_mb:g} MB)",
                now,
            )
        )
    new = DiskState(percent=percent, free_mb=free_mb, alerted=over, paused=low, probed_at=now)
    return DiskDecision(new, tuple(alerts), reason)


def _alert(level: str, kind: str, text: str, now: float) -> Alert:
    return Alert(level=level, text=text, source="janitor", at=now, kind=kind)
