"""Config of Plane as the tracker (`[plane]`), kept apart to keep `conveyor.config` small.

`conveyor.config` re-exports `PlaneConfig` and `PlaneStates`; like every section,
unknown keys are errors.
"""

from __future__ import annotations

import msgspec


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of config sections: unknown keys are errors (as in `conveyor.config`)."""


class PlaneStates(_Section, frozen=True):
    """Names of the Plane board states Conveyor acts on (exact, case-sensitive)."""

    in_progress: str = "In Progress"
    approved: str = "Approved"
    rejected: str = "Rejected"
    confirm_deploy: str = "Confirm Deploy"
    blocked: str = "Blocked"
    needs_input: str = "Needs Input"
    in_review: str = "In Review"
    done: str = "Done"


class PlaneTroubleStates(_Section, frozen=True):
    """Plane states Conveyor moves a card to when its task is in trouble ("": leave it)."""

    escalated: str = ""
    awaiting_confirm: str = ""
    awaiting_approval: str = ""
    cancelled: str = ""


class PlaneConfig(_Section, frozen=True):
    """A Plane workspace as the tracker (`tracker.kind = "plane"`) and its webhooks."""

    url: str = ""
    api_key: str = ""
    workspace: str = ""
    webhook_secret: str = ""
    timeout_s: float = 10.0
    retries: int = 3
    per_page: int = 100
    states: PlaneStates = msgspec.field(default_factory=PlaneStates)
    trouble_states: PlaneTroubleStates = msgspec.field(default_factory=PlaneTroubleStates)
    cancel_state: str = ""
    """A card moved to this Plane state cancels its task ("": no state cancels)."""
