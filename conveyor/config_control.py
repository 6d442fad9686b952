"""Config of the control part's leader lease (`[control]`), apart to keep `conveyor.config` small.

`conveyor.config` re-exports `ControlConfig`; like every section, unknown keys are errors.
"""

from __future__ import annotations

from typing import Annotated

import msgspec


class ControlConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Active/standby control: only the holder of the leader lease runs the control actors."""

    leader_lease: bool = False
    """Campaign for the lease before starting the control actors (off: start them at once)."""
    leader_ttl_s: Annotated[float, msgspec.Meta(ge=10.0)] = 15.0
    """The lease's TTL; renewed every third of it, the active stops acting a quarter early."""
    campaign_delay_s: Annotated[float, msgspec.Meta(ge=0.0)] = 2.0
    """After taking over an expired lease, wait this long before acting."""
    poll_s: Annotated[float, msgspec.Meta(gt=0.0)] = 0.5
    """How often a standby reads the lease key."""
    id: str = ""
    """This process's name in the lease ("": host name and pid)."""
