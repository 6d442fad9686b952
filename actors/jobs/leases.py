"""The lease client of a run: transition leases that fence each step's side effects."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import msgspec
import psutil

from actors.jobs.context import Abandoned, JobContext
from actors.jobs.lease_wake import LeaseWaker
from actors.lease_policy import SUPERSEDED, task_lease
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
from conveyor.clock import SystemClock
from conveyor.errors import ConveyorError, Fenced
from conveyor.logs import get_logger

log = get_logger(__name__)
_clock = SystemClock()


class LeaseBusy(ConveyorError):
    """The task's transition lease is held by another live executor."""


class Unanswered(LeaseReply, frozen=True, kw_only=True):
    """A refusal made up by the asker: the keeper did not answer (away or restarting)."""


GIVE_UP_AFTER_S = 1.0
"""A keeper answers in milliseconds: a request this old when a new keeper announced
itself went to its predecessor, which died with it."""


def request(
    bus: Bus, subject: str, message: msgspec.Struct, waker: LeaseWaker | None = None
) -> LeaseReply:
    """Ask the LeaseKeeper; an unreachable keeper or a garbled answer is an unanswered refusal.

    The wait is the bus's request timeout, cut short when a new keeper announces
    itself (`waker`) while the request waits for a killed one: the asker retries
    against the successor at once.
    """
    since = waker.returns() if waker is not None else 0
    sent = _clock.monotonic()

    def _lost() -> bool:
        return (
            waker is not None
            and waker.returns() != since
            and _clock.monotonic() - sent >= GIVE_UP_AFTER_S
        )

    try:
        data = bus.request(subject, encode(message), give_up=_lost)
        return msgspec.json.decode(data, type=LeaseReply)
    except (ConveyorError, msgspec.DecodeError, msgspec.ValidationError) as err:
        return Unanswered(granted=False, reason=f"lease keeper unreachable: {err}")


def patiently(
    ctx: JobContext,
    job_id: str,
    name: str,
    ask: tuple[str, msgspec.Struct],
    *,
    until: float,
    wait_if_refused: bool | Callable[[str], bool],
    cancellable: bool = False,
) -> LeaseReply:
    """Ask until granted, refused for good, or `until`; retry when the keeper says to.

    An unanswered request (the keeper away) is always retried; a refusal only with
    `wait_if_refused` (or when it says so of the refusal's reason). Between tries
    the run sleeps until the keeper frees `name` or comes back (`LeaseFreed`), at
    most `leases.busy_retry_s` (a lost wake-up). `cancellable`: a KillJob for the
    run's job ends the wait at its next try (the refusal is returned).
    """
    subject, message = ask
    while True:
        mark = ctx.lease_waker.mark(name)
        reply = ctx.lease(subject, message)
        answered = not isinstance(reply, Unanswered)
        waits = wait_if_refused(reply.reason) if callable(wait_if_refused) else wait_if_refused
        if reply.granted or (answered and not waits):
            return reply
        left = until - ctx.clock.now()
        if left <= 0 or (cancellable and ctx.cancelled.is_set()):
            return reply
        log.info("launcher.transition_wait", job_id=job_id, lease=name, reason=reply.reason)
        if ctx.lease_waker.wait(name, mark, min(left, ctx.cfg.leases.busy_retry_s), ctx.abandoned):
            raise Abandoned(job_id)


class TransitionFence:
    """A held transition lease; `check` proves it is still ours right before an effect."""

    def __init__(
        self, ctx: JobContext, order: LaunchOrder, name: str, revision: int, patience_s: float
    ) -> None:
        self._ctx = ctx
        self._job_id = order.job_id
        self._patience_s = patience_s
        self.name = name
        self.task_id = order.task_id
        self.revision = revision

    def check(self, step: str) -> None:
        """Raise `Fenced` if the lease was reclaimed or released since it was granted.

        A keeper that does not answer (restarting) is waited for, as long as the
        lease was: it reloads the lease, and only its answer proves anything.
        """
        renew = LeaseRenew(name=self.name, task_id=self.task_id, revision=self.revision)
        reply = patiently(
            self._ctx,
            self._job_id,
            self.name,
            (subjects.LEASE_RENEW, renew),
            until=self._ctx.clock.now() + self._patience_s,
            wait_if_refused=False,
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
        attempt=order.attempt,
    )


@contextlib.contextmanager
def transition(ctx: JobContext, order: LaunchOrder, *, wait: bool) -> Iterator[TransitionFence]:
    """Hold the task's transition lease for the side effects of one step.

    `wait`: an agent's work is done and must not be redone, so its post-steps wait
    for the lease (up to `leases.max_age_s`); a built-in step is cheap to defer, so
    it waits one `leases.busy_retry_s` at most. A refused request is retried when the
    keeper frees the lease or comes back (`LeaseFreed`), the period being the backstop.
    An attempt its job no longer runs (reaped while this launcher was paused or cut
    off, retried elsewhere) is refused for good: `Fenced`, and none of its effects.
    """
    name = task_lease(order.task_id)
    patience_s = ctx.cfg.leases.max_age_s if wait else ctx.cfg.leases.busy_retry_s
    grant = patiently(
        ctx,
        order.job_id,
        name,
        (subjects.LEASE_ACQUIRE, LeaseAcquire(name=name, holder=holder(ctx, order))),
        until=ctx.clock.now() + patience_s,
        wait_if_refused=_not_superseded,
    )
    if not grant.granted and grant.reason.startswith(SUPERSEDED):
        raise Fenced(f"transition lease {name}: {grant.reason}")
    if not grant.granted:
        raise LeaseBusy(f"transition lease: {grant.reason}")
    fence = TransitionFence(ctx, order, name, grant.revision, patience_s)
    try:
        yield fence
    finally:
        release = LeaseRelease(name=name, task_id=order.task_id, revision=fence.revision)
        if not ctx.lease(subjects.LEASE_RELEASE, release).granted:
            # The keeper is away (or answered late): hand the release to the stream
            # it consumes when back; the revision keeps a late one from freeing a
            # later grant.
            ctx.release_later(release)


def _not_superseded(reason: str) -> bool:
    return not reason.startswith(SUPERSEDED)


def release_later(bus: Bus, release: LeaseRelease) -> None:
    """Keep `release` in JetStream until the LeaseKeeper consumes it."""
    try:
        bus.publish(
            subjects.LEASE_RELEASES,
            release,
            msg_id=f"release:{release.name}:{release.revision}",
        )
    except ConveyorError as err:
        # Lost for good only with NATS away too: the keeper then frees the lease
        # when the next run asks for it and finds this run finished.
        log.warning("launcher.release_lost", lease=release.name, error=str(err))
        return
    log.info("launcher.release_deferred", lease=release.name, revision=release.revision)
