"""Every payload that crosses the bus.

Class names are the wire tags (`{"type": "JobRequested", ...}`); each is listed in
`docs/messages.md`. New fields get defaults and existing ones are never retyped;
decoders ignore unknown fields so old readers survive rolling restarts.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Message(msgspec.Struct, frozen=True, tag_field="type", tag=True, kw_only=True):
    """Base of every bus payload; the class name is the wire tag.

    Durable messages are published from the sender's outbox with `Nats-Msg-Id`
    `<record key>:<revision>:<index>`, so a re-published outbox is stored once.
    """


# --- commands (request-reply, conveyor.cmd.*) --------------------------------------------


class Submit(Message, frozen=True):
    """Operator -> StageEngine: create a task for a work item (idempotent by `id`)."""

    repo: str
    title: str
    id: str = ""
    description: str = ""
    external_id: str = ""
    """The work item's id in the tracker (a Plane work item uuid); empty for CLI items."""


class Approve(Message, frozen=True):
    """Operator -> StageEngine: approve the analysis of a task."""

    id: str


class Reject(Message, frozen=True):
    """Operator -> StageEngine: reject the analysis; the analyst reworks it."""

    id: str
    reason: str = ""


class Cancel(Message, frozen=True):
    """Operator -> StageEngine: stop a task for good; its jobs are cancelled."""

    id: str
    reason: str = ""


class Retry(Message, frozen=True):
    """Operator -> StageEngine: reset the retry budget and re-run the current stage."""

    id: str


class ConfirmDeploy(Message, frozen=True):
    """Operator -> StageEngine: confirm the production deploy of a protected repository."""

    id: str


class TrackerUpdate(Message, frozen=True):
    """Intake -> StageEngine: the tracker moved the task's work item to `state`.

    Status only: `state` is a key (`in_progress`, `approved`, `rejected`,
    `confirm_deploy`, `blocked`, `needs_input`, `other`). Idempotent by `key`, the
    event's message id: a replayed event changes nothing.
    """

    id: str
    state: str
    key: str
    reason: str = ""


class Reevaluate(Message, frozen=True):
    """Intake or Reconciler -> StageEngine: read the task's gate again.

    `only_pass`: act only on a passing gate and stay silent otherwise (the
    Reconciler's replay of a lost event).
    """

    id: str
    cause: str
    only_pass: bool = False


class Annotate(Message, frozen=True):
    """PostDeployMonitor -> StageEngine: record what happened after `done` in the history.

    Idempotent by `key`; the stage does not change.
    """

    id: str
    cause: str
    key: str


Command = Submit | Approve | Reject | Cancel | Retry | ConfirmDeploy


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Answer to every command: `ok`, and if not, `error` naming the field."""

    ok: bool
    error: str | None = None
    field: str | None = None
    task: dict[str, Any] | None = None
    note: str | None = None


# --- jobs (JetStream, CONVEYOR_JOBS) -------------------------------------------------------


class DeployCommits(msgspec.Struct, frozen=True, kw_only=True):
    """What a production deploy ships and what staging judged (empty: not known)."""

    sha: str = ""
    """The merge commit the task's merge step recorded: the production deploy runs at it."""
    staged_sha: str = ""
    """The branch head the staging deploy's job left: its tree is the one staging judged."""


class JobRequested(Message, frozen=True):
    """StageEngine -> QueueWorker: run `role` for a task's stage visit.

    Idempotency key: `job_id` = `<task>.<stage>.<visit>.<step>`; a replay is ignored.
    """

    job_id: str
    task_id: str
    repo: str
    stage: str
    role: str
    visit: int
    branch: str
    title: str
    description: str = ""
    requested_at: float = 0.0
    brief: str = ""
    """Why the task came back to this stage (review findings, failing tests, …); empty on a
    first visit. The next run of the role gets it in its prompt."""
    task_spent_usd: float = 0.0
    """What the task's agents spent before this job, since its last operator retry (the
    budget `pipeline.max_task_cost_usd` caps); the QueueWorker adds the running totals."""
    task_spent_tokens: int = 0
    """Likewise in tokens (input + output), for `pipeline.max_task_tokens`."""
    deploy: DeployCommits = msgspec.field(default_factory=DeployCommits)
    """The commits a production deploy job acts on; every attempt's launch order carries it."""


class JobsCancelled(Message, frozen=True):
    """StageEngine -> QueueWorker: cancel every unfinished job of a task."""

    task_id: str
    reason: str = ""


class JobStarted(Message, frozen=True):
    """Launcher -> QueueWorker: the agent process of `job_id`/`attempt` is running."""

    job_id: str
    attempt: int
    run_id: str
    host: str
    pid: int
    create_time: float
    log_path: str
    started_at: float


class JobFinished(Message, frozen=True):
    """Launcher -> QueueWorker: the run ended; `exit_code` is the agent's.

    `error` is set when the run could not start or its post-steps failed.
    """

    job_id: str
    attempt: int
    run_id: str
    exit_code: int | None
    head_sha: str = ""
    error: str = ""
    finished_at: float = 0.0
    usage: dict[str, Any] = msgspec.field(default_factory=dict)
    defer_s: float = 0.0
    """> 0: the attempt could not start its work (a busy lease); run it again later
    without spending an attempt."""
    outcome: str = ""
    """How the agent run ended (`conveyor.pipeline.AgentOutcome`); empty when unknown."""
    reason: str = ""
    """The outcome for people: "rate limited (429)", "authentication refused", "stalled"."""


class JobOutcome(Message, frozen=True):
    """QueueWorker -> StageEngine: a job reached a terminal status (done|failed|cancelled)."""

    job_id: str
    task_id: str
    stage: str
    visit: int
    role: str
    status: str
    attempts: int
    exit_code: int | None = None
    error: str = ""
    head_sha: str = ""
    """The branch head the job left behind (empty when it pushed nothing)."""
    cost_usd: float = 0.0
    """What the agent reported spending over every attempt of the job."""
    outcome: str = ""
    """How the last attempt's agent run ended (`conveyor.pipeline.AgentOutcome`)."""
    reason: str = ""
    """The last attempt's outcome for people ("rate limited (429)", "stalled", …)."""
    input_tokens: int = 0
    """Tokens the agent reported over every attempt of the job (input, output, cached)."""
    output_tokens: int = 0
    cached_tokens: int = 0


class RunHeartbeat(Message, frozen=True):
    """Launcher -> Reaper, core NATS, when due (new usage, or a fifth of the timeout on)."""

    job_id: str
    attempt: int
    launcher: str
    at: float
    usage: dict[str, Any] = msgspec.field(default_factory=dict)
    """Running token and USD totals of the agent so far (`input_tokens`, `output_tokens`,
    `cached_tokens`, `cost_usd`); empty when the agent reports none."""


class ReapJob(Message, frozen=True):
    """Reaper -> QueueWorker: finish a running attempt whose executor died.

    The QueueWorker applies it only if the job is still running that attempt
    (claim before act); `exit_code` is known for tier 2, else None.
    """

    job_id: str
    attempt: int
    tier: int
    exit_code: int | None = None
    reason: str = ""


class JobReaped(Message, frozen=True):
    """QueueWorker -> Reaper: a `ReapJob` was applied (the attempt was still running).

    Its fields are the applied `ReapJob`'s. A reap that lost the race to a late
    `JobFinished` or a requeue sends nothing, so the Reaper counts only the reaps
    that finished an attempt.
    """

    job_id: str
    attempt: int
    tier: int
    exit_code: int | None = None
    reason: str = ""


class LeaseHolder(Message, frozen=True):
    """Who asks for a lease: the task, the job run, and the process doing the work."""

    task_id: str
    job_id: str
    launcher: str
    host: str
    pid: int
    create_time: float
    boot_id: str
    attempt: int = 0
    """The job's attempt whose run holds it (0: unknown, from an older holder); once that
    run is finished, the lease is a release that was lost and is freed."""


class LeaseAcquire(Message, frozen=True):
    """Holder -> LeaseKeeper (request-reply): take lease `name` (re-entrant per task)."""

    name: str
    holder: LeaseHolder


class LeaseRenew(Message, frozen=True):
    """Holder -> LeaseKeeper (request-reply): prove the lease is still ours at `revision`.

    Sent right before a fenced side effect; a lost lease answers `granted: false`.
    """

    name: str
    task_id: str
    revision: int


class LeaseRelease(Message, frozen=True):
    """Holder or operator -> LeaseKeeper (request-reply): free lease `name` of `task_id`."""

    name: str
    task_id: str = ""
    force: bool = False
    revision: int = 0
    """The holder's fencing token; non-zero: release only that grant."""


class LeaseFreed(Message, frozen=True):
    """LeaseKeeper -> lease waiters (core NATS): `name` was freed; empty: the keeper is back."""

    name: str = ""


class LeaseReply(msgspec.Struct, frozen=True, kw_only=True):
    """Answer to every lease request: granted or not, the fencing revision, and why."""

    granted: bool
    revision: int = 0
    reason: str = ""


JobInput = JobRequested | JobsCancelled | JobStarted | JobFinished | ReapJob


# --- launch (JetStream work queue, CONVEYOR_LAUNCH) --------------------------------------


class LaunchOrder(Message, frozen=True):
    """QueueWorker -> Launcher: start attempt `attempt` of a job (fenced by KV run `<job>.<n>`)."""

    job_id: str
    attempt: int
    task_id: str
    repo: str
    stage: str
    role: str
    visit: int
    branch: str
    title: str
    description: str = ""
    brief: str = ""
    """The rework brief of the job's request, for the agent's prompt."""
    deploy: DeployCommits = msgspec.field(default_factory=DeployCommits)
    """The commits of the job's request (a production deploy runs at `deploy.sha`)."""


class KillJob(Message, frozen=True):
    """QueueWorker -> Launchers (core NATS): kill the process tree of a job."""

    job_id: str
    reason: str = ""


# --- notifications ------------------------------------------------------------------------


class StageChanged(Message, frozen=True):
    """StageEngine -> anyone: a task moved from `old` to `new` because of `cause`."""

    task_id: str
    repo: str
    old: str
    new: str
    cause: str
    revision: int
    at: float
    cost_usd: float = 0.0
    """What the agents spent on the stage visit that just ended (USD, then tokens)."""
    tokens: int = 0


class Alert(Message, frozen=True):
    """Any actor -> humans: something needs attention (`conveyor.alerts`)."""

    level: str
    text: str
    task_id: str = ""
    source: str = ""
    at: float = 0.0
    kind: str = ""
    """What happened, for machines: clients switch on it, never on `text` (docs/messages.md)."""


# --- events (JetStream, CONVEYOR_EVENTS; gateways and the Reconciler publish) -------------


class PolledItem(msgspec.Struct, frozen=True, kw_only=True):
    """A Plane work item as a poll saw it, with its state's name resolved.

    In-process only (Plane poller -> Reconciler), never on the wire.
    """

    project_id: str
    id: str
    sequence_id: int
    name: str
    description: str = ""
    state_id: str
    state_name: str
    updated_at: str = ""


class WorkItemEvent(Message, frozen=True):
    """Gateway or Reconciler -> Intake: a Plane work item was created, changed or deleted.

    Stored with `Nats-Msg-Id` `plane:<X-Plane-Delivery>` (webhooks) or
    `plane-poll:<work item>:<state>:<updated_at>` (Reconciler), so a resend is stored once.
    `state_name` is empty when the payload named the state only by id.
    """

    delivery_id: str
    action: str
    project_id: str
    work_item_id: str
    sequence_id: int = 0
    title: str = ""
    description: str = ""
    state_id: str = ""
    state_name: str = ""
    field: str = ""
    source: str = "webhook"


class CommitStatusEvent(Message, frozen=True):
    """Gateway -> Intake: Gitea reported a commit status (`Nats-Msg-Id` `gitea:<delivery>`)."""

    delivery_id: str
    repo: str
    """`owner/name` on Gitea."""
    sha: str
    state: str
    context: str = ""
    description: str = ""
    target_url: str = ""


class PullRequestEvent(Message, frozen=True):
    """Gateway -> Intake: a Gitea pull request changed; a merge is `closed` + `merged`."""

    delivery_id: str
    repo: str
    number: int
    action: str
    merged: bool = False
    head_branch: str = ""
    head_sha: str = ""
    base_branch: str = ""
    merge_commit_sha: str = ""


class PushEvent(Message, frozen=True):
    """Gateway -> Intake: a branch of a Gitea repository was pushed."""

    delivery_id: str
    repo: str
    branch: str
    before: str = ""
    after: str = ""


Event = WorkItemEvent | CommitStatusEvent | PullRequestEvent | PushEvent


class Tick(Message, frozen=True):
    """Timer -> actor: time passed (in-process only)."""

    now: float


BusMessage = (
    ReapJob
    | JobRequested
    | JobsCancelled
    | JobStarted
    | JobFinished
    | JobOutcome
    | LaunchOrder
    | KillJob
    | StageChanged
    | Alert
    | JobReaped
)

_encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    """Serialize a message or struct to JSON bytes."""
    return _encoder.encode(msg)


bus_decoder: msgspec.json.Decoder[BusMessage] = msgspec.json.Decoder(BusMessage)
command_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
