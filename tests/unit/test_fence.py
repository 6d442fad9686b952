"""A write retried through a leaderless window is fenced again before each retry."""

from __future__ import annotations

import asyncio

import pytest

from bus import fence
from conveyor.errors import Fenced


def test_the_first_try_is_not_checked_again_but_every_retry_is() -> None:
    calls: list[int] = []
    held = [True]

    def _stamp() -> dict[str, str]:
        if not held[0]:
            raise Fenced("lease gone")
        return {}

    async def _op(attempt: int) -> int:
        calls.append(attempt)
        return attempt

    op = fence.refenced(_op, _stamp)
    held[0] = False  # checked by the caller before the first try, not again here
    assert asyncio.run(op(0)) == 0
    with pytest.raises(Fenced):
        asyncio.run(op(1))
    assert calls == [0]


def test_no_lease_stamps_nothing() -> None:
    assert fence.no_stamp() == {}
