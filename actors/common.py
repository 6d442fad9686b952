"""Plumbing shared by actors: the outbox flush and message routing to subjects."""

from __future__ import annotations

from bus import subjects
from bus.messages import (
    Alert,
    JobFinished,
    JobOutcome,
    JobRequested,
    JobsCancelled,
    JobStarted,
    KillJob,
    LaunchOrder,
    Message,
    ReapJob,
    StageChanged,
)


def subject_for(msg: Message) -> str:
    """The subject a message is published on."""
    match msg:
        case JobRequested():
            return subjects.JOBS_REQUESTED
        case JobsCancelled():
            return subjects.JOBS_CANCELLED
        case JobStarted():
            return subjects.JOBS_STARTED
        case JobFinished():
            return subjects.JOBS_FINISHED
        case JobOutcome():
            return subjects.JOBS_OUTCOME
        case ReapJob():
            return subjects.JOBS_REAP
        case LaunchOrder():
            return subjects.LAUNCH_ORDERS
        case KillJob():
            return subjects.LAUNCH_KILL
        case StageChanged():
            return subjects.stage_changed(msg.task_id)
        case Alert():
            return subjects.ALERTS
    raise TypeError(f"no subject for {type(msg).__name__}")


def is_durable(msg: Message) -> bool:
    """Kill orders are core NATS (a dead launcher's processes die with their wrapper's timeout)."""
    return not isinstance(msg, KillJob)
