"""Where a deploy runs and at which commit; for production, whether it may run at all.

The repository's deployed commit is recorded in the effect ledger under
`deployed.<repo>`, written with a compare-and-swap before the command starts: of
two deploys racing on one repository, the one that reads the record second sees
the first one's commit and decides again (`deploy_policy.decide`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from actors import deploy_policy
from actors.deploy_policy import Found, short
from actors.jobs.context import JobContext
from actors.jobs.steps import checkout_commit
from actors.launcher_policy import Run
from bus.bridge import KeyExists
from bus.effects import Ledger, effect_key
from bus.messages import LaunchOrder
from conveyor.errors import ConveyorError, Fenced
from conveyor.logs import get_logger
from conveyor.pipeline import FAILED, GATE_DEPLOY
from gateways import git

log = get_logger(__name__)

CLAIM_TRIES = 5
"""Compare-and-swap rounds on the deployed record before the attempt fails (and is retried)."""


@dataclass(frozen=True)
class Target:
    """The directory and commit a deploy runs at; with a `status`, it does not run."""

    cwd: Path
    sha: str
    base_sha: str = ""
    """The repository's deployed commit before this deploy ("" when none is recorded)."""
    status: str = ""
    """The verdict written instead of running the command; "" when it runs."""
    reason: str = ""


def deployed_key(repo: str) -> str:
    """The effect-ledger key holding the repository's deployed commit."""
    return effect_key("deployed", repo)


def last_deployed(effects: Ledger, repo: str) -> tuple[str, str, int | None]:
    """`(deployed commit, the one before it, record revision)`; empty when none."""
    record = effects.read(deployed_key(repo))
    if record is None:
        return "", "", None
    last, before = deploy_policy.parse_deployed(record.value.result)
    return last, before, record.revision


def target(
    ctx: JobContext, run: Run, order: LaunchOrder, gate: str, worktree: Path, *, head: str = ""
) -> Target:
    """Where and at which commit the deploy of `order` runs, or why it does not.

    Staging, and a production deploy with no merge commit on record (a task merged
    before Conveyor recorded them), run in the task's worktree at its head (`head`
    when the caller read it already).
    """
    if gate != GATE_DEPLOY or not order.deploy.sha:
        last, _, _ = last_deployed(ctx.effects, order.repo)
        return Target(cwd=worktree, sha=head or git.head_sha(worktree), base_sha=last)
    workspace = ctx.layout.workspace(order.repo)
    with ctx.repo_lock(order.repo):
        git.ensure_clone(ctx.forge.clone_url(order.repo), workspace)
    sha = _on_main(ctx, order, workspace)
    if not sha:
        why = f"merge commit {short(order.deploy.sha)} is not on main: not deployed"
        return Target(cwd=worktree, sha=order.deploy.sha, status=FAILED, reason=why)
    for _ in range(CLAIM_TRIES):
        last, before, revision = last_deployed(ctx.effects, order.repo)
        found = _found(workspace, sha, last, order.deploy.staged_sha)
        decision = deploy_policy.decide(found, on_unstaged=ctx.cfg.deploy.on_unstaged_tree)
        base = before if last == sha else last
        if not decision.run:
            return Target(
                cwd=worktree, sha=sha, base_sha=base, status=decision.status, reason=decision.reason
            )
        if last != sha:
            try:
                value = deploy_policy.deployed_value(sha, last)
                ctx.effects.record(deployed_key(order.repo), value, expect=revision)
            except (KeyExists, Fenced):
                log.info("launcher.deploy_raced", job_id=run.job_id, sha=sha)
                continue
        log.info("launcher.deploy_claimed", job_id=run.job_id, sha=sha, base_sha=base)
        checkout = Path(run.run_dir) / "checkout"
        checkout_commit(ctx, order.repo, sha, checkout)
        return Target(cwd=checkout, sha=sha, base_sha=base)
    raise ConveyorError(f"{order.repo}: the deployed commit kept changing; deploy again later")


def _on_main(ctx: JobContext, order: LaunchOrder, workspace: Path) -> str:
    """The task's merge commit if main contains it, else the forge's merge of that head; ""."""
    sha = order.deploy.sha
    if git.is_ancestor(workspace, sha, "origin/main"):
        return sha
    # A merge step that found its pull request merged already reports the head it merged.
    pull = ctx.forge.find_pull(order.repo, order.branch)
    merged = pull.merge_commit if pull is not None and pull.merged and pull.head_sha == sha else ""
    return merged if merged and git.is_ancestor(workspace, merged, "origin/main") else ""


def _tree(workspace: Path, sha: str) -> str:
    """The tree of `sha`; a marker that equals no tree when the commit is not here."""
    result = git.run_git_result(["rev-parse", "--verify", "--quiet", f"{sha}^{{tree}}"], workspace)
    return result.text if result.ok else f"(commit {short(sha)} not found)"


def _found(workspace: Path, sha: str, last: str, staged_sha: str) -> Found:
    known = bool(last) and last != sha
    return Found(
        sha=sha,
        tree=_tree(workspace, sha),
        last=last,
        last_is_ancestor=known and git.is_ancestor(workspace, last, sha),
        sha_is_ancestor=known and git.is_ancestor(workspace, sha, last),
        staged_sha=staged_sha,
        staged_tree=_tree(workspace, staged_sha) if staged_sha else "",
    )
