"""Janitor: removes what finished tasks leave behind, rotates agent logs, watches the disk.

On its ticks it probes the data directory's filesystem every `disk.interval_s`
(alerting above `disk.alert_percent`, pausing launching below `disk.min_free_mb`
through the QueueWorker) and rotates agent output logs over `retention.log_max_mb`;
every `retention.interval_s` it removes settled tasks' worktrees and run
directories and deletes their closed records. A sweep walks only the task writes
after its cursor, a bounded number at a time (`actors/janitor_sweep.py`). It owns
no record but its cursor: a delete is a compare-and-swap on the revision it read,
so a record its owner wrote meanwhile stays.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pykka

from actors import janitor_branches as branches
from actors import janitor_files as files
from actors import janitor_policy as policy
from actors import janitor_sweep as sweep
from actors.janitor_policy import DiskState, DiskUsage, EffectRow, LaunchPause
from actors.janitor_sweep import Stores as Stores
from actors.janitor_sweep import stores as stores
from actors.owner import Owner
from actors.task_policy import Task
from bus.bridge import Bus, Store, Versioned
from bus.effects import DONE, Effect
from bus.messages import StageChanged, Tick
from conveyor.clock import Clock
from conveyor.config import Config
from conveyor.errors import Fenced
from conveyor.layout import Layout
from conveyor.logs import get_logger
from gateways.forge import Forge
from gateways.git_branches import WorkspaceBusy

log = get_logger(__name__)

BACKLOG_PAUSE_S = 5.0
"""Seconds between sweeps while a backlog of task writes waits (`sweep.SWEEP_BATCH` each)."""

DiskProbe = Callable[[Path], DiskUsage]


def disk_usage(path: Path) -> DiskUsage:
    """The filesystem holding `path` (the seam tests replace to fake a full disk)."""
    while not path.exists() and path != path.parent:
        path = path.parent  # not made yet: its filesystem is its nearest existing parent's
    total, used, free = shutil.disk_usage(path)
    return DiskUsage(total, used, free)


class JanitorStatus(msgspec.Struct, frozen=True):
    """Status endpoint -> Janitor (ask)."""


class Janitor(Owner):
    """Retention of finished tasks' files and records, log rotation, and the disk's floor."""

    name = "janitor"
    # A failed pass must not stop the janitor; the next tick tries again.
    failed_event = "tick_failed"
    stops_when_fenced = False

    def __init__(
        self,
        stores: Stores,
        bus: Bus,
        worker: pykka.ActorRef[Any],
        clock: Clock,
        cfg: Config,
        *,
        probe: DiskProbe | None = None,
        forge: Forge | None = None,
    ) -> None:
        super().__init__()
        self._stores, self._bus, self._worker, self._clock = stores, bus, worker, clock
        self._retention, self._disk = cfg.retention, cfg.disk
        self._layout = Layout(cfg.data_path)
        self._probe = probe
        self._forge = forge
        self._pending = branches.Pending(cfg.retention)
        self._state = DiskState()
        self._pause = ""
        self._next_probe = 0.0
        self._next_sweep = 0.0
        self._last_sweep_at: float | None = None
        self._counts: dict[str, int] = {}
        self._cursor: sweep.SweepCursor | None = None
        self._more = False

    def handle(self, message: Any) -> Any:
        match message:
            case Tick():
                now = self._clock.now()
                if now >= self._next_probe:
                    self._next_probe = now + self._disk.interval_s
                    self._step("disk", self._check_disk, now)
                    self._step("rotation", self._rotate_logs, now)
                self._step("branches", self._remove_branches, now)
                if self._retention.enabled and now >= self._next_sweep:
                    self._next_sweep = now + self._retention.interval_s
                    self._step("sweep", self._sweep, now)
                    if self._more:
                        # A backlog: the next batch comes sooner, but paced, so a long
                        # backlog (an upgrade) never keeps the bus busy for long.
                        self._next_sweep = now + min(self._retention.interval_s, BACKLOG_PAUSE_S)
            case StageChanged():
                self._pending.heard(message.task_id, message.new)
            case JanitorStatus():
                return self._status()
        return None

    def _step(self, what: str, step: Callable[[float], None], now: float) -> None:
        """Run one duty; its failure is logged and never keeps the others from running."""
        try:
            step(now)
        except Exception:  # the next due tick tries again
            self._count(f"{what}_failures")
            log.exception("janitor.step_failed", step=what)

    # --- the disk --------------------------------------------------------------------

    def _check_disk(self, now: float) -> None:
        root = self._layout.root
        usage = (self._probe or disk_usage)(root)
        decision = policy.on_probe(self._state, usage, now=now, cfg=self._disk, where=str(root))
        self._state = decision.state
        free_mb = round(decision.state.free_mb)
        if decision.pause and not self._pause:
            log.warning("janitor.launching_paused", free_mb=free_mb, reason=decision.pause)
        elif self._pause and not decision.pause:
            log.info("janitor.launching_resumed", free_mb=free_mb)
        self._pause = decision.pause
        # Told on every probe, not only on a change: a restarted QueueWorker starts unpaused.
        self._worker.tell(LaunchPause(reason=decision.pause))
        for alert in decision.alerts:
            log.warning("janitor.disk_alerted", kind=alert.kind, text=alert.text)
            self._bus.emit(alert, msg_id=f"janitor:{alert.kind}:{now:.3f}")

    def _rotate_logs(self, _now: float) -> None:
        cap = int(self._retention.log_max_mb * policy.MB)
        if not self._retention.enabled or cap <= 0:
            return
        for path in files.output_logs(self._layout):
            try:
                if path.stat().st_size <= cap:
                    continue
                files.rotate(path, self._retention.log_keep)
            except OSError as err:
                log.warning("janitor.rotate_failed", path=str(path), error=str(err))
                continue
            self._count("logs_rotated")
            log.info("janitor.log_rotated", path=str(path), keep=self._retention.log_keep)

    # --- retention -------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        s, batch = self._stores, sweep.SWEEP_BATCH
        cursor = self._cursor or self._read_cursor()
        before = policy.cutoff(now, self._retention.worktrees_days)
        walked = sweep.walk_tasks(
            s.tasks, cursor.files, cursor.files_waiting, before=before, batch=batch
        )
        cursor.files, cursor.files_waiting, more = walked.cursor, [], walked.more
        removed = 0
        for entry in walked.due:
            if not files.leftovers(self._layout, entry.value.repo, entry.value.id):
                continue  # nothing on disk: no need to read its records
            if sweep.settled_now(s, entry.value, before):
                self._remove_files(entry.value)
                removed += 1
            else:
                cursor.files_waiting.append(entry.value.id)
        before = policy.cutoff(now, self._retention.records_days)
        walked = sweep.walk_tasks(
            s.tasks, cursor.records, cursor.records_waiting, before=before, batch=batch
        )
        cursor.records, cursor.records_waiting, more = walked.cursor, [], more or walked.more
        compacted = 0
        for entry in walked.due:
            records = sweep.records_of(s, entry.value.id)
            if not records.settled(entry.value, before):
                cursor.records_waiting.append(entry.value.id)
                continue
            compacted += self._compact(entry.value.id, records, before)
        for prefix in policy.TASKLESS_EFFECTS:
            gone, cursor.taskless[prefix], full = sweep.walk_taskless(
                s.effects, prefix, cursor.taskless.get(prefix, 0), before=before, batch=batch
            )
            self._delete("effects", s.effects, gone, sorted(gone))
            compacted, more = compacted + len(gone), more or full
        if s.cursor is not None:
            s.cursor.put(sweep.CURSOR_KEY, cursor)
        self._cursor, self._more = cursor, more
        self._last_sweep_at = now
        log.info("janitor.swept", settled=removed, compacted=compacted, more=more)

    def _read_cursor(self) -> sweep.SweepCursor:
        store = self._stores.cursor
        found = store.get(sweep.CURSOR_KEY) if store is not None else None
        return found.value if found is not None else sweep.SweepCursor()

    def _compact(self, task_id: str, records: sweep.TaskRecords, before: float) -> int:
        """Delete a settled task's closed records; how many were planned."""
        s = self._stores
        plan = policy.compaction(
            {task_id},
            {task_id},
            jobs={k: e.value for k, e in records.jobs.items()},
            runs={k: e.value for k, e in records.runs.items()},
            watches={k: e.value for k, e in records.watches.items()},
            effects=[_row(k, e.value) for k, e in records.effects.items()],
            before=before,
        )
        self._delete("jobs", s.jobs, records.jobs, plan.jobs)
        self._delete("runs", s.runs, records.runs, plan.runs)
        self._delete("watches", s.watches, records.watches, plan.watches)
        self._delete("effects", s.effects, records.effects, plan.effects)
        return plan.total

    def _remove_branches(self, now: float) -> None:
        """Done tasks heard of and settled since: their worktree and branch go at once."""
        for task_id in self._pending.due(now):
            task = self._pending.settled(self._stores, task_id, now)
            if task is None:
                continue
            try:
                self._remove_branch(task)
            except WorkspaceBusy:
                self._pending.ids.add(task_id)  # a job holds the clone: the next interval

    def _remove_branch(self, task: Task) -> bool:
        """Remove a done task's worktree and branch; True if its worktree went."""
        removed = branches.remove(self._layout, self._forge, task)
        if removed.worktree or removed.forge:  # not again at the retention sweep
            self._count("branches_removed")
        if removed.kept:
            self._count("branches_kept")
        if removed.worktree:
            self._count("worktrees_removed")
            log.info("janitor.worktree_removed", task_id=task.id, repo=task.repo)
        return removed.worktree

    def _remove_files(self, task: Task) -> None:
        try:
            if branches.deletable(task, self._retention):
                self._remove_branch(task)  # one missed when it settled (a restart)
            elif files.remove_worktree(self._layout, task.repo, task.id):
                self._count("worktrees_removed")
                log.info("janitor.worktree_removed", task_id=task.id, repo=task.repo)
            if files.remove_run_dirs(self._layout, task.id):
                self._count("run_dirs_removed")
                log.info("janitor.run_dirs_removed", task_id=task.id)
        except Exception:  # one task's leftovers never stop the others'
            log.exception("janitor.remove_failed", task_id=task.id)

    def _delete(
        self, what: str, store: Store[Any], read: dict[str, Versioned[Any]], keys: list[str]
    ) -> None:
        for key in keys:
            try:
                store.delete(key, expect=read[key].revision)
            except Fenced:
                # Its owner wrote it since it was read: not closed after all; next pass.
                log.info("janitor.compaction_skipped", bucket=store.bucket, key=key)
                continue
            self._count(f"{what}_compacted")
        if keys:
            log.info("janitor.compacted", bucket=store.bucket, records=len(keys))

    # --- status ----------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self._counts[what] = self._counts.get(what, 0) + 1

    def _status(self) -> dict[str, Any]:
        state = self._state
        return {
            "healthy": True,
            "retention_enabled": self._retention.enabled,
            "last_sweep_at": self._last_sweep_at,
            "disk": {
                "percent_used": round(state.percent, 1),
                "free_mb": round(state.free_mb),
                "alert_percent": self._disk.alert_percent,
                "min_free_mb": self._disk.min_free_mb,
                "over_threshold": state.alerted,
                "launching_paused": state.paused,
                "probed_at": state.probed_at,
            },
            **self._counts,
        }


def _row(key: str, effect: Effect) -> EffectRow:
    at = effect.done_at if effect.done_at is not None else effect.started_at
    return EffectRow(key=key, done=effect.status == DONE, at=at)
