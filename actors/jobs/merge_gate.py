"""The merge gate: the only path by which a task's branch reaches main."""

from __future__ import annotations

from actors.jobs.context import JobContext, RunDone
from actors.jobs.leases import TransitionFence, holder
from actors.jobs.steps import ensure_pull, prepare_worktree
from actors.launcher_policy import Run
from actors.lease_policy import merge_lease
from bus import subjects
from bus.effects import effect_key
from bus.messages import LaunchOrder, LeaseAcquire, LeaseRelease, LeaseRenew
from conveyor import faults
from conveyor.errors import ConveyorError, Fenced
from conveyor.logs import get_logger
from gateways import git

log = get_logger(__name__)


def merge_gate(ctx: JobContext, run: Run, order: LaunchOrder, fence: TransitionFence) -> RunDone:
    """Merge the pull request under the repository's merge lease (the only merge path).

    Already merged at this head: success, no lease, no second merge. Otherwise
    take the lease; a branch behind main is rebased, pushed and re-tested, an
    up-to-date one keeps its green CI; the merge names the head that was
    checked, and the lease is proven still ours right before it.
    """
    head = ctx.forge.branch_head(order.repo, order.branch)
    if head is None:
        return RunDone(run_id=run.id, exit_code=1, error="branch missing on forge")
    pull = ctx.forge.find_pull(order.repo, order.branch)
    if pull is not None and pull.merged and pull.head_sha == head:
        return RunDone(run_id=run.id, exit_code=0, head_sha=head)
    name = merge_lease(order.repo)
    grant = ctx.lease(subjects.LEASE_ACQUIRE, LeaseAcquire(name=name, holder=holder(ctx, order)))
    if not grant.granted:
        return RunDone(
            run_id=run.id,
            exit_code=None,
            error=f"merge lease: {grant.reason}",
            defer_s=ctx.cfg.leases.busy_retry_s,
        )
    done: RunDone | None = None
    try:
        done = _merge_under_lease(ctx, run, order, name, grant.revision, fence)
        return done
    finally:
        # A protected repository's task keeps its merge lease until its confirmed
        # production deploy ends (the LeaseKeeper frees it then): nothing else may
        # merge into what is about to be deployed.
        keep = done is not None and done.exit_code == 0 and _protected(ctx, order.repo)
        if not keep:
            ctx.lease(subjects.LEASE_RELEASE, LeaseRelease(name=name, task_id=order.task_id))


def _protected(ctx: JobContext, repo: str) -> bool:
    return any(r.name == repo and r.protected for r in ctx.cfg.repos)


def _merge_under_lease(
    ctx: JobContext,
    run: Run,
    order: LaunchOrder,
    name: str,
    revision: int,
    fence: TransitionFence,
) -> RunDone:
    worktree = prepare_worktree(ctx, order)
    with ctx.repo_lock(order.repo):
        git.fetch(worktree)
        behind = not git.is_ancestor(worktree, "origin/main", "HEAD")
        if behind and not git.rebase(worktree, "origin/main"):
            return RunDone(run_id=run.id, exit_code=1, error="rebase onto main conflicts")
        # An earlier attempt may have rebased here and died before pushing: a local
        # head the forge does not have was never tested, so push and re-test it.
        behind = behind or git.head_sha(worktree) != ctx.forge.branch_head(order.repo, order.branch)
        if behind:
            fence.check("push")
        head = git.push_branch(worktree, order.branch) if behind else git.head_sha(worktree)
    if behind:
        # Re-test the rebased head; slow, and that is why merging is a job.
        status = ctx.forge.await_checks(order.repo, order.branch, head)
    else:
        status = ctx.forge.commit_status(order.repo, head)
    if status is None or status.state != "success":
        state = status.state if status else "missing"
        why = "re-test after rebase" if behind else "CI of the branch head"
        return RunDone(run_id=run.id, exit_code=1, head_sha=head, error=f"{why}: {state}")
    pull = ensure_pull(ctx, order, head, "Opened by Conveyor before merge.", after_merge=True)
    if pull.merged:
        return RunDone(run_id=run.id, exit_code=0, head_sha=head)
    renewed = ctx.lease(
        subjects.LEASE_RENEW, LeaseRenew(name=name, task_id=order.task_id, revision=revision)
    )
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
