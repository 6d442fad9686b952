"""Every NATS subject, stream, consumer and bucket name, and which message goes where.

No other module spells `conveyor.`; builders reject tokens that could widen a
subscription (dots, wildcards, whitespace).
"""

from __future__ import annotations

import re

from bus.messages import (
    Alert,
    CommitStatusEvent,
    JobFinished,
    JobOutcome,
    JobReaped,
    JobRequested,
    JobsCancelled,
    JobStarted,
    KillJob,
    LaunchOrder,
    Message,
    PullRequestEvent,
    PushEvent,
    ReapJob,
    RunHeartbeat,
    StageChanged,
    WorkItemEvent,
)
from conveyor.errors import InvalidField

ROOT = "conveyor"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def token(value: str, field: str = "token") -> str:
    """Return `value` if it is safe as one subject token."""
    if not _TOKEN.fullmatch(value):
        raise InvalidField(field, "must be letters, digits, '-' or '_' (no dots or wildcards)")
    return value


# --- commands (core request-reply, answered by the StageEngine) -------------------------
CMD_SUBMIT = f"{ROOT}.cmd.submit"
"""Create a task; reply {ok, task}."""
CMD_APPROVE = f"{ROOT}.cmd.approve"
"""Approve analysis of a task."""
CMD_REJECT = f"{ROOT}.cmd.reject"
"""Reject analysis of a task (rework)."""
CMD_CONFIRM_DEPLOY = f"{ROOT}.cmd.confirm-deploy"
"""Confirm a protected repository's production deploy."""
CMD_CANCEL = f"{ROOT}.cmd.cancel"
"""Cancel a task and its jobs."""
CMD_RETRY = f"{ROOT}.cmd.retry"
"""Reset a task's retry budget and re-run its stage."""

COMMANDS = {
    "submit": CMD_SUBMIT,
    "approve": CMD_APPROVE,
    "reject": CMD_REJECT,
    "confirm-deploy": CMD_CONFIRM_DEPLOY,
    "cancel": CMD_CANCEL,
    "retry": CMD_RETRY,
}

# --- leases (core request-reply, answered by the LeaseKeeper) ---------------------------
LEASE_ACQUIRE = f"{ROOT}.leases.acquire"
"""Take a lease (LeaseAcquire -> LeaseReply)."""
LEASE_RENEW = f"{ROOT}.leases.renew"
"""Check-and-touch a held lease before a fenced effect (LeaseRenew -> LeaseReply)."""
LEASE_RELEASE = f"{ROOT}.leases.release"
"""Free a lease, holder-aware unless forced by an operator (LeaseRelease -> LeaseReply)."""
LEASE_FREED = f"{ROOT}.leases.freed"
"""LeaseKeeper -> waiting holders, core NATS: LeaseFreed (a lease was freed, or the keeper
is back); a refused request retries on it instead of on a fixed poll."""
LEASE_RELEASES = f"{ROOT}.lease_releases"
"""Holder -> LeaseKeeper, JetStream (CONVEYOR_LEASES): a LeaseRelease the keeper did not
answer, kept until it does (msg id `release:<name>:<revision>`)."""

# --- status (core request-reply, JSON) ---------------------------------------------------
STATUS = f"{ROOT}.status"
"""Overview: counts, actors and their health."""
STATUS_TASKS = f"{ROOT}.status.tasks"
"""Every task, one row each."""
STATUS_TASK_PREFIX = f"{ROOT}.status.task"
STATUS_TASK_WILDCARD = f"{STATUS_TASK_PREFIX}.*"
STATUS_QUEUE = f"{ROOT}.status.queue"
"""Job counts by status and the running jobs."""
STATUS_USAGE = f"{ROOT}.status.usage"
"""The cost ledger: tokens and USD per repository and role, today's, per delivered item."""


def status_task(task_id: str) -> str:
    """Subject answering one task's record and history."""
    return f"{STATUS_TASK_PREFIX}.{token(task_id, 'id')}"


def status_actor(actor: str) -> str:
    """Subject answering one actor's status."""
    return f"{ROOT}.status.{token(actor, 'actor')}"


# --- jobs (JetStream stream CONVEYOR_JOBS) -----------------------------------------------
JOBS_REQUESTED = f"{ROOT}.jobs.requested"
"""StageEngine -> QueueWorker: JobRequested; the QueueWorker dedupes by job id."""
JOBS_CANCELLED = f"{ROOT}.jobs.cancelled"
"""StageEngine -> QueueWorker: JobsCancelled."""
JOBS_STARTED = f"{ROOT}.jobs.started"
"""Launcher -> QueueWorker: JobStarted."""
JOBS_FINISHED = f"{ROOT}.jobs.finished"
"""Launcher -> QueueWorker: JobFinished."""
JOBS_OUTCOME = f"{ROOT}.jobs.outcome"
"""QueueWorker -> StageEngine: JobOutcome."""
JOBS_REAP = f"{ROOT}.jobs.reap"
"""Reaper -> QueueWorker: ReapJob (msg id `reap:<job>:<attempt>`)."""
JOBS_REAPED = f"{ROOT}.jobs.reaped"
"""QueueWorker -> Reaper (a core subscription): JobReaped, a reap that was applied."""
JOBS_ALL = f"{ROOT}.jobs.>"

HEARTBEATS = f"{ROOT}.heartbeats.runs"
"""Launchers -> Reaper, core NATS: RunHeartbeat for every live run, when due."""
HOSTS_HEARTBEAT = f"{ROOT}.heartbeats.hosts"
"""Launchers -> Reaper, LeaseKeeper, core NATS: HostHeartbeat, each fifth of the host silence."""
HOSTS_PREFIX = f"{ROOT}.hosts"


def host_liveness(host: str) -> str:
    """Request-reply, answered by the launchers of `host`: LivenessQuery -> LivenessAnswer."""
    return f"{HOSTS_PREFIX}.{host_token(host)}.liveness"


def host_token(host: str) -> str:
    """`host` as one subject token: a dotted host name keeps its letters, dots become '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", host) or "_"


LAUNCHERS_PREFIX = f"{ROOT}.launchers"


def launcher_drain(name: str) -> str:
    """Request-reply, answered by the launcher `name`: {"drain": bool} -> its drain state."""
    return f"{LAUNCHERS_PREFIX}.{host_token(name)}.drain"


# --- launch (JetStream work-queue stream CONVEYOR_LAUNCH) --------------------------------
LAUNCH_ORDERS = f"{ROOT}.launch.orders"
"""QueueWorker -> Launchers: LaunchOrder; a launch is fenced by the run key `<job>.<attempt>`."""
LAUNCH_KILL = f"{ROOT}.launch.kill"
"""QueueWorker -> Launchers, core NATS: KillJob."""

# --- notifications (JetStream stream CONVEYOR_NOTIFY, also seen by core subscribers) ------
STAGE_PREFIX = f"{ROOT}.stage"
STAGE_ALL = f"{STAGE_PREFIX}.>"
ALERTS = f"{ROOT}.alerts"
"""Every notification for humans."""


def stage_changed(task_id: str) -> str:
    """Subject of a task's stage changes."""
    return f"{STAGE_PREFIX}.{token(task_id, 'id')}"


# --- events (JetStream stream CONVEYOR_EVENTS; gateways publish, Intake consumes) ------
EVENTS_ALL = f"{ROOT}.events.>"
EVENTS_PLANE_WORK_ITEM = f"{ROOT}.events.plane.work_item"
"""Gateway/Reconciler -> Intake: WorkItemEvent (msg id `plane:<delivery>`)."""
EVENTS_GITEA_STATUS = f"{ROOT}.events.gitea.status"
"""Gateway -> Intake: CommitStatusEvent (msg id `gitea:<delivery>`)."""
EVENTS_GITEA_PULL_REQUEST = f"{ROOT}.events.gitea.pull_request"
"""Gateway -> Intake: PullRequestEvent (msg id `gitea:<delivery>`)."""
EVENTS_GITEA_PUSH = f"{ROOT}.events.gitea.push"
"""Gateway -> Intake: PushEvent (msg id `gitea:<delivery>`)."""

WEBHOOKS_GITEA = f"{ROOT}.webhooks.gitea"
"""Anyone -> gateway, core NATS: a raw Gitea webhook body, the HTTP headers as NATS headers."""
WEBHOOKS_PLANE = f"{ROOT}.webhooks.plane"
"""Anyone -> gateway, core NATS: a raw Plane webhook body, the HTTP headers as NATS headers."""

# --- streams, consumers, buckets ----------------------------------------------------------
STREAM_JOBS = "CONVEYOR_JOBS"
STREAM_LAUNCH = "CONVEYOR_LAUNCH"
STREAM_NOTIFY = "CONVEYOR_NOTIFY"
STREAM_EVENTS = "CONVEYOR_EVENTS"
STREAM_LEASES = "CONVEYOR_LEASES"

CONSUMER_QUEUE_WORKER = "queue_worker"
CONSUMER_STAGE_ENGINE = "stage_engine"
CONSUMER_LAUNCHERS = "launchers"
CONSUMER_TRACKER = "tracker"

BUCKET_TASKS = "conveyor_tasks"
BUCKET_JOBS = "conveyor_jobs"
BUCKET_RUNS = "conveyor_runs"
BUCKET_EFFECTS = "conveyor_effects"
BUCKET_LEASES = "conveyor_leases"
BUCKET_MONITOR = "conveyor_monitor"
"""PostDeployMonitor's watches, one per task id; written only by the monitor (CAS)."""
BUCKET_CARDS = "conveyor_cards"
"""Intake's last acted-on state of each Plane card, by work item id; written only by Intake."""
BUCKET_INDEX = "conveyor_index"
"""Owners' checkpoints of what is hot and what settled, so start-up skips settled records."""
CONSUMER_LEASE_KEEPER = "lease_keeper"
CONSUMER_INTAKE = "intake"
CONSUMER_NOTIFIER = "notifier"
CONSUMER_MONITOR = "monitor"
"""PostDeployMonitor on CONVEYOR_NOTIFY, `conveyor.stage.>`: a `done` starts a watch."""

SERVICE_NAME = "conveyor"

# --- routing: the subject of each message type ---------------------------------------------
ROUTES: dict[type[Message], str] = {
    JobRequested: JOBS_REQUESTED,
    JobsCancelled: JOBS_CANCELLED,
    JobStarted: JOBS_STARTED,
    JobFinished: JOBS_FINISHED,
    JobOutcome: JOBS_OUTCOME,
    ReapJob: JOBS_REAP,
    JobReaped: JOBS_REAPED,
    RunHeartbeat: HEARTBEATS,
    LaunchOrder: LAUNCH_ORDERS,
    KillJob: LAUNCH_KILL,
    Alert: ALERTS,
    WorkItemEvent: EVENTS_PLANE_WORK_ITEM,
    CommitStatusEvent: EVENTS_GITEA_STATUS,
    PullRequestEvent: EVENTS_GITEA_PULL_REQUEST,
    PushEvent: EVENTS_GITEA_PUSH,
}

CORE = frozenset({KillJob, RunHeartbeat})
"""Types published on core NATS: a dead launcher's processes die with their wrapper's
timeout, and a heartbeat is worth nothing once late."""


def subject_for(msg: Message) -> str:
    """The subject a message is published on."""
    if isinstance(msg, StageChanged):
        return stage_changed(msg.task_id)
    try:
        return ROUTES[type(msg)]
    except KeyError:
        raise TypeError(f"no subject for {type(msg).__name__}") from None


def is_durable(msg: Message) -> bool:
    """Whether `msg` goes to JetStream (stored, deduplicated) rather than core NATS."""
    return type(msg) not in CORE
