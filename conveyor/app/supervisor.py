"""Supervision: an actor that stops is restarted with back-off, and its absence is reported.

Every actor a node starts sits behind a `Handle`, the one reference its feeds,
ticker, status endpoints and the other actors hold. The `Supervisor` checks the
handles every `supervisor.check_s`; one whose actor has stopped (an exception in
`on_start`, an exception a told message ended it with, a fence) is reported down
(logged, one alert per stop, unhealthy in `conveyor.status` and `/healthz`) and
started again after `backoff_s(restart_base_s, restart_max_s, streak)`, `streak`
counting the restarts since it last stayed up `stable_s`. A restart storm alerts
once: a new alert needs a stable period first.

A fenced actor (another writer moved one of its records) is restarted too: the
new incarnation loads every record afresh on start, so its writes compare against
the current revisions, which is how it takes ownership back. If it is fenced
again `max_fenced_restarts` times in a row without a stable period in between,
another process is evidently writing the same records (two `control` processes);
it then stays down with an alert instead of fighting, until the extra process is
stopped and this one restarted.

The decisions are plain functions over a `Life` record, with the time passed in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgspec
import pykka

from actors.owner import Stopped, last_words
from bus.bridge import Bus, Delivery
from bus.messages import Alert
from conveyor.clock import Clock
from conveyor.config import SupervisorConfig
from conveyor.errors import ConveyorError
from conveyor.logs import get_logger
from conveyor.retry import backoff_s

log = get_logger(__name__)

ACTOR_DOWN = "actor_down"
"""`Alert.kind` of an actor that stopped."""

NAK_WHILE_DOWN_S = 1.0
"""A delivery for an actor that is down comes back after this long."""

Ref = pykka.ActorRef[Any]


# --- decisions ---------------------------------------------------------------------------


class Life(msgspec.Struct, frozen=True, kw_only=True):
    """One supervised actor's record: up or down, since when, why, how often restarted."""

    name: str
    up: bool = True
    since: float = 0.0
    """When it last came up (up) or went down (down)."""
    reason: str = ""
    restarts: int = 0
    streak: int = 0
    """Restarts since it last stayed up `stable_s`: the back-off exponent."""
    fenced_streak: int = 0
    next_try_at: float = 0.0
    given_up: bool = False
    alerted: bool = False
    """An alert went out for the current trouble (cleared by a stable period)."""


def born(name: str, now: float) -> Life:
    """The record of an actor just started."""
    return Life(name=name, since=now)


def went_down(life: Life, now: float, stopped: Stopped, cfg: SupervisorConfig) -> tuple[Life, str]:
    """The record after the actor was seen stopped, and the alert text ("" for none)."""
    stable = now - life.since >= cfg.stable_s
    streak = 0 if stable else life.streak
    fenced_streak = 0
    if stopped.fenced:
        fenced_streak = (0 if stable else life.fenced_streak) + 1
    alerted = life.alerted and not stable
    down = msgspec.structs.replace(
        life,
        up=False,
        since=now,
        reason=stopped.reason,
        streak=streak,
        fenced_streak=fenced_streak,
        next_try_at=now + backoff_s(cfg.restart_base_s, cfg.restart_max_s, streak),
    )
    if not cfg.enabled:
        why = "restarts are off (supervisor.enabled = false)"
        return _give_up(down, why)
    if stopped.fenced and fenced_streak > cfg.max_fenced_restarts:
        why = (
            f"fenced {fenced_streak} times in a row: another process writes its records; "
            "stop the other process, then restart this one"
        )
        return _give_up(down, why)
    if alerted:
        return down, ""
    text = (
        f"actor {life.name} stopped ({stopped.reason}); restarting it in "
        f"{down.next_try_at - now:g}s"
    )
    return msgspec.structs.replace(down, alerted=True), text


def _give_up(down: Life, why: str) -> tuple[Life, str]:
    # Staying down always alerts, even inside a storm that already did.
    text = f"actor {down.name} stopped ({down.reason}) and stays down: {why}"
    return msgspec.structs.replace(down, given_up=True, alerted=True), text


def due(life: Life, now: float) -> bool:
    """Whether a down actor should be started again now."""
    return not life.up and not life.given_up and now >= life.next_try_at


def restarted(life: Life, now: float) -> Life:
    """The record after a new incarnation was started."""
    return msgspec.structs.replace(
        life, up=True, since=now, restarts=life.restarts + 1, streak=life.streak + 1
    )


def restart_failed(life: Life, now: float, reason: str, cfg: SupervisorConfig) -> Life:
    """The record after starting a new incarnation raised; the next try backs off further."""
    streak = life.streak + 1
    return msgspec.structs.replace(
        life,
        reason=reason,
        streak=streak,
        next_try_at=now + backoff_s(cfg.restart_base_s, cfg.restart_max_s, streak),
    )


def health(life: Life) -> dict[str, Any]:
    """What `conveyor.status` says about one supervised actor."""
    if life.up:
        return {"healthy": True, "up_since": life.since, "restarts": life.restarts}
    return {
        "healthy": False,
        "down": True,
        "reason": life.reason,
        "since": life.since,
        "restarts": life.restarts,
        "restarting": not life.given_up,
        "next_restart_at": None if life.given_up else life.next_try_at,
    }


def problem(lives: dict[str, Life]) -> str:
    """Why the process is unhealthy ("" when every supervised actor is up)."""
    down = sorted(name for name, life in lives.items() if not life.up)
    return f"actor(s) down: {', '.join(down)}" if down else ""


# --- the stable reference ----------------------------------------------------------------


class Handle(pykka.ActorRef[Any]):
    """A reference that outlives restarts: it forwards to the current incarnation.

    While the actor is down, a told `Delivery` is nak'ed so it comes back after
    the restart, anything else told is dropped (ticks, heartbeats), and an ask
    raises `pykka.ActorDeadError` as a dead reference's would.
    """

    def __init__(self, name: str, ref: Ref) -> None:
        # No super().__init__: there is no actor of our own, only the current one's.
        self.name = name
        self._lock = threading.Lock()
        self.bind(ref)

    def bind(self, ref: Ref) -> None:
        """Forward to `ref` from now on."""
        with self._lock:
            self.current = ref
            self.actor_class = ref.actor_class
            self.actor_urn = ref.actor_urn
            self.actor_inbox = ref.actor_inbox
            self.actor_stopped = ref.actor_stopped

    def __str__(self) -> str:
        return f"{self.name} -> {self.current}"

    def is_alive(self) -> bool:
        return self.current.is_alive()

    def tell(self, message: Any) -> None:
        try:
            self.current.tell(message)
        except pykka.ActorDeadError:
            if isinstance(message, Delivery):
                message.nak(delay_s=NAK_WHILE_DOWN_S)

    def ask(self, message: Any, *, block: bool = True, timeout: float | None = None) -> Any:
        return self.current.ask(message, block=block, timeout=timeout)

    def stop(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.current.stop(block=block, timeout=timeout)


# --- the supervisor ----------------------------------------------------------------------


class Supervisor:
    """Watches a process's handles from one thread and restarts what stopped."""

    def __init__(self, bus: Bus, clock: Clock, cfg: SupervisorConfig) -> None:
        self._bus = bus
        self._clock = clock
        self._cfg = cfg
        self._lock = threading.Lock()
        self._watched: dict[str, tuple[Handle, Callable[[], Ref]]] = {}
        self._lives: dict[str, Life] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def watch(self, handle: Handle, restart: Callable[[], Ref]) -> None:
        """Supervise `handle`; `restart` starts a new incarnation of its actor."""
        with self._lock:
            self._watched[handle.name] = (handle, restart)
            self._lives[handle.name] = born(handle.name, self._clock.now())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the actors are stopped, so none is restarted). Idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._cfg.check_s):
            self.check()

    def check(self) -> None:
        """One pass: notice stopped actors, restart those whose back-off is over."""
        for name, (handle, restart) in list(self._watched.items()):
            if self._stop.is_set():
                return
            with self._lock:
                life = self._lives[name]
            now = self._clock.now()
            if life.up and not handle.is_alive():
                self._went_down(handle, life, now)
            elif due(life, now):
                self._restart(handle, restart, life, now)

    def _went_down(self, handle: Handle, life: Life, now: float) -> None:
        stopped = last_words(handle.actor_urn) or Stopped("stopped; the log says why")
        down, text = went_down(life, now, stopped, self._cfg)
        with self._lock:
            self._lives[handle.name] = down
        log.error(
            "supervisor.actor_down",
            actor=handle.name,
            reason=stopped.reason,
            restarts=down.restarts,
            retry_in_s=None if down.given_up else round(down.next_try_at - now, 3),
        )
        if text:
            self._alert(text, f"supervisor:{handle.name}:{handle.actor_urn}")

    def _restart(self, handle: Handle, restart: Callable[[], Ref], life: Life, now: float) -> None:
        try:
            ref = restart()
        except Exception as err:  # a failed start is retried, not fatal
            log.exception("supervisor.restart_failed", actor=handle.name)
            failed = restart_failed(life, self._clock.now(), f"restart failed: {err!r}", self._cfg)
            with self._lock:
                self._lives[handle.name] = failed
            return
        handle.bind(ref)
        up = restarted(life, now)
        with self._lock:
            self._lives[handle.name] = up
        log.info("supervisor.restarted", actor=handle.name, restarts=up.restarts)

    def _alert(self, text: str, msg_id: str) -> None:
        alert = Alert(
            level="error", text=text, source="supervisor", at=self._clock.now(), kind=ACTOR_DOWN
        )
        try:
            self._bus.emit(alert, msg_id=msg_id)
        except ConveyorError as err:
            log.warning("supervisor.alert_failed", error=str(err))

    # --- health ---------------------------------------------------------------------------

    def lives(self) -> dict[str, Life]:
        """Each actor's record; one that stopped since the last check counts as down already."""
        with self._lock:
            lives = dict(self._lives)
        now = self._clock.now()
        for name, (handle, _restart) in list(self._watched.items()):
            life = lives[name]
            if life.up and not handle.is_alive():
                lives[name] = msgspec.structs.replace(
                    life, up=False, since=now, reason="stopped; the supervisor is on it"
                )
        return lives

    def status(self) -> dict[str, dict[str, Any]]:
        """Each supervised actor's health, by name."""
        return {name: health(life) for name, life in self.lives().items()}

    def problem(self) -> str:
        """Why this process is unhealthy; "" when every supervised actor is up."""
        return problem(self.lives())
