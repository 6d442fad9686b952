"""TrackerSync: mirrors stage changes and alerts onto the tracker's work items.

It consumes the durable notification stream and calls the tracker with an
idempotency key per message, so a redelivered or replayed notification never
posts a second comment. An alert's comment also goes through the effect ledger
when one is given, so a restart never repeats it, and an alert of a trouble kind
(escalated, parked for Confirm Deploy, awaiting approval) moves its card to the
state configured for that kind.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pykka

from bus.bridge import Delivery
from bus.effects import Ledger, effect_key
from bus.messages import Alert, StageChanged
from conveyor import faults
from conveyor.errors import BusUnavailable
from conveyor.logs import get_logger
from gateways.tracker import Tracker

log = get_logger(__name__)


def stage_comment(event: StageChanged) -> str:
    """The comment a stage change leaves on its work item."""
    if not event.old:
        return f"Conveyor accepted this work item ({event.cause})."
    spent = ""
    if event.cost_usd > 0 or event.tokens > 0:
        spent = f" (spent ${event.cost_usd:.4f}, {event.tokens:,} tokens on {event.old})"
    return f"Stage {event.old} → {event.new}: {event.cause}{spent}"


def comment_effect(msg_id: str) -> str:
    """The effect ledger's key of the comment an alert's message leaves (KV-safe)."""
    return effect_key("tracker", "comment", re.sub(r"[^A-Za-z0-9_=-]", "_", msg_id))


class TrackerSync(pykka.ThreadingActor):
    """Sole writer of Conveyor's comments and states on the tracker.

    `state_for` maps a stage to the tracker's state name (None: leave the state as
    it is); `tracked` says whether a task has a work item on the tracker at all (a
    task submitted from the CLI has none on Plane).
    """

    def __init__(
        self,
        tracker: Tracker,
        *,
        state_for: Callable[[str], str | None] = lambda stage: stage,
        tracked: Callable[[str], bool] = lambda task_id: True,
        trouble_state: Callable[[str], str | None] = lambda kind: None,
        ledger: Ledger | None = None,
    ) -> None:
        super().__init__()
        self._tracker = tracker
        self._state_for = state_for
        self._tracked = tracked
        self._trouble_state = trouble_state
        self._ledger = ledger

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Delivery):
            return None
        try:
            match message.body:
                case StageChanged() as event if self._tracked(event.task_id):
                    key = f"{event.task_id}:stage:{event.revision}"
                    self._tracker.comment(event.task_id, stage_comment(event), key=key)
                    faults.point("tracker_sync.commented")
                    state = self._state_for(event.new)
                    if state:
                        self._tracker.set_state(event.task_id, state, key=key)
                case Alert(task_id=task_id) as alert if task_id and self._tracked(task_id):
                    self._on_alert(alert, task_id, message.msg_id)
            message.ack()
        except BusUnavailable as err:
            # The bus went away (a shutdown, or NATS down): not a tracker fault. The
            # comment's own key keeps a redelivery from posting it twice.
            log.warning("tracker_sync.bus_unavailable", subject=message.subject, error=str(err))
            message.nak(delay_s=5.0)
        except Exception:
            # The tracker is best-effort for the pipeline, never for the record: retry later.
            log.exception("tracker_sync.failed", subject=message.subject)
            message.nak(delay_s=5.0)
        return None

    def _on_alert(self, alert: Alert, task_id: str, msg_id: str) -> None:
        key = f"alert:{msg_id}"
        text = f"[{alert.level}] {alert.text}"

        def _comment() -> str:
            self._tracker.comment(task_id, text, key=key)
            return "commented"

        if self._ledger is None:
            _comment()
        else:
            # The tracker's own key makes a resend harmless, so an interrupted one is resent.
            self._ledger.once(comment_effect(msg_id), _comment, lambda: None)
        state = self._trouble_state(alert.kind) if alert.kind else None
        if state:
            self._tracker.set_state(task_id, state, key=key)
            log.info("tracker_sync.trouble_shown", task_id=task_id, kind=alert.kind, state=state)
