"""When an owner writes its checkpoint head: its cost paid for by the writes it covers.

A head (`tasks.head`, `jobs.head` in `conveyor_index`) lists every hot id, so one
written on every tick that changed anything costs O(hot) a tick: with a backlog of
10,000 queued tasks, 10,000 ids sorted, encoded and stored every second. A start
reads the head and then every write after it, so a head written later costs a
restart a longer tail, never correctness. So a head is also written at most once a
`HEAD_MIN_INTERVAL_S`: at a few items a second every change used to write one (each
with a stream-info request for the sequence), about a tenth of all JetStream writes.
"""

from __future__ import annotations

IDS_PER_WRITE = 100
"""Hot ids one write since the last head pays for: the head waits until its writes cover it."""
HEAD_MIN_INTERVAL_S = 1.0
"""A head is written at most this often: a start then reads at most this long's writes more."""
HEAD_MAX_AGE_S = 30.0
"""A changed head is written at the latest this long after the last one."""


def head_due(*, hot: int, writes: int, age_s: float) -> bool:
    """Whether a head that changed is written now (else on a later tick).

    `hot`: ids the head lists; `writes`: writes since the last head (a change without
    one, e.g. a task settling, counts as one); `age_s`: since the last head.
    A small hot set is written on the first tick `HEAD_MIN_INTERVAL_S` after the last
    head: O(1) per write at any size.
    """
    if age_s < HEAD_MIN_INTERVAL_S:
        return False
    return max(writes, 1) * IDS_PER_WRITE >= hot or age_s >= HEAD_MAX_AGE_S
