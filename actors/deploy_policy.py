"""Pure decisions of a deploy: which commit ships, whether it may, and its verdict file.

The production deploy ships the merge commit the task's merge step recorded, in a
clean checkout of it. Before its command runs, `decide` compares what git found
out (ancestry against the repository's last deployed commit, the commit's tree
against the tree staging judged) and says: deploy, `SUPERSEDED` (a newer commit
that contains this one is already deployed), `UNSTAGED` (re-stage: the tree is
not the one staging ran) or `FAILED` (fail closed). Nothing here does I/O.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import msgspec

from bus.messages import JobOutcome
from conveyor.config import Config
from conveyor.pipeline import (
    BUILTIN_ROLES,
    DECIDED_BY_CONVEYOR,
    DEPLOY_LOG,
    FAILED,
    GATE_DEPLOY,
    GATE_STAGING,
    JOB_DONE,
    ON_UNSTAGED_RESTAGE,
    ROLE_MERGE,
    STAGING_LOG,
    SUCCESS,
    SUPERSEDED,
    UNSTAGED,
    artifact_path,
)

# --- what the task records -----------------------------------------------------------------


def commits_of(outcome: JobOutcome, cfg: Config) -> dict[str, str]:
    """The task fields a finished job sets: the merge commit, or the head staging judged.

    A merge step that succeeded returns the commit it put on main; the work step of
    the stage whose gate is `staging_status` returns the head it left behind (its
    verdict committed on the tree it staged).
    """
    if outcome.status != JOB_DONE or not outcome.head_sha:
        return {}
    if outcome.role == ROLE_MERGE:
        return {"merge_sha": outcome.head_sha}
    stage = cfg.stage(outcome.stage)
    if stage is not None and stage.gate == GATE_STAGING and outcome.role not in BUILTIN_ROLES:
        return {"staged_sha": outcome.head_sha}
    return {}


def back_to_stage(cfg: Config, stage: str, gate: str) -> str:
    """The latest stage before `stage` whose gate is `gate`; "" when none (or no gate)."""
    if not gate:
        return ""
    names = [s.name for s in cfg.pipeline.stages]
    earlier = cfg.pipeline.stages[: names.index(stage)] if stage in names else []
    return next((s.name for s in reversed(earlier) if s.gate == gate), "")


# --- may it ship? --------------------------------------------------------------------------


class Found(msgspec.Struct, frozen=True, kw_only=True):
    """What git said about the commit a production deploy is about to ship."""

    sha: str
    """The commit to deploy (the task's merge commit)."""
    tree: str
    """`git rev-parse <sha>^{tree}`."""
    last: str = ""
    """The repository's last deployed commit ("" when none is recorded)."""
    last_is_ancestor: bool = False
    """`last` is an ancestor of `sha` (or the same commit): deploying moves forward."""
    sha_is_ancestor: bool = False
    """`sha` is an ancestor of `last`: a newer deploy already contains it."""
    staged_sha: str = ""
    """The head staging judged ("" when the task has no staging deploy on record)."""
    staged_tree: str = ""


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Run the command (`run`), or the verdict written instead and why."""

    run: bool
    status: str = ""
    reason: str = ""


def short(sha: str) -> str:
    """A commit as people read it."""
    return sha[:12]


def decide(found: Found, *, on_unstaged: str) -> Decision:
    """Whether a production deploy of `found.sha` runs, and the verdict when it does not.

    Ancestry first: an older commit than the one deployed never ships (its changes
    are live already: `SUPERSEDED`, the task completes), and a commit that does not
    descend from it fails closed. Then the tree: another tree than staging judged is
    re-staged (`UNSTAGED`) or FAILED, per `deploy.on_unstaged_tree`.
    """
    sha, last = found.sha, found.last
    if last and last != sha and found.sha_is_ancestor:
        return Decision(
            run=False,
            status=SUPERSEDED,
            reason=f"{short(last)}, already deployed, contains {short(sha)}: nothing to ship",
        )
    if last and last != sha and not found.last_is_ancestor:
        return Decision(
            run=False,
            status=FAILED,
            reason=f"{short(sha)} does not descend from {short(last)}, deployed last: not deployed",
        )
    if found.staged_tree and found.tree != found.staged_tree:
        why = (
            f"tree of {short(sha)} is not the tree staging judged at {short(found.staged_sha)}"
            " (main moved before the merge)"
        )
        if on_unstaged == ON_UNSTAGED_RESTAGE:
            return Decision(run=False, status=UNSTAGED, reason=f"{why}: staging it again")
        return Decision(run=False, status=FAILED, reason=f"{why}: not deployed")
    return Decision(run=True)


def deployed_value(sha: str, last: str) -> str:
    """The deployed record's value: the commit now deployed and the one before it."""
    return f"{sha} {last}".strip()


def parse_deployed(value: str) -> tuple[str, str]:
    """`(deployed commit, the one before it)` from a record's value; "" for what is missing."""
    parts = value.split()
    return (parts[0] if parts else "", parts[1] if len(parts) > 1 else "")


# --- the verdict file ----------------------------------------------------------------------

DEPLOY_LOG_TAIL_CHARS = 4000
"""How much of the command's output the verdict file quotes."""

VERDICT_FILES = {
    GATE_STAGING: (STAGING_LOG, "Staging log"),
    GATE_DEPLOY: (DEPLOY_LOG, "Deploy log"),
}
"""Per deploy gate: the verdict file its gate reads (front-matter key = the gate) and title."""


def verdict(exit_code: int | None, health_ok: bool | None, *, detail: str = "") -> tuple[str, str]:
    """`(status, reason)` of a deploy: SUCCESS only for exit code 0 and no failed health check.

    `health_ok` None: no health URL (or not checked). `detail` says why the command has
    no exit code (a timeout) or why the health check failed.
    """
    if exit_code is None:
        return FAILED, f"deploy command did not finish: {detail or 'no exit code'}"
    if exit_code != 0:
        return FAILED, f"deploy command exited with code {exit_code}"
    if health_ok is False:
        return FAILED, f"health check failed: {detail or 'no 2xx answer'}"
    if health_ok:
        return SUCCESS, "deploy command exited 0; health check answered 2xx"
    return SUCCESS, "deploy command exited 0; no health URL configured"


class DeployFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the finalizer found out about one deploy run."""

    work_item: str
    job_id: str
    timestamp: str
    command: list[str]
    exit_code: int | None
    health_url: str
    health: str
    status: str
    reason: str
    output: str = ""
    commit: str = ""
    """The commit the command ran at (staging: the branch head; production: the merge)."""
    base_sha: str = ""
    """The repository's deployed commit before this deploy ("" when none)."""
    ran: bool = True
    """False: Conveyor decided without running the command (superseded, unstaged)."""


def base_url(url: str) -> str:
    """The scheme and host of a health URL (the reference's `base_url`); "" for none."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def deploy_log(gate: str, facts: DeployFacts) -> tuple[str, str]:
    """`(repository path, text)` of the verdict file for a stage with a deploy gate.

    The status is written by Conveyor from the command's exit code and the health
    check (`decided_by: conveyor`); the file replaces whatever an agent put there.
    The production log also carries the reference's names, `hook_exit_code` and
    `deployed_by`; the staging log its `base_url`.
    """
    found = VERDICT_FILES.get(gate)
    if found is None:
        raise ValueError(f"gate {gate!r} has no deploy verdict")
    name, title = found
    fields: list[tuple[str, object]] = [
        (gate, facts.status),
        ("work_item", facts.work_item),
        ("job_id", facts.job_id),
        ("timestamp", facts.timestamp),
        ("commit", facts.commit),
        ("base_sha", facts.base_sha),
        ("command", facts.command),
        ("exit_code", facts.exit_code),
        ("health_url", facts.health_url),
        ("health", facts.health),
        ("reason", facts.reason),
        ("decided_by", DECIDED_BY_CONVEYOR),
    ]
    if gate == GATE_DEPLOY:
        fields += [("hook_exit_code", facts.exit_code), ("deployed_by", DECIDED_BY_CONVEYOR)]
    else:
        fields.append(("base_url", base_url(facts.health_url)))
    # JSON scalars and lists are valid YAML, and quoting every value keeps a command
    # argument like `--x: y` from changing the document's shape.
    front = "\n".join(f"{key}: {json.dumps(value)}" for key, value in fields)
    tail = facts.output[-DEPLOY_LOG_TAIL_CHARS:]
    fence = "```"
    while fence in tail:
        fence += "`"
    how = (
        "Decided by Conveyor from the command's exit code and the health check."
        if facts.ran
        else "Decided by Conveyor before running the command, which did not run."
    )
    body = (
        f"# {title}: {facts.work_item}\n\n"
        f"**{facts.status}**: {facts.reason}.\n\n"
        f"{how}\n\n"
        f"## Output (last {DEPLOY_LOG_TAIL_CHARS} characters)\n\n"
        f"{fence}text\n{tail.rstrip()}\n{fence}\n"
    )
    return artifact_path(facts.work_item, name), f"---\n{front}\n---\n\n{body}"


def stale_verdicts(gate: str, task_id: str) -> tuple[str, ...]:
    """Verdict files a visit of a stage with `gate` removes before its work starts.

    Staging removes the production log too: the merge that follows it must not
    carry a previous visit's production verdict onto main, where the clean checkout
    of the merge commit would hold it.
    """
    names = {GATE_STAGING: (STAGING_LOG, DEPLOY_LOG), GATE_DEPLOY: (DEPLOY_LOG,)}.get(gate, ())
    return tuple(artifact_path(task_id, name) for name in names)
