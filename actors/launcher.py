"""Launcher: the actor that owns this host's runs; what one run does lives in `actors.jobs`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec
import pykka

from actors import hosts
from actors import launcher_policy as policy
from actors.jobs import leases, runs
from actors.jobs.context import JobContext, RepoLocks, RunDone, RunStarted
from actors.jobs.lease_wake import LeaseWaker
from actors.jobs.meter import RunMeter
from actors.launch_slots import Slots
from actors.launcher_policy import LaunchPlan, Run
from actors.owner import Stopped, record_stop
from actors.run_state import RunsCheckpoint
from bus import subjects
from bus.bridge import Bus, Delivery, KeyExists, Store, Versioned
from bus.effects import Ledger
from bus.messages import (
    JobFinished,
    JobStarted,
    KillJob,
    LaunchOrder,
    LeaseFreed,
    RunHeartbeat,
    Tick,
)
from conveyor import faults, procs
from conveyor.clock import Clock
from conveyor.config import Config
from conveyor.errors import Fenced, InvalidField
from conveyor.layout import Layout
from conveyor.logs import get_logger
from conveyor.pipeline import BUILTIN_ROLES
from gateways.forge import Forge

log = get_logger(__name__)


class LauncherStatus(msgspec.Struct, frozen=True):
    """Status endpoint -> Launcher (ask)."""


class Launcher(pykka.ThreadingActor):
    """Sole owner of the runs on its host; fences each launch with a KV create."""

    def __init__(
        self,
        bus: Bus,
        store: Store[Run],
        effects: Ledger,
        forge: Forge,
        clock: Clock,
        cfg: Config,
        slots: Slots,
        owns: Callable[[str, int], bool] | None = None,
    ) -> None:
        super().__init__()
        self._bus, self._store, self._forge, self._clock, self._cfg = bus, store, forge, clock, cfg
        self._layout = Layout(cfg.data_path)
        self._slots = slots
        self._effects = effects
        self._host = procs.host_id(cfg.launcher.host_id)
        self._boot = procs.boot_id()
        # The name must survive a restart: a restarted launcher adopts the runs of its name.
        self._name = cfg.launcher.identity()
        # Whether an attempt is still this launcher's to finish (the job runs that attempt):
        # a launcher back from a pause or partition adopts and finishes nothing it lost.
        self._owns = owns
        self._owned_at = 0.0
        # Runs still to look after: a finished run leaves once its result is reported
        # (it stays in KV; duplicate orders are caught by the KV create, not by this).
        self._runs: dict[str, Versioned[Run]] = {}
        # Touched on the actor thread only: run threads report pids by message and see
        # a kill through their own `cancelled` event.
        self._procs: dict[str, int] = {}
        self._cancelled: dict[str, threading.Event] = {}
        self._meters: dict[str, RunMeter] = {}
        # When each heartbeat last went out, with its usage: per run key, "" for the host's.
        self._beats: dict[str, tuple[float, dict[str, Any]]] = {}
        self._started_at = 0.0
        # Set when this incarnation stops: its run threads leave finished agents to the
        # next incarnation's adoption instead of racing it through the post-steps.
        self._abandoned = threading.Event()
        self._waker = LeaseWaker()
        self._jobs = JobContext(
            cfg=cfg,
            clock=clock,
            layout=self._layout,
            forge=forge,
            effects=effects,
            lease=partial(leases.request, bus, waker=self._waker),
            launcher=self._name,
            host=self._host,
            python=sys.executable,
            repo_lock=RepoLocks(self._layout.workspace),
            abandoned=self._abandoned,
            report_started=self._report_started,
            report_done=self._tell,
            lease_waker=self._waker,
            release_later=partial(leases.release_later, bus),
        )

    def on_stop(self) -> None:
        self._abandoned.set()

    def on_start(self) -> None:
        self._started_at = self._clock.now()
        freed = msgspec.json.Decoder(LeaseFreed)
        self._bus.subscribe_core(subjects.LEASE_FREED, freed, self._waker.notify)
        hosts.serve(self._bus, self._host, self._find, self._clock)
        # Only this launcher's unreported runs, from its checkpoint: never every run stored.
        self._run_index = RunsCheckpoint(self._bus, self._store, self._name, self._clock)
        self._runs = self._run_index.load()
        self._owned_at = self._clock.now()
        for key, entry in list(self._runs.items()):
            run = entry.value
            if run.status != policy.FINISHED and not self._still_owned(run):
                self._disown(key, "superseded while this launcher was away", adopted=False)
            elif run.status == policy.FINISHED:
                self._report(key)
            else:
                self._adopt(key)
        self._run_index.write(self._runs, force=True)
        log.info(
            "launcher.started", name=self._name, slots=self._slots.total, adopted=len(self._runs)
        )

    def on_receive(self, message: Any) -> Any:
        try:
            match message:
                case Delivery(body=LaunchOrder() as order):
                    self._launch(order, message)
                case RunStarted():
                    self._on_started(message)
                case RunDone():
                    self._on_done(message)
                case KillJob():
                    self._kill(message)
                case LauncherStatus():
                    return self._status()
                case Tick():
                    self._heartbeat()
                    self._run_index.write(self._runs)
                case _:
                    log.warning("launcher.unknown_message", kind=type(message).__name__)
        except Fenced as err:
            log.error("launcher.fenced", error=str(err))  # noqa: TRY400 - expected
            record_stop(self.actor_urn, Stopped(f"fenced: {err}", fenced=True))
            self.stop()
        except Exception:
            log.exception("launcher.handle_failed", kind=type(message).__name__)
            if isinstance(message, Delivery):
                self._slots.release()
                message.nak(delay_s=2.0)
        return None

    # --- launching ----------------------------------------------------------------------

    def _launch(self, order: LaunchOrder, delivery: Delivery[Any]) -> None:
        key = policy.run_key(order.job_id, order.attempt)
        run_dir = self._layout.run_dir(order.job_id, order.attempt)
        plan: LaunchPlan | None
        try:
            plan = policy.plan(
                order,
                self._cfg,
                worktree=str(self._layout.worktree(order.repo, order.task_id)),
                run_dir=str(run_dir),
                python=sys.executable,
                base_env=os.environ,
            )
        except InvalidField:
            plan = None  # an unknown repository fails in the run, like any agent's
        run = Run(
            id=key,
            job_id=order.job_id,
            attempt=order.attempt,
            task_id=order.task_id,
            repo=order.repo,
            role=order.role,
            stage=order.stage,
            visit=order.visit,
            branch=order.branch,
            host=self._host,
            launcher=self._name,
            boot_id=self._boot,
            started_at=self._clock.now(),
            run_dir=str(run_dir),
            log_path=str(run_dir / "output.log"),
            deploy_command=plan.command if plan is not None else [],
        )
        try:
            revision = self._store.create(key, run)
        except KeyExists:
            # An earlier delivery of this order launched it (a late ack is not ownership).
            log.info("launcher.duplicate_order", job_id=order.job_id, attempt=order.attempt)
            self._slots.release()
            delivery.ack()
            return
        self._runs[key] = Versioned(run, revision)
        faults.point("launcher.run_recorded")
        delivery.ack()
        thread = threading.Thread(
            target=runs.execute,
            args=(self._context(key), run, order, plan),
            name=f"run-{key}",
            daemon=True,
        )
        thread.start()
        log.info("launcher.launched", job_id=order.job_id, attempt=order.attempt, role=order.role)

    def _save(self, run: Run) -> None:
        current = self._runs[run.id]
        revision = self._store.update(run.id, run, expect=current.revision)
        if run.status == policy.FINISHED and run.reported:
            del self._runs[run.id]
        else:
            self._runs[run.id] = Versioned(run, revision)

    def _context(self, key: str) -> JobContext:
        """The context of one run, with the event a KillJob for its job sets."""
        cancelled = self._cancelled.setdefault(key, threading.Event())
        # The run thread writes its running totals here; the heartbeat reads a copy.
        meter = self._meters.setdefault(key, RunMeter())
        return dataclasses.replace(self._jobs, cancelled=cancelled, meter=meter)

    def _on_started(self, started: RunStarted) -> None:
        entry = self._runs.get(started.run_id)
        if entry is None:
            return
        if started.adopted:
            # Stored by the incarnation that spawned it; only a kill target for this one.
            self._procs[started.run_id] = started.pid
            return
        run = msgspec.structs.replace(
            entry.value, status=policy.RUNNING, pid=started.pid, create_time=started.create_time
        )
        self._save(run)
        if run.role not in BUILTIN_ROLES:
            # Built-in steps run inside this process: its pid must never be a kill target.
            self._procs[run.id] = started.pid
        self._bus.emit(
            JobStarted(
                job_id=run.job_id,
                attempt=run.attempt,
                run_id=run.id,
                host=run.host,
                pid=started.pid,
                create_time=started.create_time,
                log_path=run.log_path,
                started_at=run.started_at,
            ),
            msg_id=f"{run.id}:started",
        )

    def _on_done(self, done: RunDone) -> None:
        entry = self._runs.get(done.run_id)
        if entry is None or entry.value.status == policy.FINISHED:
            return
        run = msgspec.structs.replace(
            entry.value,
            status=policy.FINISHED,
            exit_code=done.exit_code,
            head_sha=done.head_sha,
            error=done.error,
            usage=done.usage,
            defer_s=done.defer_s,
            outcome=done.outcome,
            reason=done.reason,
            finished_at=self._clock.now(),
        )
        self._save(run)
        self._procs.pop(run.id, None)
        self._cancelled.pop(run.id, None)
        self._meters.pop(run.id, None)
        self._beats.pop(run.id, None)
        self._slots.release()
        self._report(run.id)
        log.info(
            "launcher.finished",
            job_id=run.job_id,
            attempt=run.attempt,
            exit_code=run.exit_code,
            error=run.error or None,
            outcome=run.outcome or None,
        )

    def _heartbeat(self) -> None:
        """Tell the Reaper which runs this launcher is still looking after."""
        now = self._clock.now()
        if now - self._owned_at >= self._cfg.launcher.host_silence_s / 2:
            # Its attempts may have been given to another launcher while it was paused
            # (SIGSTOP, a frozen VM) or cut off: asked again twice per silence.
            self._owned_at = now
            self._disown_lost()
        if policy.beat_due(self._beats.get(""), now, self._cfg.launcher.host_silence_s, {}):
            self._beats[""] = (now, {})
            self._host_heartbeat(now)
        timeout_s = self._cfg.reaper.heartbeat_timeout_s
        for key, entry in list(self._runs.items()):
            run = entry.value
            if run.status == policy.FINISHED and not run.reported:
                # The report failed (bus away) after the result was stored: send it again.
                self._report(key)
            elif run.status != policy.FINISHED:
                meter = self._meters.get(key)
                usage = meter.snapshot() if meter is not None else {}
                if not policy.beat_due(self._beats.get(key), now, timeout_s, usage):
                    continue
                self._beats[key] = (now, usage)
                beat = RunHeartbeat(
                    job_id=run.job_id, attempt=run.attempt, launcher=self._name, at=now, usage=usage
                )
                self._bus.emit(beat, msg_id="")

    def _host_heartbeat(self, now: float) -> None:
        active = [e.value for e in list(self._runs.values()) if e.value.status != policy.FINISHED]
        beat = hosts.heartbeat(self._host, self._boot, self._name, active, now)
        self._bus.publish_core(subjects.HOSTS_HEARTBEAT, beat)

    def _find(self, key: str) -> Run | None:
        """A run of this host, for a liveness question (runs on the bus's worker threads)."""
        entry = self._runs.get(key) or self._store.get(key)
        return entry.value if entry is not None else None

    def _still_owned(self, run: Run) -> bool:
        try:
            return self._owns is None or self._owns(run.job_id, run.attempt)
        except Exception:  # noqa: BLE001 - the jobs bucket unreadable: keep the run, ask later
            log.warning("launcher.ownership_unknown", job_id=run.job_id, attempt=run.attempt)
            return True

    def _disown_lost(self) -> None:
        for key, entry in list(self._runs.items()):
            if entry.value.status != policy.FINISHED and not self._still_owned(entry.value):
                self._disown(key, "superseded: its job no longer runs this attempt")

    def _disown(self, key: str, why: str, *, adopted: bool = True) -> None:
        """Give up a run whose attempt is no longer this launcher's: kill it, report nothing.

        Its side effects are fenced anyway (the transition lease refuses a superseded
        attempt); this stops the work and frees the slot.
        """
        run = self._runs[key].value
        log.warning("launcher.run_disowned", job_id=run.job_id, attempt=run.attempt, reason=why)
        self._cancelled.setdefault(key, threading.Event()).set()
        pid = self._procs.pop(key, None)
        if pid is None and run.role not in BUILTIN_ROLES and run.pid is not None:
            # An agent a previous incarnation spawned: it works in the task's worktree.
            pid = run.pid if procs.alive(run.pid, run.create_time) else None
        if pid is not None:
            grace = self._cfg.launcher.kill_grace_s
            threading.Thread(target=procs.kill_tree, args=(pid, grace), daemon=True).start()
        finished = msgspec.structs.replace(
            run, status=policy.FINISHED, reported=True, error=f"disowned: {why}"
        )
        self._save(finished)
        self._cancelled.pop(key, None)
        self._meters.pop(key, None)
        self._beats.pop(key, None)
        if adopted:
            self._slots.release()

    def _report(self, key: str) -> None:
        run = self._runs[key].value
        finished = JobFinished(
            job_id=run.job_id,
            attempt=run.attempt,
            run_id=run.id,
            exit_code=run.exit_code,
            head_sha=run.head_sha,
            error=run.error,
            finished_at=run.finished_at or 0.0,
            usage=run.usage,
            defer_s=run.defer_s,
            outcome=run.outcome,
            reason=run.reason,
        )
        faults.point("launcher.finished_recorded")
        self._bus.emit(finished, msg_id=f"{run.id}:finished")
        faults.point("launcher.reported")
        self._save(msgspec.structs.replace(run, reported=True))

    def _kill(self, order: KillJob) -> None:
        for key, pid in list(self._procs.items()):
            if self._runs[key].value.job_id == order.job_id:
                self._cancelled.setdefault(key, threading.Event()).set()
                log.info("launcher.killing", job_id=order.job_id, pid=pid, reason=order.reason)
                grace = self._cfg.launcher.kill_grace_s
                threading.Thread(target=procs.kill_tree, args=(pid, grace), daemon=True).start()

    def _adopt(self, key: str) -> None:
        """Resume a run a previous incarnation started: wait for it, or report its result."""
        run = self._runs[key].value
        self._slots.reserve()
        order = LaunchOrder(
            job_id=run.job_id,
            attempt=run.attempt,
            task_id=run.task_id,
            repo=run.repo,
            stage=run.stage,
            role=run.role,
            visit=run.visit,
            branch=run.branch,
            title="",
            description="",
        )
        thread = threading.Thread(
            target=runs.resume,
            args=(self._context(key), run, order),
            name=f"adopt-{key}",
            daemon=True,
        )
        thread.start()

    # --- called from run threads: messages only -----------------------------------------

    def _tell(self, message: Any) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    def _ask(self, message: Any) -> None:
        """Like `_tell`, but return once the actor has handled it (stored it)."""
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            self.actor_ref.ask(message, timeout=10.0)

    def _report_started(self, started: RunStarted, stored: bool) -> None:
        if stored:
            self._ask(started)
        else:
            self._tell(started)

    def _status(self) -> dict[str, Any]:
        active = [r.value for r in self._runs.values() if r.value.status != policy.FINISHED]
        return {
            "healthy": True,
            "name": self._name,
            "host": self._host,
            "slots": self._slots.total,
            "busy": self._slots.used,
            "draining": self._slots.draining,
            "running": [
                {
                    "job_id": r.job_id,
                    "attempt": r.attempt,
                    "pid": r.pid,
                    "role": r.role,
                    "log_path": r.log_path,
                }
                for r in active
            ],
            "started_at": self._started_at,
            # Runs kept in memory: running, or finished and not yet reported.
            "tracked": len(self._runs),
        }
