"""The git and forge steps around a run: worktree, stale verdict, commit/push/PR/CI, intake."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from actors import deploy_policy
from actors import launcher_policy as policy
from actors.jobs.context import Abandoned, JobContext, RunDone
from actors.jobs.leases import TransitionFence, transition
from actors.launcher_policy import LaunchPlan, Run
from bus.effects import effect_key
from bus.messages import LaunchOrder
from conveyor import faults, procs
from conveyor.logs import get_logger
from gateways import git
from gateways.forge import PullRequest

log = get_logger(__name__)

LOG_TAIL_BYTES = 64 * 1024


def tail(path: Path) -> str:
    """The last `LOG_TAIL_BYTES` of a run's output ("" when there is none)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class Prepared:
    """A task's worktree, ready on its branch, and what preparing it learnt of its heads."""

    worktree: Path
    heads: git.Heads | None
    """The worktree's HEAD and origin's head as fetched under the repository's lock, after
    catching up; None for a worktree just made at origin's head (nothing was read)."""

    @property
    def head(self) -> str:
        """The worktree's HEAD when known, else ""."""
        return self.heads.head if self.heads is not None else ""


def prepare_worktree(ctx: JobContext, order: LaunchOrder, paths: Sequence[str] = ()) -> Prepared:
    """The task's worktree on its branch, cloning the repository's workspace if needed.

    `paths`: looked up in origin's head in the same git call (`git.Heads.held`).
    """
    with ctx.repo_lock(order.repo):
        return prepare_worktree_locked(ctx, order, paths)


def prepare_worktree_locked(
    ctx: JobContext, order: LaunchOrder, paths: Sequence[str] = ()
) -> Prepared:
    """`prepare_worktree` for a caller already holding the repository's lock."""
    workspace = ctx.layout.workspace(order.repo)
    worktree = ctx.layout.worktree(order.repo, order.task_id)
    git.ensure_clone(ctx.forge.clone_url(order.repo), workspace)
    if git.ensure_worktree(workspace, worktree, order.branch):
        # Just made from origin's branch (or main where origin has none): caught up.
        return Prepared(worktree, None)
    # ensure_clone fetched (or cloned) the workspace, whose refs the worktree shares.
    heads = git.catch_up_heads(worktree, order.branch, fetched=True, paths=paths)
    return Prepared(worktree, heads)


def clear_previous_verdict(
    ctx: JobContext, order: LaunchOrder, prepared: Prepared, relative: Sequence[str]
) -> Prepared:
    """Take earlier visits' verdicts (`relative` paths) off the branch before this visit's work.

    The gate reads the branch head once the job ends, whatever way it ends: a job
    that fails before writing its verdict (reaped, attempts spent) must find no
    verdict rather than the previous visit's. Pushed every time, so a deletion a
    dead incarnation committed but never pushed reaches the forge too. Returns the
    worktree with its heads after the clearing's push, if it pushed.
    """
    worktree = prepared.worktree
    if not relative or nothing_to_clear(ctx, order, worktree, relative, prepared.heads):
        return prepared
    with transition(ctx, order, wait=True) as fence:
        existed = [path for path in relative if (worktree / path).exists()]
        for path in relative:
            (worktree / path).unlink(missing_ok=True)
        fence.check("push")
        with ctx.repo_lock(order.repo):
            git.commit_all(
                worktree,
                f"conveyor: {order.task_id} clear the previous {order.stage} verdict "
                f"(visit {order.visit})",
            )
            pushed = git.push_branch(worktree, order.branch)
    for path in existed:
        log.info("launcher.verdict_cleared", job_id=order.job_id, path=path)
    return Prepared(worktree, git.Heads(head=pushed, remote=pushed))


def nothing_to_clear(
    ctx: JobContext,
    order: LaunchOrder,
    worktree: Path,
    relative: Sequence[str],
    heads: git.Heads | None = None,
) -> bool:
    """Whether no verdict in `relative` is left anywhere the gate or a later commit could see.

    True when the worktree holds none of them and the forge's branch head is the
    worktree's own HEAD, whose tree holds none either: then a clearing would commit
    nothing and push nothing, so its transition lease, commit and push are skipped
    (most visits: a first visit has no verdict to clear). A deletion committed but
    not pushed makes the heads differ, and is pushed as before. `heads`: both heads
    as `prepare_worktree` read them, origin's fetched under the repository's lock
    just before (so the forge's), with the paths origin's head holds if it was asked;
    without them, all of it is read here.
    """
    if any((worktree / path).exists() for path in relative):
        return False
    if heads is None:
        head = git.head_sha(worktree)
        pushed = ctx.forge.branch_head(order.repo, order.branch) == head
    else:
        head, pushed = heads.head, heads.pushed
    if not pushed:
        return False
    if heads is not None and heads.asked.issuperset(relative):
        # Pushed: origin's head is the worktree's, whose tree was asked already.
        return heads.held.isdisjoint(relative)
    return not git.paths_in_tree(worktree, head, list(relative))


def checkout_commit(ctx: JobContext, repo: str, sha: str, path: Path) -> None:
    """Make `path` a clean detached worktree of `sha` (the merge commit a deploy ships).

    Whatever an earlier attempt left there is removed first: the deploy runs in
    exactly the commit's tree, never in a task's feature worktree.
    """
    workspace = ctx.layout.workspace(repo)
    with ctx.repo_lock(repo):
        git.ensure_clone(ctx.forge.clone_url(repo), workspace)
        git.remove_worktree(workspace, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        git.run_git(["worktree", "add", "--quiet", "--detach", "--", str(path), sha], workspace)


def drop_checkout(ctx: JobContext, repo: str, path: Path) -> None:
    """Remove a deploy's clean checkout (no-op when it is gone)."""
    with ctx.repo_lock(repo):
        git.remove_worktree(ctx.layout.workspace(repo), path)


def prepare_run(ctx: JobContext, run: Run, order: LaunchOrder, plan: LaunchPlan) -> Prepared:
    """The worktree, without the previous visit's verdict, and the run directory, made."""
    stale = deploy_policy.stale_verdicts(plan.gate, order.task_id) if plan.verdict_path else ()
    prepared = prepare_worktree(ctx, order, stale)
    prepared = clear_previous_verdict(ctx, order, prepared, stale)
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    return prepared


def run_process(
    ctx: JobContext,
    run: Run,
    plan: LaunchPlan,
    worktree: Path,
    on_started: Callable[[int, float], None],
    stdin_path: Path | None = None,
) -> procs.Wrapped:
    """Run the plan's process in the worktree, output to the run's log, to its end."""
    return procs.run_wrapped(
        plan.argv,
        exit_file=Path(plan.exit_file),
        cwd=worktree,
        log_path=run.log_path,
        env=plan.env,
        timeout_s=plan.timeout_s,
        kill_grace_s=ctx.cfg.launcher.kill_grace_s,
        stdin_path=stdin_path,
        on_started=on_started,
    )


def ensure_pull(
    ctx: JobContext, order: LaunchOrder, head: str, body: str, *, after_merge: bool
) -> PullRequest:
    """The branch's pull request, opened at most once per head (effect ledger).

    `after_merge`: a PR merged at an older head does not count (a rework after a
    merge needs a new one); post-steps leave that to the merge step.
    """

    def _current() -> PullRequest | None:
        pull = ctx.forge.find_pull(order.repo, order.branch)
        if pull is not None and after_merge and pull.merged and pull.head_sha != head:
            return None
        return pull

    existing = _current()
    if existing is not None:
        return existing

    opened: list[PullRequest] = []

    def _open() -> str:
        title = f"{order.task_id}: {order.title or order.task_id}"
        opened.append(ctx.forge.open_pull(order.repo, order.branch, title, body))
        return str(opened[-1].number)

    def _probe() -> str | None:
        found = _current()
        return str(found.number) if found is not None else None

    number = int(ctx.effects.once(effect_key(order.task_id, "pull", head), _open, _probe))
    # Opened just now: the forge's answer is the pull request, with no second read.
    if opened and opened[-1].number == number:
        return opened[-1]
    return ctx.forge.get_pull(order.repo, number)


def post_steps(ctx: JobContext, run: Run, order: LaunchOrder, exit_code: int) -> RunDone:
    """Commit, push, open the pull request, let the forge run CI; all idempotent."""
    if ctx.abandoned.is_set():
        raise Abandoned(run.id)
    with transition(ctx, order, wait=True) as fence:
        return _post_steps_fenced(ctx, run, order, exit_code, fence)


def _post_steps_fenced(
    ctx: JobContext, run: Run, order: LaunchOrder, exit_code: int, fence: TransitionFence
) -> RunDone:
    worktree = ctx.layout.worktree(order.repo, order.task_id)
    usage = policy.parse_usage(tail(Path(run.log_path)))
    fence.check("push")
    with ctx.repo_lock(order.repo):
        git.commit_all(
            worktree,
            f"{order.role}: {order.task_id} {order.stage} "
            f"(visit {order.visit}, attempt {order.attempt})",
        )
        faults.point("launcher.committed")
        sha = git.push_branch(worktree, order.branch)
    faults.point("launcher.pushed")
    # A rework after a merge gets its new pull request from the merge step.
    if ctx.forge.find_pull(order.repo, order.branch) is None:
        fence.check("pull request")
        body = f"Work item {order.task_id}, delivered by Conveyor."
        ensure_pull(ctx, order, sha, body, after_merge=False)
        faults.point("launcher.pr_opened")
    status = ctx.forge.commit_status(order.repo, sha)
    # A pending status is a check that died with an earlier incarnation: run it again.
    if status is None or status.state == "pending":
        ctx.forge.on_push(order.repo, order.branch, sha)
        faults.point("launcher.checked")
    return RunDone(run_id=run.id, exit_code=exit_code, head_sha=sha, usage=usage)


def intake(ctx: JobContext, run: Run, order: LaunchOrder, fence: TransitionFence) -> RunDone:
    """The built-in intake step: push the task's new branch to the forge."""
    worktree = prepare_worktree(ctx, order).worktree
    fence.check("push")
    with ctx.repo_lock(order.repo):
        sha = git.push_branch(worktree, order.branch)
    return RunDone(run_id=run.id, exit_code=0, head_sha=sha)
