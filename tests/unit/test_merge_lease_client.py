"""The merge step's lease client: a release the keeper did not answer is not lost."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from actors.jobs.context import JobContext
from actors.jobs.merge_gate import MergeLease
from bus.messages import LeaseRelease, LeaseReply


def _ctx(answer: LeaseReply, kept: list[LeaseRelease]) -> JobContext:
    asked: list[Any] = []

    def _lease(subject: str, message: Any) -> LeaseReply:
        asked.append((subject, message))
        return answer

    return cast(JobContext, SimpleNamespace(lease=_lease, release_later=kept.append))


def test_an_unanswered_release_goes_to_the_release_stream_naming_its_revision():
    kept: list[LeaseRelease] = []
    held = MergeLease(name="merge.demo", task_id="DEMO-1", revision=7)
    held.release(_ctx(LeaseReply(granted=False, reason="lease keeper unreachable"), kept))
    assert kept == [LeaseRelease(name="merge.demo", task_id="DEMO-1", revision=7)]


def test_an_answered_release_is_not_sent_again():
    kept: list[LeaseRelease] = []
    held = MergeLease(name="merge.demo", task_id="DEMO-1", revision=7)
    held.release(_ctx(LeaseReply(granted=True, reason="released"), kept))
    assert kept == []
