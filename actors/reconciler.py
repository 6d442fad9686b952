"""Reconciler: makes a lost webhook harmless by replaying what it would have caused.

Every `reconciler.interval_s` it reads the StageEngine's hot (unsettled) tasks and asks for a
gate read (acted on only when green) of each task that has been quiet past its
stage's grace. Every `reconciler.plane_poll_s` it polls Plane (in a worker
thread) and publishes, as ordinary events, the work item states a task never
saw. Its bookkeeping (when each task was replayed) is soft state: after a
restart the worst case is one early replay, which is harmless.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

import msgspec
import pykka

from actors import reconciler_policy as policy
from actors.owner import Owner
from actors.reconciler_policy import ReplayMove, ReplayMoves, TaskRow
from actors.task_summary import AllTasks, GetTasks
from bus.bridge import Bus
from bus.messages import Alert, PolledItem, Reevaluate, Tick
from conveyor.clock import Clock
from conveyor.config import Config
from conveyor.logs import get_logger

log = get_logger(__name__)

ASK_TIMEOUT_S = 10.0

Poll = Callable[[float | None, Collection[tuple[str, str]]], list[PolledItem]]
"""Reads the configured Plane projects' work items updated after a UNIX time (None:
all of them), plus the (project, work item) pairs named (I/O; in a worker thread)."""


class PollDone(msgspec.Struct, frozen=True):
    """Worker thread -> Reconciler: what a Plane poll found (or why it failed)."""

    items: list[PolledItem]
    error: str = ""


class ReconcilerStatus(msgspec.Struct, frozen=True):
    """Status endpoint -> Reconciler (ask)."""


class Reconciler(Owner):
    """Sole owner of replay bookkeeping; never writes a task, only asks the StageEngine."""

    name = "reconciler"
    # A failed round is retried on the next tick.
    failed_event = "round_failed"
    stops_when_fenced = False

    def __init__(
        self,
        engine: pykka.ActorRef[Any],
        bus: Bus,
        clock: Clock,
        cfg: Config,
        *,
        poll: Poll | None = None,
    ) -> None:
        super().__init__()
        self._engine, self._bus, self._clock, self._cfg = engine, bus, clock, cfg
        self._poll = poll
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="plane-poll"
        )
        self._last_run = float("-inf")
        self._last_poll = float("-inf")
        self._polling = False
        self._replayed_at: dict[str, float] = {}
        self._counts = {
            "replayed": 0,
            "unblocked": 0,
            "polls": 0,
            "poll_errors": 0,
            "events": 0,
            "compared": 0,
        }
        self._last_replayed: dict[str, Any] = {}
        self._last_poll_error = ""
        # Plane's newest `updated_at` at the last poll, and the items replayed then:
        # a later poll compares only what moved since (soft state; a start compares all).
        self._polled_upto: float | None = None
        self._last_full = float("-inf")
        self._pending: dict[str, str] = {}

    def on_stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def handle(self, message: Any) -> Any:
        match message:
            case Tick():
                self._tick()
            case PollDone():
                self._on_poll(message)
            case ReconcilerStatus():
                return self._status()
        return None

    def on_failed(self, message: Any, err: Exception) -> Any:
        super().on_failed(message, err)
        if isinstance(message, PollDone):
            self._polling = False
        return None

    def _tick(self) -> None:
        if not self._cfg.reconciler.enabled:
            return
        now = self._clock.now()
        if now - self._last_run >= self._cfg.reconciler.interval_s:
            self._last_run = now
            self._replay_gates(now)
        if (
            self._poll is not None
            and self._cfg.reconciler.plane_poll_enabled
            and not self._polling
            and now - self._last_poll >= self._cfg.reconciler.plane_poll_s
        ):
            self._last_poll = now
            self._polling = True
            poll, actor = self._poll, self.actor_ref
            since, also = policy.poll_scope(
                self._polled_upto, self._pending, now=now, last_full=self._last_full
            )
            if since is None:
                self._last_full = now

            def _run() -> None:
                try:
                    found = PollDone(items=poll(since, also))
                except Exception as err:  # noqa: BLE001 - reported to the actor, retried later
                    found = PollDone(items=[], error=f"{type(err).__name__}: {err}")
                actor.tell(found)

            self._pool.submit(_run)

    def _rows(self) -> list[TaskRow]:
        # Only tasks at a gate can be due (`policy.skip_reason`): a queued backlog costs nothing.
        summaries: Any = self._engine.ask(AllTasks(job_ended=True), timeout=ASK_TIMEOUT_S)
        return [msgspec.convert(s, TaskRow, from_attributes=True) for s in summaries]

    def _replay_gates(self, now: float) -> None:
        rows = self._rows()
        self._notice_unblocked(now)
        live = {row.id for row in rows}
        self._replayed_at = {k: v for k, v in self._replayed_at.items() if k in live}
        for replay in policy.due(rows, now=now, replayed_at=self._replayed_at, cfg=self._cfg):
            self._replayed_at[replay.task_id] = now
            self._engine.tell(
                Reevaluate(id=replay.task_id, cause=f"reconciler: {replay.reason}", only_pass=True)
            )
            self._counts["replayed"] += 1
            self._last_replayed = {"task_id": replay.task_id, "reason": replay.reason, "at": now}
            log.info("reconciler.replayed", task_id=replay.task_id, reason=replay.reason)

    def _notice_unblocked(self, now: float) -> None:
        """Say once for each task that a replay of ours moved: only our own work is ours to tell."""
        found: Any = self._engine.ask(ReplayMoves(), timeout=ASK_TIMEOUT_S)
        for move in found or []:
            moved = msgspec.convert(move, ReplayMove, from_attributes=True)
            self._counts["unblocked"] += 1
            log.warning(
                "reconciler.unblocked",
                task_id=moved.task_id,
                old=moved.old_stage,
                new=moved.new_stage,
                reason=moved.reason,
            )
            if self._cfg.reconciler.notify_unblock:
                alert = Alert(
                    level="warning",
                    text=policy.unblocked_text(moved),
                    task_id=moved.task_id,
                    source="reconciler",
                    at=now,
                )
                msg_id = f"reconciler:{moved.task_id}:{moved.job_id}:unblocked"
                self._bus.emit(alert, msg_id=msg_id)

    def _on_poll(self, done: PollDone) -> None:
        self._polling = False
        self._counts["polls"] += 1
        if done.error:
            self._counts["poll_errors"] += 1
            self._last_poll_error = done.error
            log.warning("reconciler.poll_failed", error=done.error)
            return
        items = self._moved(done.items)
        # Only the polled items' tasks, looked up by id: never every stored task.
        ids = tuple(policy.polled_task_ids(items, cfg=self._cfg))
        found: Any = self._engine.ask(GetTasks(ids), timeout=ASK_TIMEOUT_S) if ids else {}
        rows = {k: msgspec.convert(v, TaskRow) for k, v in (found or {}).items()}
        replays = policy.plane_replays(items, rows, cfg=self._cfg)
        self._pending = {event.work_item_id: event.project_id for _, event in replays}
        for msg_id, event in replays:
            self._bus.emit(event, msg_id=msg_id)
            self._counts["events"] += 1
            log.info(
                "reconciler.state_replayed",
                work_item_id=event.work_item_id,
                state=event.state_name,
                msg_id=msg_id,
            )

    def _moved(self, items: Sequence[PolledItem]) -> list[PolledItem]:
        """The polled items that changed since the last poll, or were replayed then."""
        stamps = {item.id: _stamp(item.updated_at) for item in items}
        chosen = policy.to_compare(items, stamps, since=self._polled_upto, pending=self._pending)
        known = [stamp for stamp in stamps.values() if stamp is not None]
        if known:
            newest = max(known)
            before = self._polled_upto
            self._polled_upto = newest if before is None else max(before, newest)
        self._counts["compared"] += len(chosen)
        return chosen

    def _status(self) -> dict[str, Any]:
        return {
            "healthy": True,
            "enabled": self._cfg.reconciler.enabled,
            "interval_s": self._cfg.reconciler.interval_s,
            "grace_s": self._cfg.reconciler.grace_s,
            "plane_poll": self._poll is not None and self._cfg.reconciler.plane_poll_enabled,
            "last_run": self._last_run if self._last_run > 0 else None,
            "last_poll": self._last_poll if self._last_poll > 0 else None,
            "last_poll_error": self._last_poll_error or None,
            "last_replayed": self._last_replayed or None,
            **{f"{name}_total": count for name, count in self._counts.items()},
        }


def _stamp(updated_at: str) -> float | None:
    """A Plane `updated_at` as seconds (None: missing or unreadable)."""
    try:
        return datetime.fromisoformat(updated_at).timestamp()
    except ValueError:
        return None
