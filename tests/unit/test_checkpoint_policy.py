"""A changed checkpoint head is written once the writes it covers pay for its hot ids."""

from __future__ import annotations

from actors.checkpoint_policy import (
    HEAD_MAX_AGE_S,
    HEAD_MIN_INTERVAL_S,
    IDS_PER_WRITE,
    head_due,
)

SOON = HEAD_MIN_INTERVAL_S


def test_a_small_hot_set_is_written_at_its_first_change_after_the_interval() -> None:
    assert head_due(hot=0, writes=0, age_s=SOON)
    assert head_due(hot=IDS_PER_WRITE, writes=1, age_s=SOON)
    # A change without a write (a task settling) counts as one.
    assert head_due(hot=IDS_PER_WRITE, writes=0, age_s=SOON)


def test_no_head_is_written_twice_within_the_interval() -> None:
    assert not head_due(hot=0, writes=50, age_s=SOON - 0.01)
    assert not head_due(hot=1, writes=1, age_s=0.0)


def test_a_large_hot_set_waits_for_enough_writes() -> None:
    hot = 10 * IDS_PER_WRITE
    assert not head_due(hot=hot, writes=1, age_s=1.0)
    assert not head_due(hot=hot, writes=9, age_s=1.0)
    assert head_due(hot=hot, writes=10, age_s=1.0)


def test_a_waiting_head_is_written_once_the_last_is_old_enough() -> None:
    hot = 1000 * IDS_PER_WRITE
    assert not head_due(hot=hot, writes=1, age_s=HEAD_MAX_AGE_S - 0.1)
    assert head_due(hot=hot, writes=1, age_s=HEAD_MAX_AGE_S)
