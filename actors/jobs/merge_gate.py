"""The merge gate: the only path by which a task's branch reaches main."""

from __future__ import annotations

from dataclasses import dataclass

from actors import merge_policy, merge_wait_policy
from actors.jobs.context import JobContext, RunDone
from actors.jobs.leases import TransitionFence, holder, patiently
from actors.jobs.pre_merge import run_checks
from actors.jobs.steps import ensure_pull, prepare_worktree_locked
from actors.launcher_policy import Run
from actors.lease_policy import merge_lease
from bus import subjects
from bus.effects import effect_key
from bus.messages import LaunchOrder, LeaseAcquire, LeaseRelease, LeaseRenew, LeaseReply
from conveyor import faults
from conveyor.errors import ConveyorError, Fenced
from conveyor.logs import get_logger
from conveyor.pipeline import OUTCOME_REWORK
from gateways import git

log = get_logger(__name__)


def merge_gate(ctx: JobContext, run: Run, order: LaunchOrder, fence: TransitionFence) -> RunDone:
    """Merge the pull request under the repository's merge lease (the only merge path).

    Already merged at this head: success, no lease, no second merge. Otherwise
    take the lease; a branch behind main is rebased, pushed and re-tested, an
    up-to-date one keeps its green CI; the repository's pre-merge checks run in
    the candidate; the merge names the head that was checked, and the lease is
    proven still ours right before it. A conflict, a red check or a failing
    pre-merge check sends the work back to development (`merge_policy`).
    """
    head = ctx.forge.branch_head(order.repo, order.branch)
    if head is None:
        return RunDone(run_id=run.id, exit_code=1, error="branch missing on forge")
    pull = ctx.forge.find_pull(order.repo, order.branch)
    if pull is not None and pull.merged and pull.head_sha == head:
        return RunDone(run_id=run.id, exit_code=0, head_sha=head)
    name = merge_lease(order.repo)
    grant = _acquire(ctx, order, name)
    if not grant.granted:
        return RunDone(
            run_id=run.id,
            exit_code=None,
            error=f"{merge_wait_policy.DEFERRED}{grant.reason}",
            defer_s=ctx.cfg.leases.busy_retry_s,
        )
    held = MergeLease(name=name, task_id=order.task_id, revision=grant.revision)
    done: RunDone | None = None
    try:
        done = _merge_under_lease(ctx, run, order, held, fence)
        return done
    finally:
        # A protected repository's task keeps its merge lease until its confirmed
        # production deploy ends (the LeaseKeeper frees it then): nothing else may
        # merge into what is about to be deployed.
        merged = done is not None and done.exit_code == 0 and not done.outcome
        keep = merged and _protected(ctx, order.repo)
        if not keep:
            held.release(ctx)


@dataclass
class MergeLease:
    """The merge lease this run holds; its revision moves with each renewal."""

    name: str
    task_id: str
    revision: int

    def renew(self, ctx: JobContext, job_id: str) -> LeaseReply:
        """Prove the lease is still ours; a keeper away is waited for, a refusal is final."""
        renew = LeaseRenew(name=self.name, task_id=self.task_id, revision=self.revision)
        reply = patiently(
            ctx,
            job_id,
            self.name,
            (subjects.LEASE_RENEW, renew),
            until=ctx.clock.now() + ctx.cfg.leases.merge_wait_s,
            wait_if_refused=False,
        )
        self.revision = reply.revision or self.revision
        return reply

    def release(self, ctx: JobContext) -> None:
        """Free the lease; a keeper away gets the release from its stream when back.

        Lost, the release would leave the lease held by a finished run for good: a
        merge lease is never freed from a finished holder (a protected one is kept).
        """
        release = LeaseRelease(name=self.name, task_id=self.task_id, revision=self.revision)
        if not ctx.lease(subjects.LEASE_RELEASE, release).granted:
            ctx.release_later(release)


def _acquire(ctx: JobContext, order: LaunchOrder, name: str) -> LeaseReply:
    """Take the merge lease, waiting in the run while another merge holds it.

    The wait ends when the keeper frees the lease or comes back (`LeaseFreed`), with
    `leases.busy_retry_s` as the longest sleep (a lost wake-up), and after
    `leases.merge_wait_s` at most: then the step defers through the queue; a
    cancelled job stops waiting at its next try, freeing its launch slot. A lease
    kept past its run (a protected repository's deploy) is not waited for in the run:
    its holder's deploy jobs need the repository's launch slots (`merge_wait_policy`).
    """
    return patiently(
        ctx,
        order.job_id,
        name,
        (subjects.LEASE_ACQUIRE, LeaseAcquire(name=name, holder=holder(ctx, order))),
        until=ctx.clock.now() + ctx.cfg.leases.merge_wait_s,
        wait_if_refused=merge_wait_policy.waits_in_run_on(_protected(ctx, order.repo)),
        cancellable=True,
    )


def _protected(ctx: JobContext, repo: str) -> bool:
    return any(r.name == repo and r.protected for r in ctx.cfg.repos)


def _merge_under_lease(
    ctx: JobContext,
    run: Run,
    order: LaunchOrder,
    held: MergeLease,
    fence: TransitionFence,
) -> RunDone:
    with ctx.repo_lock(order.repo):
        # Fetched under the lock, with this repository's merge lease held: main is current.
        prepared = prepare_worktree_locked(ctx, order)
        worktree = prepared.worktree
        # Both heads, origin's fetched just now: the forge's branch head.
        heads = prepared.heads or git.catch_up_heads(worktree, order.branch, fetched=True)
        behind = not git.is_ancestor(worktree, "origin/main", heads.head)
        conflicts = git.rebase(worktree, "origin/main") if behind else None
        if conflicts is not None:
            # Aborted: the worktree is back at the head it had.
            if not conflicts:
                return RunDone(run_id=run.id, exit_code=1, error="rebase onto main failed")
            return _send_back(ctx, run, heads.head, merge_policy.conflict(conflicts))
        # An earlier attempt may have rebased here and died before pushing: a local
        # head the forge does not have was never tested, so push and re-test it.
        behind = behind or not heads.pushed
        if behind:
            fence.check("push")
        head = git.push_branch(worktree, order.branch) if behind else heads.head
    if behind:
        # Re-test the rebased head; slow, and that is why merging is a job.
        status = ctx.forge.await_checks(order.repo, order.branch, head)
    else:
        status = ctx.forge.commit_status(order.repo, head)
        if status is None or status.state == "pending":
            # A re-test that died with an earlier attempt (or still runs on the forge's
            # CI) owes its result: run or await it. A final status is never re-tested.
            status = ctx.forge.await_checks(order.repo, order.branch, head)
    if status is not None and merge_policy.is_red(status.state):
        red = merge_policy.red_check(
            state=status.state,
            head=head,
            rebased=behind,
            description=status.description,
            target_url=status.target_url,
            log=_check_log(ctx, order.repo, head),
        )
        return _send_back(ctx, run, head, red)
    if status is None or status.state != "success":
        state = status.state if status else "missing"
        why = "re-test after rebase" if behind else "CI of the branch head"
        return RunDone(run_id=run.id, exit_code=1, head_sha=head, error=f"{why}: {state}")
    failed = run_checks(ctx, run, order, worktree, head)
    if failed is not None:
        return _send_back(ctx, run, head, failed)
    # Checked, not merged: a re-drive finds the branch up to date and its checks recorded.
    faults.point("launcher.merge_checked")
    pull = ensure_pull(ctx, order, head, "Opened by Conveyor before merge.", after_merge=True)
    if pull.merged:
        return RunDone(run_id=run.id, exit_code=0, head_sha=head)
    renewed = held.renew(ctx, order.job_id)
    if not renewed.granted:
        return RunDone(
            run_id=run.id,
            exit_code=1,
            head_sha=head,
            error=f"merge lease lost before merging: {renewed.reason}",
        )
    number = pull.number
    try:
        fence.check("merge")
    except Fenced as err:
        return RunDone(run_id=run.id, exit_code=1, head_sha=head, error=str(err))

    def _merge() -> str:
        merged = ctx.forge.merge_pull(order.repo, number, expected_head_sha=head)
        return merged.merge_commit or head

    def _merged_already() -> str | None:
        now = ctx.forge.find_pull(order.repo, order.branch)
        if now is not None and now.merged and now.head_sha == head:
            return now.merge_commit or head
        return None

    try:
        commit = ctx.effects.once(effect_key(order.task_id, "merge", head), _merge, _merged_already)
    except ConveyorError as err:
        return RunDone(run_id=run.id, exit_code=1, head_sha=head, error=str(err))
    faults.point("launcher.merged")
    log.info("launcher.merged", job_id=run.job_id, pull=number, head=head, rebased=behind)
    return RunDone(run_id=run.id, exit_code=0, head_sha=commit)


def _send_back(ctx: JobContext, run: Run, head: str, back: merge_policy.SendBack) -> RunDone:
    """The merge step's answer that the work goes back to development (done, not failed).

    Another attempt of the merge step would find the same conflict or the same red
    check: the queue must not retry it, the gate sends the task back. With
    `pipeline.merge_rework` off, it is a failed attempt, retried as before.
    """
    if not ctx.cfg.pipeline.merge_rework:
        return RunDone(run_id=run.id, exit_code=1, head_sha=head, error=back.summary)
    log.info("launcher.merge_sent_back", job_id=run.job_id, head=head, reason=back.summary)
    return RunDone(
        run_id=run.id, exit_code=0, head_sha=head, outcome=OUTCOME_REWORK, reason=back.text
    )


def _check_log(ctx: JobContext, repo: str, head: str) -> str:
    """The red check's output tail, when the forge keeps it ("" when it cannot be read)."""
    try:
        return ctx.forge.check_log(repo, head)
    except ConveyorError as err:
        log.warning("launcher.check_log_unread", repo=repo, head=head, error=str(err))
        return ""
