"""The lease client of a run: transition leases that fence each step's side effects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import msgspec
import psutil

from actors.jobs.context import Abandoned, JobContext, LeaseRequest
from actors.lease_policy import task_lease
from bus import subjects
from bus.bridge import Bus
from bus.messages import (
    LaunchOrder,
    LeaseAcquire,
    LeaseHolder,
    LeaseRelease,
    LeaseRenew,
    LeaseReply,
    encode,
)
from conveyor import procs
from conveyor.errors import ConveyorError, Fenced
from conveyor.logs import get_logger

log = get_logger(__name__)


class LeaseBusy(ConveyorError):
    """The task's transition lease is held by another live executor."""


def request(bus: Bus, subject: str, message: msgspec.Struct) -> LeaseReply:
    """Ask the LeaseKeeper; an unreachable keeper or a garbled answer is a refusal."""
    try:
        data = bus.request(subject, encode(message), timeout_s=10.0)
        return msgspec.json.decode(data, type=LeaseReply)
    except (ConveyorError, msgspec.DecodeError, msgspec.ValidationError) as err:
        return LeaseReply(granted=False, reason=f"lease keeper unreachable: {err}")


class TransitionFence:
    """A held transition lease; `check` proves it is still ours right before an effect."""

    def __init__(self, lease: LeaseRequest, name: str, task_id: str, revision: int) -> None:
        self._lease = lease
        self.name = name
        self.task_id = task_id
        self.revision = revision

    def check(self, step: str) -> None:
        """Raise `Fenced` if the lease was reclaimed or released since it was granted."""
        reply = self._lease(
            subjects.LEASE_RENEW,
            LeaseRenew(name=self.name, task_id=self.task_id, revision=self.revision),
        )
        if not reply.granted:
            raise Fenced(f"transition lease {self.name} lost before {step}: {reply.reason}")
        self.revision = reply.revision or self.revision


def holder(ctx: JobContext, order: LaunchOrder) -> LeaseHolder:
    """Who holds a lease taken for `order`: this process, on this boot, for this job."""
    me = psutil.Process()
    return LeaseHolder(
        task_id=order.task_id,
        job_id=order.job_id,
        launcher=ctx.launcher,
        host=ctx.host,
        pid=me.pid,
        create_time=me.create_time(),
        boot_id=procs.boot_id(),
    )


@contextlib.contextmanager
def transition(ctx: JobContext, order: LaunchOrder, *, wait: bool) -> Iterator[TransitionFence]:
    """Hold the task's transition lease for the side effects of one step.

    `wait`: an agent's work is done and must not be redone, so its post-steps wait
    for the lease (up to `leases.max_age_s`); a built-in step is cheap to defer.
    """
    name = task_lease(order.task_id)
    deadline = ctx.clock.now() + ctx.cfg.leases.max_age_s
    while True:
        grant = ctx.lease(
            subjects.LEASE_ACQUIRE, LeaseAcquire(name=name, holder=holder(ctx, order))
        )
        if grant.granted:
            break
        if not wait or ctx.clock.now() >= deadline:
            raise LeaseBusy(f"transition lease: {grant.reason}")
        log.info("launcher.transition_wait", job_id=order.job_id, reason=grant.reason)
        if ctx.abandoned.wait(ctx.cfg.leases.busy_retry_s):
            raise Abandoned(order.job_id)
    fence = TransitionFence(ctx.lease, name, order.task_id, grant.revision)
    try:
        yield fence
    finally:
        ctx.lease(
            subjects.LEASE_RELEASE,
            LeaseRelease(name=name, task_id=order.task_id, revision=fence.revision),
        )
