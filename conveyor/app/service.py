"""The NATS micro service: status queries and operator commands, JSON in and out.

Every handler runs in a worker thread (never on the event loop) and asks the owning
actor, but for a submit, which runs on the loop (`actors/submit_front.py`). Every
handler always answers: a malformed request gets `ok: false` naming the
field, an unavailable actor gets `ok: false` saying so.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import pykka

from actors.queue_worker import QueueStatus, UsageQuery
from actors.reaper import ReaperStatus
from actors.stage_engine import StatusQuery
from actors.submit_front import SubmitFront
from actors.task_index import PageError, parse_request
from actors.task_policy import Task
from bus import subjects
from bus.bridge import Bus, Handler
from bus.endpoints import NotAnswered
from bus.messages import (
    Approve,
    Cancel,
    ConfirmDeploy,
    LeaseAcquire,
    LeaseRelease,
    LeaseRenew,
    LeaseReply,
    Reject,
    Reply,
    Retry,
    Submit,
)
from conveyor import validate
from conveyor.errors import ConveyorError, Fenced, InvalidField
from conveyor.logs import get_logger

log = get_logger(__name__)

COMMAND_TYPES: dict[str, type[msgspec.Struct]] = {
    subjects.CMD_SUBMIT: Submit,
    subjects.CMD_APPROVE: Approve,
    subjects.CMD_REJECT: Reject,
    subjects.CMD_CONFIRM_DEPLOY: ConfirmDeploy,
    subjects.CMD_CANCEL: Cancel,
    subjects.CMD_RETRY: Retry,
}

LEASE_TYPES: dict[str, type[msgspec.Struct]] = {
    subjects.LEASE_ACQUIRE: LeaseAcquire,
    subjects.LEASE_RENEW: LeaseRenew,
    subjects.LEASE_RELEASE: LeaseRelease,
}

ACTOR_TIMEOUT_S = 10.0


def dumps(value: Any) -> bytes:
    """JSON-encode a reply."""
    return msgspec.json.encode(value)


def decode_command(subject: str, data: bytes) -> msgspec.Struct:
    """Decode a command body for `subject`; raise InvalidField naming the field."""
    kind = COMMAND_TYPES[subject]
    try:
        return msgspec.json.decode(data or b"{}", type=kind)
    except msgspec.ValidationError as err:
        path, _problem = validate.msgspec_error(str(err))
        # Command bodies are flat: the top-level key is the field the sender got wrong.
        field = path.split(".")[0].split("[")[0] or "body"
        raise InvalidField(field, str(err)) from err
    except msgspec.DecodeError as err:
        raise InvalidField("body", f"not valid JSON: {err}") from err


def launcher_status_handler(ask: Callable[[], Any]) -> Callable[[str, bytes], bytes]:
    """Endpoint handler answering a launcher's status."""

    def _handler(_subject: str, _data: bytes) -> bytes:
        return dumps(ask())

    return _handler


class DrainRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`conveyor.launchers.<name>.drain` body: drain (take no new order) or resume."""

    drain: bool = True


def launcher_drain_handler(
    name: str, drain: threading.Event, busy: Callable[[], int]
) -> Callable[[str, bytes], bytes]:
    """Endpoint handler setting a launcher's drain; answers its state and its busy slots."""

    def _handler(_subject: str, data: bytes) -> bytes:
        try:
            request = msgspec.json.decode(data or b"{}", type=DrainRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            return dumps({"ok": False, "error": f"bad request: {err}"})
        if request.drain != drain.is_set():
            if request.drain:
                drain.set()
            else:
                drain.clear()
            event = "launcher.draining" if request.drain else "launcher.resumed"
            log.info(event, launcher=name, busy=busy())
        return dumps({"ok": True, "launcher": name, "draining": drain.is_set(), "busy": busy()})

    return _handler


def _answering(handler: Callable[[str, bytes], bytes]) -> Callable[[str, bytes], bytes]:
    """Turn an unavailable actor into an `ok: false` JSON answer instead of a bare error."""

    def _handler(subject: str, data: bytes) -> bytes:
        try:
            return handler(subject, data)
        except (pykka.ActorDeadError, pykka.Timeout) as err:
            log.warning("service.actor_unavailable", subject=subject, error=repr(err))
            return dumps({"ok": False, "error": f"actor unavailable: {err!r}"})

    return _handler


def _down(life: Mapping[str, Any]) -> dict[str, Any]:
    """A down actor's status entry: the supervisor's record and an `error` line."""
    reason, restarts = life.get("reason", ""), life.get("restarts", 0)
    return {**life, "error": f"down: {reason} (restarts so far: {restarts})"}


class ControlService:
    """Endpoints of the control process: commands and status."""

    def __init__(
        self,
        bus: Bus,
        engine: pykka.ActorRef[Any],
        worker: pykka.ActorRef[Any],
        reaper: pykka.ActorRef[Any],
        leases: pykka.ActorRef[Any],
        *,
        version: str,
        request_timeout_s: float,
        statuses: Mapping[str, tuple[pykka.ActorRef[Any], Any]],
        supervised: Callable[[], Mapping[str, dict[str, Any]]] | None = None,
        control: Callable[[], Any] | None = None,
    ) -> None:
        self._control = control
        self._statuses = dict(statuses)
        self._supervised = supervised or dict
        self._bus = bus
        self._engine = engine
        self._worker = worker
        self._reaper = reaper
        self._leases = leases
        self._version = version
        self._timeout_s = request_timeout_s

    def register(self) -> None:
        """Add the `conveyor` micro service with every endpoint."""
        self._front = SubmitFront(
            self._bus,
            self._engine,
            self._bus.store(subjects.BUCKET_TASKS, Task),
            timeout_s=ACTOR_TIMEOUT_S,
        )
        endpoints: list[tuple[str, str, Handler]] = [
            (f"cmd-{name}", subject, self._command) for name, subject in subjects.COMMANDS.items()
        ]
        # A submit runs on the bus loop, decided by the engine's rules and stored there.
        endpoints = [
            (n, s, self._submit if s == subjects.CMD_SUBMIT else f) for n, s, f in endpoints
        ]
        endpoints += [
            ("status", subjects.STATUS, self._overview),
            ("tasks", subjects.STATUS_TASKS, _answering(self._tasks)),
            ("task", subjects.STATUS_TASK_WILDCARD, _answering(self._task)),
            ("queue", subjects.STATUS_QUEUE, _answering(self._queue)),
            ("usage", subjects.STATUS_USAGE, _answering(self._usage)),
            *[
                (
                    name,
                    subjects.status_actor(name),
                    self._down_or(name, _answering(self._actor_status(name))),
                )
                for name in self._statuses
            ],
            ("lease-acquire", subjects.LEASE_ACQUIRE, self._lease),
            ("lease-renew", subjects.LEASE_RENEW, self._lease),
            ("lease-release", subjects.LEASE_RELEASE, self._lease),
        ]
        self._bus.add_service(
            subjects.SERVICE_NAME,
            self._version,
            "Conveyor: delivery pipeline for AI coding agents",
            endpoints,
        )

    def _ask(self, ref: pykka.ActorRef[Any], message: Any) -> Any:
        return ref.ask(message, timeout=ACTOR_TIMEOUT_S)

    async def _submit(self, subject: str, data: bytes) -> bytes:
        try:
            command = decode_command(subject, data)
        except InvalidField as err:
            log.warning("service.command_refused", subject=subject, field=err.field)
            return dumps(Reply(ok=False, error=str(err), field=err.field))
        assert isinstance(command, Submit)  # noqa: S101 - COMMAND_TYPES maps the subject
        return dumps(await self._front.submit(command))

    def _command(self, subject: str, data: bytes) -> bytes:
        try:
            command = decode_command(subject, data)
        except InvalidField as err:
            log.warning("service.command_refused", subject=subject, field=err.field)
            return dumps(Reply(ok=False, error=str(err), field=err.field))
        try:
            reply = self._ask(self._engine, command)
        except (pykka.ActorDeadError, pykka.Timeout) as err:
            return dumps(Reply(ok=False, error=f"stage engine unavailable: {err!r}"))
        if reply is None:
            # Fenced while handling it: the engine stopped, and its supervisor restarts it.
            return dumps(Reply(ok=False, error="stage engine unavailable: it stopped; retry"))
        return dumps(reply)

    def _tasks(self, _subject: str, data: bytes) -> bytes:
        try:
            page = parse_request(data)
        except PageError as err:
            log.warning("service.page_refused", field=err.field)
            return dumps({"ok": False, "error": str(err), "field": err.field})
        # The engine stops adding rows before the reply would pass what the server accepts.
        query = StatusQuery(kind="tasks", page=page, max_bytes=self._bus.nc.max_payload)
        return dumps(self._ask(self._engine, query))

    def _task(self, subject: str, _data: bytes) -> bytes:
        task_id = subject.rsplit(".", 1)[1]
        record = self._ask(self._engine, StatusQuery(kind="task", task_id=task_id))
        if record is None:
            return dumps({"ok": False, "error": f"id: no task {task_id}", "field": "id"})
        return dumps(record)

    def _queue(self, _subject: str, _data: bytes) -> bytes:
        status = self._ask(self._worker, QueueStatus())
        try:
            status["reaper"] = self._ask(self._reaper, ReaperStatus())
        except (pykka.ActorDeadError, pykka.Timeout) as err:
            status["reaper"] = {"healthy": False, "error": repr(err)}
        return dumps(status)

    def _usage(self, _subject: str, _data: bytes) -> bytes:
        ledger: dict[str, Any] = self._ask(self._worker, UsageQuery())
        ledger.update(self._ask(self._engine, StatusQuery(kind="usage")))
        return dumps(ledger)

    def _lease(self, subject: str, data: bytes) -> bytes:
        kind = LEASE_TYPES[subject]
        try:
            request = msgspec.json.decode(data or b"{}", type=kind)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            return dumps(LeaseReply(granted=False, reason=f"bad request: {err}"))
        try:
            reply = self._ask(self._leases, request)
        except (pykka.ActorDeadError, pykka.Timeout) as err:
            # A refusal would be final to a holder checking its lease: it asks again.
            raise NotAnswered(f"lease keeper unavailable: {err!r}") from err
        try:
            self._bus.write_stamp()
        except Fenced as err:
            # The keeper judged from memory while this process's leader lease may have
            # run out (a paused active, woken): the next active may have moved past
            # it, so the holder asks again and reaches the active.
            raise NotAnswered(f"not the active control: {err}") from err
        return dumps(reply)

    def _down_or(
        self, name: str, handler: Callable[[str, bytes], bytes]
    ) -> Callable[[str, bytes], bytes]:
        """An actor that is down answers with the supervisor's word: why, since, restarts."""

        def _handler(subject: str, data: bytes) -> bytes:
            life = self._supervised().get(name, {})
            if not life.get("healthy", True):
                return dumps({**_down(life), "ok": False})
            return handler(subject, data)

        return _handler

    def _actor_status(self, name: str) -> Callable[[str, bytes], bytes]:
        if name == "queue_worker":
            # The queue's status carries the Reaper's, as `conveyor.status.queue` does.
            return self._queue
        ref, query = self._statuses[name]

        def _handler(_subject: str, _data: bytes) -> bytes:
            return dumps(self._ask(ref, query))

        return _handler

    def _overview(self, _subject: str, _data: bytes) -> bytes:
        actors: dict[str, Any] = {}
        supervised = self._supervised()
        for name, (ref, query) in self._statuses.items():
            try:
                actors[name] = self._ask(ref, query)
            except (pykka.ActorDeadError, pykka.Timeout) as err:
                actors[name] = {"healthy": False, "error": repr(err)}
        for name, life in supervised.items():
            # The supervisor's word on a down actor (why, since when, restarts) replaces
            # the failed ask; an actor without a status endpoint shows only when down.
            if not life.get("healthy", True):
                actors[name] = _down(life)
            elif isinstance(actors.get(name), dict):
                actors[name] = {**actors[name], "restarts": life.get("restarts", 0)}
        try:
            actors["launcher"] = json.loads(
                self._bus.request(subjects.status_actor("launcher"), b"", timeout_s=2.0)
            )
        except (ConveyorError, ValueError) as err:
            actors["launcher"] = {"healthy": False, "error": f"no launcher answered: {err}"}
        engine = actors["stage_engine"]
        queue = actors["queue_worker"]
        # With a leader lease: the active control and the standbys (`control.leader_lease`).
        control = _control_status(self._control) if self._control is not None else {}
        return dumps(
            {
                **control,
                "service": subjects.SERVICE_NAME,
                "version": self._version,
                "healthy": all(a.get("healthy", False) for a in actors.values()),
                "tasks": engine.get("tasks", 0),
                "by_stage": engine.get("by_stage", {}),
                "by_state": engine.get("by_state", {}),
                "by_repo": engine.get("by_repo", {}),
                "jobs": queue.get("counts", {}),
                "actors": actors,
            }
        )


def _control_status(read: Callable[[], Any]) -> dict[str, Any]:
    """`control`: who holds the leader lease and who stands by, or why that is unknown."""
    try:
        return {"control": read()}
    except Exception as err:  # noqa: BLE001 - status answers even when the lease is unreadable
        return {"control": {"error": f"leader lease unreadable: {err!r}"}}
