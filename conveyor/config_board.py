"""Config of the Plane board states that show a task's trouble (`[plane.trouble_states]`).

Kept apart from `conveyor.config` to keep that module small; it has no rules
of its own beyond unknown keys being errors, like every section.
"""

from __future__ import annotations

import msgspec


class PlaneTroubleStates(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Plane states Conveyor moves a card to when its task is in trouble ("": leave it)."""

    escalated: str = ""
    awaiting_confirm: str = ""
    awaiting_approval: str = ""
    cancelled: str = ""
