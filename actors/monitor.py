"""PostDeployMonitor: watches production for a window after `done`, rolls back once when degraded.

Inputs: `StageChanged` deliveries (durable `monitor` on CONVEYOR_NOTIFY) and
`Tick`s. A `done` creates the task's watch in KV `conveyor_monitor` (a KV
`create`, so a redelivered `done` never restarts the window), then the
delivery is acked. On ticks, due probes run in worker threads and come back as
messages; the counts are CAS-written. A verdict is stored before it is acted
on, and the rollback runs through the effect ledger under
`monitor.<task>.rollback`, so neither a redelivery nor a restart runs it twice.
The verdict's `16-post-deploy-log.md` is committed to the task's branch (ledger key
`monitor.<task>.log`, see `actors.monitor_commit`) before the watch closes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pykka

from actors import monitor_policy as policy
from actors.monitor_commit import Committed, LogCommits, LogCommitter
from actors.monitor_policy import Probe, Watch
from actors.monitor_rollback import ROLLBACK_LOG, http_probe, rollback_once, task_dir
from actors.monitor_state import Watches
from actors.owner import Owner
from bus.bridge import Bus, Delivery, KeyExists, Store, Versioned
from bus.effects import Ledger
from bus.messages import Alert, StageChanged, Tick
from conveyor.clock import Clock, iso
from conveyor.config import Config, RepoConfig
from conveyor.errors import Fenced, InvalidField
from conveyor.logs import get_logger

log = get_logger(__name__)

LOG_NAME = "16-post-deploy-log.md"
__all__ = ["LOG_NAME", "ROLLBACK_LOG", "MonitorStatus", "PostDeployMonitor"]

ProbeFn = Callable[[str, float], Probe]
RecordFn = Callable[[str, str], None]


def _no_record(_task_id: str, _cause: str) -> None:
    """Default `record`: the task history is told nothing."""


class MonitorStatus(msgspec.Struct, frozen=True):
    """Status endpoint -> PostDeployMonitor (ask): counts, open and recently closed watches."""


class _Probed(msgspec.Struct, frozen=True):
    """Probe worker -> PostDeployMonitor (in-process): one probe's outcome."""

    task_id: str
    probe: Probe


class _RolledBack(msgspec.Struct, frozen=True):
    """Rollback worker -> PostDeployMonitor (in-process): the ledger's result, or an error."""

    task_id: str
    result: str = ""
    error: str = ""


class PostDeployMonitor(Owner):
    """Sole writer of the watches in `conveyor_monitor`; one rollback per task at most."""

    name = "monitor"
    # One bad message must not stop the monitor; a fenced watch is handled where it is written.
    failed_event = "failed"
    stops_when_fenced = False

    def __init__(
        self,
        bus: Bus,
        store: Store[Watch],
        effects: Ledger,
        clock: Clock,
        cfg: Config,
        *,
        data_dir: Path,
        record: RecordFn | None = None,
        probe: ProbeFn | None = None,
        python: str = sys.executable,
        committer: LogCommitter | None = None,
    ) -> None:
        super().__init__()
        self._bus, self._store, self._effects, self._clock = bus, store, effects, clock
        self._cfg, self._mcfg = cfg, cfg.monitor
        self._data_dir = data_dir
        self._record = record or _no_record
        self._probe = probe or http_probe
        self._python = python
        # Open watches only: a closed one leaves memory, counted (`actors.monitor_state`).
        self._state = Watches(bus, store)
        self._watches = self._state.open
        self._probing: set[str] = set()
        self._finishing: set[str] = set()
        # Probes are short (probe_timeout_s) and share a pool. A rollback may take
        # rollback_timeout_s: it gets its own daemon thread, so it neither holds up other
        # tasks' probes nor keeps a stopping process alive.
        self._probes = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="monitor-probe")
        self._commits: LogCommits | None = None
        if committer is not None:
            me = self.actor_ref

            def _tell(msg: Committed) -> None:
                with contextlib.suppress(pykka.ActorDeadError):
                    me.tell(msg)

            self._commits = LogCommits(committer, effects, clock, _tell, name=LOG_NAME)

    # --- lifecycle ----------------------------------------------------------------------

    def on_start(self) -> None:
        read = self._state.load()
        self._watches = self._state.open
        self._state.checkpoint()
        watching = sum(1 for e in self._watches.values() if e.value.status == policy.WATCHING)
        log.info("monitor.started", read=read, watches=len(self._watches), watching=watching)
        if self._mcfg.enabled:
            # A verdict stored before a crash is acted on now; the ledger keeps it to once.
            for entry in list(self._watches.values()):
                if policy.needs_finishing(entry.value):
                    self._finish(entry.value)

    def on_stop(self) -> None:
        self._probes.shutdown(wait=False, cancel_futures=True)
        # A running rollback is left to finish on its own: it is its own process group,
        # and the ledger plus its exit file tell the next monitor what happened.

    def handle(self, message: Any) -> Any:
        match message:
            case Delivery(body=StageChanged() as event):
                self._on_stage(event)
                message.ack()
            case Delivery():
                message.ack()
            case Tick():
                self._tick()
                self._state.checkpoint()
            case _Probed():
                self._on_probed(message)
            case _RolledBack():
                self._on_rolled_back(message)
            case Committed():
                self._on_committed(message)
            case MonitorStatus():
                return self._status()
        return None

    # --- starting a watch ---------------------------------------------------------------

    def _repo(self, name: str) -> RepoConfig | None:
        try:
            return self._cfg.repo(name)
        except InvalidField:
            return None

    def _on_stage(self, event: StageChanged) -> None:
        if event.new != "done":
            return
        repo = self._repo(event.repo)
        watch = policy.start_watch(event, repo, now=self._clock.now(), cfg=self._mcfg)
        if watch is None:
            why = policy.watched(repo, self._mcfg) or "window already over"
            log.info("monitor.not_watched", task_id=event.task_id, repo=event.repo, reason=why)
            return
        try:
            revision = self._store.create(watch.task_id, watch)
        except KeyExists:
            # A redelivered or repeated `done`: the window that runs is the first one.
            existing = self._store.get(watch.task_id)
            if existing is not None and watch.task_id not in self._watches:
                # A closed one stays out of memory (and is counted already).
                self._state.keep(existing, own=False)
            log.info("monitor.already_watching", task_id=watch.task_id)
            return
        self._state.keep(Versioned(watch, revision))
        log.info(
            "monitor.watch_started",
            task_id=watch.task_id,
            repo=watch.repo,
            health_url=watch.health_url,
            ends_at=watch.ends_at,
        )

    # --- probing ------------------------------------------------------------------------

    def _tick(self) -> None:
        if not self._mcfg.enabled:
            return
        now = self._clock.now()
        for task_id, entry in list(self._watches.items()):
            watch = entry.value
            if task_id in self._probing:
                continue
            if policy.window_over(watch, now):
                self._apply(entry, policy.on_window_end(watch, now))
            elif policy.due(watch, now, self._mcfg):
                self._start_probe(watch)
            elif policy.needs_finishing(watch):
                # An earlier attempt failed (bus down, disk full): try again.
                self._finish(watch)

    def _start_probe(self, watch: Watch) -> None:
        self._probing.add(watch.task_id)
        me = self.actor_ref
        url, timeout_s, task_id = watch.health_url, self._mcfg.probe_timeout_s, watch.task_id

        def _run() -> None:
            try:
                result = self._probe(url, timeout_s)
            except Exception as err:  # noqa: BLE001 - a broken probe is an uncertain one
                result = policy.classify(None, f"probe failed: {err!r}")
            with contextlib.suppress(pykka.ActorDeadError):
                me.tell(_Probed(task_id=task_id, probe=result))

        try:
            self._probes.submit(_run)
        except RuntimeError:
            self._probing.discard(watch.task_id)

    def _on_probed(self, msg: _Probed) -> None:
        self._probing.discard(msg.task_id)
        entry = self._watches.get(msg.task_id)
        if entry is None or not self._mcfg.enabled:
            return
        now = self._clock.now()
        log.debug(
            "monitor.probed",
            task_id=msg.task_id,
            outcome=msg.probe.outcome,
            status_code=msg.probe.status_code,
            detail=msg.probe.detail,
        )
        self._apply(entry, policy.on_probe(entry.value, msg.probe, now, self._mcfg))

    def _apply(self, entry: Versioned[Watch], watch: Watch) -> None:
        """CAS-write the new watch; act on a verdict only once it is stored."""
        if watch == entry.value:
            return
        stored = self._put(entry, watch)
        if stored is None:
            return
        if entry.value.status == policy.WATCHING and watch.status != policy.WATCHING:
            log.info(
                "monitor.decided",
                task_id=watch.task_id,
                status=watch.status,
                action=watch.action,
                reason=watch.reason,
                checks=watch.checks,
            )
            self._finish(watch)

    def _put(self, entry: Versioned[Watch], watch: Watch) -> Versioned[Watch] | None:
        try:
            revision = self._store.update(watch.task_id, watch, expect=entry.revision)
        except Fenced:
            revision = None
        if revision is None:
            # Someone else wrote this watch (a second monitor): take theirs, act on nothing.
            log.error("monitor.fenced", task_id=watch.task_id, revision=entry.revision)
            fresh = self._store.get(watch.task_id)
            if fresh is None:
                self._state.forget(watch.task_id)
            else:
                self._state.keep(fresh, own=False)
            return None
        stored = Versioned(watch, revision)
        self._state.keep(stored)
        return stored

    # --- acting on a verdict ------------------------------------------------------------

    def _finish(self, watch: Watch) -> None:
        """Alert, roll back (once, through the ledger) if so decided, write the log, close."""
        if watch.task_id in self._finishing:
            return
        if self._commits is not None and self._commits.busy(watch.task_id):
            return
        if watch.status == policy.DEGRADED:
            self._alert(watch, "error", watch.status, policy.degraded_text(watch))
        if watch.action == policy.ROLLBACK and not watch.rollback_result:
            self._finishing.add(watch.task_id)
            me = self.actor_ref

            def _run() -> None:
                try:
                    result = rollback_once(
                        watch,
                        self._effects,
                        self._cfg,
                        data_dir=self._data_dir,
                        python=self._python,
                    )
                    msg = _RolledBack(task_id=watch.task_id, result=result)
                except Exception as err:
                    # Reported to the actor; the next tick tries again through the ledger.
                    log.exception("monitor.rollback_failed", task_id=watch.task_id)
                    msg = _RolledBack(task_id=watch.task_id, error=repr(err))
                with contextlib.suppress(pykka.ActorDeadError):
                    me.tell(msg)

            threading.Thread(
                target=_run, name=f"monitor-rollback-{watch.task_id}", daemon=True
            ).start()
            return
        self._close(watch)

    def _on_rolled_back(self, msg: _RolledBack) -> None:
        self._finishing.discard(msg.task_id)
        entry = self._watches.get(msg.task_id)
        if entry is None or msg.error:
            return
        stored = self._put(entry, msgspec.structs.replace(entry.value, rollback_result=msg.result))
        if stored is not None:
            self._close(stored.value)

    def _on_committed(self, msg: Committed) -> None:
        if self._commits is None:
            return
        result = self._commits.done(msg)
        entry = self._watches.get(msg.task_id)
        if entry is None or not result:
            return
        if msg.error:
            log.error("monitor.log_not_committed", task_id=msg.task_id, reason=result)
        stored = self._put(entry, msgspec.structs.replace(entry.value, log_commit=result))
        if stored is not None:
            self._close(stored.value)

    def _close(self, watch: Watch) -> None:
        entry = self._watches.get(watch.task_id)
        if entry is None or entry.value.closed:
            return
        text = self._log_text(watch)
        self._write_log(watch, text)
        if self._commits is not None and not watch.log_commit:
            # The log reaches the repository before the watch closes: a restart finishes it.
            self._commits.start(watch.task_id, watch.repo, text, self._task_dir(watch.task_id))
            return
        if watch.action == policy.ROLLBACK:
            code = policy.rollback_outcome(watch.rollback_result)
            level = "warning" if code == 0 else "error"
            self._alert(watch, level, "rollback", policy.rollback_text(watch))
        elif watch.status == policy.HEALTHY:
            self._alert(watch, "info", watch.status, policy.healthy_text(watch))
        try:
            self._record(watch.task_id, policy.cause(watch))
        except Exception:
            # The task history is best-effort; the log file and the alert are the record.
            log.exception("monitor.record_failed", task_id=watch.task_id)
        if self._put(entry, msgspec.structs.replace(watch, closed=True)) is not None:
            log.info(
                "monitor.closed",
                task_id=watch.task_id,
                status=watch.status,
                action=watch.action,
                rollback_result=watch.rollback_result,
            )

    def _task_dir(self, task_id: str) -> Path:
        return task_dir(self._data_dir, task_id)

    # --- outputs ------------------------------------------------------------------------

    def _alert(self, watch: Watch, level: str, what: str, text: str) -> None:
        alert = Alert(
            level=level, text=text, task_id=watch.task_id, source="monitor", at=self._clock.now()
        )
        # The id is the verdict's, so a retried or restarted close alerts once.
        self._bus.emit(alert, msg_id=f"monitor:{watch.task_id}:{what}")

    def _log_text(self, watch: Watch) -> str:
        ended = watch.decided_at if watch.decided_at is not None else self._clock.now()
        return policy.log_text(
            watch,
            window_started=iso(watch.started_at),
            window_ended=iso(ended),
            rollback_log=ROLLBACK_LOG,
        )

    def _write_log(self, watch: Watch, text: str) -> None:
        task_dir = self._task_dir(watch.task_id)
        task_dir.mkdir(parents=True, exist_ok=True)
        tmp = task_dir / f".{LOG_NAME}.tmp"
        tmp.write_text(text)
        tmp.replace(task_dir / LOG_NAME)

    def _status(self) -> dict[str, Any]:
        return {
            "healthy": True,
            "enabled": self._mcfg.enabled,
            **self._state.counts(),
            "probing": len(self._probing),
            "rolling_back": len(self._finishing),
            "committing": self._commits.running if self._commits is not None else 0,
            # Open watches and the most recently closed; every watch is in KV by task id.
            "watches": self._state.listed(),
        }
