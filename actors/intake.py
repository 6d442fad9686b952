"""Intake: turns normalized events (webhooks, the Reconciler's replays) into StageEngine inputs.

It owns one record per Plane card: the state it last acted on (bucket
`conveyor_cards`), so only a real board move acts, once, across restarts. Cards
are read by key when an event needs one, never all at start (`actors.intake_cards`). Each
event from the durable consumer `intake` is routed by
`intake_policy`, handed to the StageEngine (ask, in this process), and acked
only once the StageEngine has answered, so a crash in between redelivers it;
the StageEngine's inputs are idempotent (a task is created once per id, a
tracker event once per key, a gate read changes nothing by itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pykka

from actors import intake_policy as policy
from actors.intake_cards import Cards
from actors.intake_policy import CardState, Route, TaskView
from actors.owner import Owner
from actors.task_summary import FindTasks
from bus.bridge import Delivery, Store
from bus.messages import (
    CommitStatusEvent,
    PullRequestEvent,
    PushEvent,
    Reply,
    WorkItemEvent,
)
from conveyor import pipeline
from conveyor.clock import Clock, SystemClock
from conveyor.config import Config
from conveyor.errors import ConveyorError
from conveyor.logs import get_logger

log = get_logger(__name__)

MAX_DELIVERIES = 20
"""An event that cannot be handed over after this many tries is dropped with an error log."""

StateResolver = Callable[[str, str], str | None]
"""(project id, state id) -> state name, from the tracker (None: unknown)."""


class Intake(Owner):
    """Routes events to the StageEngine; acks each after the StageEngine answered."""

    name = "intake"
    stops_when_fenced = False

    def __init__(
        self,
        engine: pykka.ActorRef[Any],
        cfg: Config,
        *,
        resolve_state: StateResolver | None = None,
        ask_timeout_s: float = 10.0,
        cards: Store[CardState] | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        self._engine = engine
        self._cfg = cfg
        self._resolve_state = resolve_state
        self._cards = Cards(cards)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._timeout_s = ask_timeout_s
        self._ci_stages = tuple(
            s.name for s in cfg.pipeline.stages if s.gate == pipeline.GATE_CI_GREEN
        )
        self._routed = 0
        self._ignored = 0
        self._failed = 0

    def handle(self, message: Any) -> Any:
        if isinstance(message, IntakeStatus):
            return {
                "healthy": True,
                "routed": self._routed,
                "ignored": self._ignored,
                "failed": self._failed,
                "cards_read": self._cards.reads,
                "cards_kept": len(self._cards),
            }
        if not isinstance(message, Delivery):
            return None
        route = self._route(message)
        applied = bool(route.inputs)
        for item in route.inputs:
            reply = self._engine.ask(item, timeout=self._timeout_s)
            if isinstance(reply, Reply) and not reply.ok:
                applied = False
                log.info(
                    "intake.not_applied",
                    kind=type(item).__name__,
                    task_id=getattr(item, "id", ""),
                    reason=reply.error,
                )
        if applied and isinstance(message.body, WorkItemEvent):
            self._acted(message.body, message.msg_id)
        if route.inputs:
            self._routed += 1
        else:
            self._ignored += 1
        log.info(
            "intake.routed",
            kind=type(message.body).__name__,
            msg_id=message.msg_id,
            inputs=len(route.inputs),
            reason=route.reason,
        )
        message.ack()
        return None

    def on_failed(self, message: Any, err: Exception) -> Any:
        if not isinstance(message, Delivery):
            return super().on_failed(message, err)
        # One event must never stop intake; it is retried with a growing delay.
        self._failed += 1
        if message.num_delivered >= MAX_DELIVERIES:
            log.exception(
                "intake.dropped", msg_id=message.msg_id, error=repr(err), tries=MAX_DELIVERIES
            )
            message.ack()
        else:
            log.warning("intake.retrying", msg_id=message.msg_id, error=repr(err))
            message.nak(delay_s=min(30.0, 1.0 * message.num_delivered))
        return None

    def _route(self, delivery: Delivery[Any]) -> Route:
        match delivery.body:
            case WorkItemEvent() as event:
                why = policy.not_a_move(event, self._last_acted(event))
                if why:
                    return Route(reason=f"work item {event.work_item_id}: {why}")
                name = event.state_name or self._state_name(event)
                return policy.route_work_item(event, name, key=delivery.msg_id, cfg=self._cfg)
            case CommitStatusEvent() as event:
                views = self._find(event.repo, commit=event.sha, stages=self._ci_stages)
                return policy.route_status(event, views, cfg=self._cfg)
            case PullRequestEvent() as event:
                views = self._find(event.repo, branch=event.head_branch)
                return policy.route_pull_request(event, views, cfg=self._cfg)
            case PushEvent() as event:
                return Route(reason=f"push of {event.branch} at {event.after[:12]}: logged only")
        return Route(reason=f"unknown event {type(delivery.body).__name__}")

    def _last_acted(self, event: WorkItemEvent) -> CardState | None:
        return self._cards.get(event.work_item_id)

    def _acted(self, event: WorkItemEvent, msg_id: str) -> None:
        """Keep the state acted on, durably: neither a poll nor a restart acts on it again."""
        if not self._cards.stored or not event.state_id:
            return
        card = CardState(
            state_id=event.state_id, state_name=event.state_name, key=msg_id, at=self._clock.now()
        )
        self._cards.acted(event.work_item_id, card)
        log.info("intake.card_acted", work_item_id=event.work_item_id, state=event.state_name)

    def _state_name(self, event: WorkItemEvent) -> str:
        if not event.state_id or self._resolve_state is None:
            return ""
        try:
            return self._resolve_state(event.project_id, event.state_id) or ""
        except ConveyorError as err:
            # Retried by redelivery: the tracker may be briefly unreachable.
            raise RuntimeError(f"cannot resolve Plane state {event.state_id}: {err}") from err

    def _find(
        self, gitea_repo: str, *, branch: str = "", commit: str = "", stages: tuple[str, ...] = ()
    ) -> list[TaskView]:
        """The live tasks of a Gitea repository on `branch`, at `commit` or on `stages`."""
        repo = self._cfg.repo_for_gitea(gitea_repo)
        if repo is None:
            return []
        query = FindTasks(repo=repo.name, branch=branch, commit=commit, stages=stages)
        found: Any = self._engine.ask(query, timeout=self._timeout_s)
        return [msgspec.convert(s, TaskView, from_attributes=True) for s in found]


class IntakeStatus:
    """Status endpoint -> Intake (ask)."""
