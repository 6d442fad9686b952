"""When an owner writes its checkpoint head: its cost paid for by the writes it covers.

A head (`tasks.head`, `jobs.head` in `conveyor_index`) lists every hot id, so one
written on every tick that changed anything costs O(hot) a tick: with a backlog of
10,000 queued tasks, 10,000 ids sorted, encoded and stored every second. A start
reads the head and then every write after it, so a head written later costs a
restart a longer tail, never correctness.
"""

from __future__ import annotations

IDS_PER_WRITE = 100
"""Hot ids one write since the last head pays for: the head waits until its writes cover it."""
HEAD_MAX_AGE_S = 30.0
"""A changed head is written at the latest this long after the last one."""


def head_due(*, hot: int, writes: int, age_s: float) -> bool:
    """Whether a head that changed is written now (else on a later tick).

    `hot`: ids the head lists; `writes`: writes since the last head (a change without
    one, e.g. a task settling, counts as one); `age_s`: since the last head.
    A small hot set is written at once, as before: O(1) per write at any size.
    """
    return max(writes, 1) * IDS_PER_WRITE >= hot or age_s >= HEAD_MAX_AGE_S
