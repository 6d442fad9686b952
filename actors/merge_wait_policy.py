"""Pure decisions of a merge step refused its repository's merge lease: wait in the run, or defer.

A merge lease held by a run that is merging now is freed when that run ends, in
seconds to minutes, and the LeaseKeeper says so (`LeaseFreed`): the refused run
waits for that wake-up, holding its launch slot, up to `leases.merge_wait_s`.
A merge lease kept past its run (a protected repository's task keeps it until its
production deploy ends) may be held for hours, and that task's deploy jobs need
the repository's launch slots: a run waiting for it would starve the very holder
it waits for, so it defers through the queue as before. The keeper tells them
apart (it can read the holder's run record) and says so in its refusal's reason.
"""

from __future__ import annotations

MERGING = "merging now"
"""Marks the keeper's refusal of a merge lease whose holder's run is in progress."""


def refusal(reason: str, *, merging: bool) -> str:
    """The reason the keeper answers when it refuses a merge lease."""
    return f"{reason} ({MERGING})" if merging else reason


def waits_in_run(reason: str) -> bool:
    """Whether a run refused a merge lease for `reason` waits for its release in the run."""
    return reason.endswith(f"({MERGING})")
