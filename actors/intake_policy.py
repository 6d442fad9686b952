"""Pure routing of normalized events (Plane, Gitea) to StageEngine inputs.

The tracker and the forge say what happened; this decides which task it is about
and what the StageEngine should be told. Status only: a Plane comment or a push
never moves a task, and the gate (read at the branch head) stays the judge of
every stage, whatever an event claims.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import msgspec

from bus.messages import (
    Cancel,
    CommitStatusEvent,
    PullRequestEvent,
    Reevaluate,
    Submit,
    TrackerUpdate,
    WorkItemEvent,
)
from conveyor import validate
from conveyor.config import Config, PlaneStates
from conveyor.pipeline import GATE_CI_GREEN, STATE_IN_PROGRESS, TERMINAL, TRACKER_STATES

STATE_KEYS = TRACKER_STATES
"""Plane board states Conveyor knows, by their key in `plane.states`."""

FINAL_CI_STATES = frozenset({"success", "failure", "error"})

STATE_FIELDS = frozenset({"state", "state_id"})
"""`activity.field` of a state change: `state_id` from the web UI, `state` from the API."""

StageInput = Submit | TrackerUpdate | Reevaluate | Cancel


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    """What routing needs to know of a task (from the StageEngine's status rows)."""

    id: str
    repo: str
    stage: str
    branch: str
    head_sha: str = ""


class CardState(msgspec.Struct, frozen=True, kw_only=True):
    """The last state Intake acted on for one Plane card (bucket `conveyor_cards`)."""

    state_id: str
    state_name: str = ""
    key: str = ""
    """The message id of the event that was acted on."""
    at: float = 0.0


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """The StageEngine inputs an event turns into, and why."""

    inputs: tuple[StageInput, ...] = ()
    reason: str


def state_key(name: str, states: PlaneStates) -> str:
    """The key of a Plane state name (exact, case-sensitive), or `other`."""
    for key in STATE_KEYS:
        if getattr(states, key) == name:
            return key
    return "other"


def task_id_for(prefix: str, sequence_id: int) -> str:
    """Conveyor's id of a Plane work item (prefix and Plane's sequence id), or "" if invalid."""
    task_id = f"{prefix}-{sequence_id}"
    return task_id if validate.WORK_ITEM_ID_RE.fullmatch(task_id) else ""


def clean_title(name: str, fallback: str) -> str:
    """A Plane name as a task title: control characters become spaces, bounded length."""
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in name)
    text = " ".join(text.split())[: validate.MAX_TITLE].strip()
    return text or fallback


def not_a_move(event: WorkItemEvent, last: CardState | None) -> str:
    """Why a work item event is no board move to act on, or "" when it is one.

    Plane sends one delivery per changed field, each with the card's current state:
    only a delivery whose field is the state moves anything. A state equal to the
    last one acted on (a poll seeing it again, Plane resending a change under a new
    delivery id) was handled already. An event naming no field (a creation, an
    older producer) is taken as the state it shows.
    """
    if event.action == "updated" and event.field and event.field not in STATE_FIELDS:
        return f"{event.field[:40]} edited; the state did not change"
    if last is not None and event.state_id and last.state_id == event.state_id:
        return f"state {last.state_name or event.state_id} already acted on ({last.key})"
    return ""


def route_work_item(event: WorkItemEvent, state_name: str, *, key: str, cfg: Config) -> Route:
    """A work item moved: In Progress starts a task, other states go to the StageEngine."""
    repo = cfg.repo_for_plane(event.project_id)
    if repo is None:
        return Route(reason=f"plane project {event.project_id!r} is not configured")
    if event.action == "deleted":
        return Route(reason="a deleted work item is not acted on")
    task_id = task_id_for(repo.prefix, event.sequence_id)
    if not task_id:
        return Route(reason=f"work item {event.work_item_id}: bad sequence id")
    if not state_name:
        return Route(reason=f"{task_id}: state {event.state_id!r} unknown")
    if cfg.plane.cancel_state and state_name == cfg.plane.cancel_state:
        cancel = Cancel(id=task_id, reason=f"moved to {state_name} in Plane")
        return Route(inputs=(cancel,), reason=f"{task_id}: {state_name} cancels it")
    state = state_key(state_name, cfg.plane.states)
    update = TrackerUpdate(id=task_id, state=state, key=key, reason=f"{state_name} in Plane")
    if state != STATE_IN_PROGRESS:
        return Route(inputs=(update,), reason=f"{task_id}: {state_name}")
    submit = Submit(
        repo=repo.name,
        title=clean_title(event.title, f"Work item {task_id}"),
        id=task_id,
        description=event.description[: validate.MAX_DESCRIPTION],
        external_id=event.work_item_id,
    )
    return Route(inputs=(submit, update), reason=f"{task_id}: {state_name} starts it")


def _live(tasks: Sequence[TaskView], repo: str) -> list[TaskView]:
    return [t for t in tasks if t.repo == repo and t.stage not in TERMINAL]


def route_status(event: CommitStatusEvent, tasks: Sequence[TaskView], *, cfg: Config) -> Route:
    """A CI status: read the gate of the task whose branch head it is.

    A commit Conveyor does not know (a rebase by hand, a missed push) resolves to
    the single task of the repository on a CI-gated stage; none or several is
    ambiguous and only logged.
    """
    repo = cfg.repo_for_gitea(event.repo)
    if repo is None:
        return Route(reason=f"gitea repository {event.repo!r} is not configured")
    if event.state not in FINAL_CI_STATES:
        return Route(reason=f"CI {event.state} for {event.sha[:12]}: nothing to decide yet")
    cause = f"CI {event.state} for {event.sha[:12]}"
    live = _live(tasks, repo.name)
    owners = [t for t in live if t.head_sha == event.sha]
    if not owners:
        ci_stages = {s.name for s in cfg.pipeline.stages if s.gate == GATE_CI_GREEN}
        owners = [t for t in live if t.stage in ci_stages]
        if len(owners) != 1:
            found = ", ".join(t.id for t in owners) or "none"
            return Route(reason=f"{cause}: commit unknown, CI-gated tasks: {found}; ignored")
    inputs = tuple(Reevaluate(id=t.id, cause=cause) for t in owners)
    return Route(inputs=inputs, reason=f"{cause}: {', '.join(t.id for t in owners)}")


def route_pull_request(event: PullRequestEvent, tasks: Sequence[TaskView], *, cfg: Config) -> Route:
    """A merged pull request: the merge step's gate of its branch's task reads it."""
    repo = cfg.repo_for_gitea(event.repo)
    if repo is None:
        return Route(reason=f"gitea repository {event.repo!r} is not configured")
    if not event.merged:
        return Route(reason=f"pull request #{event.number} {event.action}: nothing to decide")
    owners = [t for t in _live(tasks, repo.name) if t.branch == event.head_branch]
    cause = f"pull request #{event.number} merged"
    if not owners:
        return Route(reason=f"{cause}: no live task on {event.head_branch!r}")
    return Route(
        inputs=tuple(Reevaluate(id=t.id, cause=cause) for t in owners),
        reason=f"{cause}: {owners[0].id}",
    )
