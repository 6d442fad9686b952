"""The wiring table: every actor a node can run, how it starts and what feeds it.

One entry per actor says how it starts (a factory over a small `Context`), the KV
bucket it owns, its durable consumers and core subscriptions, whether it gets
ticks, and the status query it answers on `conveyor.status.<name>`. The node
starts its parts by walking `TABLE` in order; tests start one entry with
`start_actor` on a real server, with stand-ins in `Context.refs` for the actors
it talks to.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pykka

from actors import janitor_audit
from actors.hosts import attempt_owner
from actors.hot_jobs import HotJobs
from actors.intake import IntakeStatus
from actors.intake_policy import CardState
from actors.janitor import Janitor, JanitorStatus
from actors.janitor import stores as janitor_stores
from actors.launch_slots import Slots, reserving
from actors.launcher import Launcher, LauncherStatus
from actors.launcher_policy import Run
from actors.lease_keeper import LeaseKeeper, LeaseStatus, run_finished, run_in_progress
from actors.lease_policy import Lease, merged_stages
from actors.monitor import MonitorStatus, PostDeployMonitor
from actors.monitor_commit import LogCommitter
from actors.monitor_policy import Watch
from actors.queue_policy import Job
from actors.queue_worker import QueueStatus, QueueWorker
from actors.reaper import Reaper, ReaperStatus
from actors.reconciler import ReconcilerStatus
from actors.stage_engine import StageEngine, StatusQuery
from actors.stage_policy import Task
from actors.task_summary import GetTask
from actors.usage_policy import Ceilings
from bus import subjects
from bus.bridge import Bus, Delivery, Store
from bus.effects import Effect, Ledger
from bus.messages import (
    Alert,
    Annotate,
    BusMessage,
    Event,
    JobInput,
    JobOutcome,
    JobReaped,
    KillJob,
    LaunchOrder,
    LeaseRelease,
    RunHeartbeat,
    StageChanged,
)
from conveyor.app import wiring_tracker
from conveyor.app.supervisor import Handle
from conveyor.clock import Clock
from conveyor.config import Config
from conveyor.errors import ConveyorError
from conveyor.layout import Layout
from gateways.forge import Forge
from gateways.plane import PlaneTracker
from gateways.telegram import Notifier, NotifierStatus, Telegram

CONTROL = "control"
LAUNCHER = "launcher"

ASK_TIMEOUT_S = 10.0

Ref = pykka.ActorRef[Any]


@dataclass
class Context:
    """What factories start actors from; `refs` holds the actors started so far."""

    cfg: Config
    bus: Bus
    clock: Clock
    forge: Forge | None = None
    refs: dict[str, Ref] = field(default_factory=dict)
    plane: PlaneTracker | None = None
    """The Plane client when the tracker is Plane (set by the tracker entry)."""
    slots: Slots | None = None
    """The launcher's free slots, shared with its consumer (set by the launcher entry)."""
    drain: threading.Event = field(default_factory=threading.Event)
    """Set: the launcher takes no new order (`conveyor drain`); outlives its restarts."""
    closers: list[Callable[[], None]] = field(default_factory=list)
    hot_jobs: HotJobs = field(default_factory=HotJobs)
    """The QueueWorker's hot jobs, for the LeaseKeeper beside it."""

    @property
    def layout(self) -> Layout:
        return Layout(self.cfg.data_path)

    def ref(self, name: str) -> Ref:
        return self.refs[name]

    def need_forge(self) -> Forge:
        if self.forge is None:
            raise ConveyorError("this actor needs a forge in its context")
        return self.forge

    def ledger(self, owner: str) -> Ledger:
        return Ledger(self.bus.store(subjects.BUCKET_EFFECTS, Effect), self.clock, owner)


@dataclass(frozen=True)
class Feed:
    """A durable JetStream consumer handing its deliveries to the actor."""

    stream: str
    durable: str
    filters: tuple[str, ...]
    message_type: Any
    """What the deliveries decode to (a message class or a union of them)."""
    reserves_slot: bool = False
    """Reserve a launch slot before handing over, and pull only while one is free."""


@dataclass(frozen=True)
class CoreFeed:
    """A core NATS subscription (no delivery guarantee) handing messages to the actor."""

    subject: str
    message_type: Any


def _always(_cfg: Config) -> bool:
    return True


@dataclass(frozen=True)
class ActorSpec:
    """One actor of the table."""

    name: str
    part: str
    start: Callable[[Context, Store[Any] | None], Ref]
    """Starts the actor; gets the store over `bucket` (None without one)."""
    bucket: str = ""
    value_type: type | None = None
    feeds: tuple[Feed, ...] = ()
    core_feeds: tuple[CoreFeed, ...] = ()
    ticks: bool = False
    status: Callable[[], Any] | None = None
    """The ask message its status endpoint sends (None: no status endpoint)."""
    enabled: Callable[[Config], bool] = _always

    @property
    def status_subject(self) -> str:
        return subjects.status_actor(self.name)


# --- factories ---------------------------------------------------------------------------


def _owned(store: Store[Any] | None) -> Store[Any]:
    if store is None:
        raise ConveyorError("this actor's entry names no bucket")
    return store


def _stage_engine(ctx: Context, store: Store[Any] | None) -> Ref:
    store = _owned(store)
    return StageEngine.start(ctx.bus, store, ctx.need_forge(), ctx.clock, ctx.cfg)


def _queue_worker(ctx: Context, store: Store[Any] | None) -> Ref:
    cfg, pipeline = ctx.cfg, ctx.cfg.pipeline
    ceilings = Ceilings(
        task_usd=pipeline.max_task_cost_usd,
        task_tokens=pipeline.max_task_tokens,
        repo_usd_per_day=cfg.queue.max_repo_usd_per_day,
        repo_tokens_per_day=cfg.queue.max_repo_tokens_per_day,
    )
    protected = frozenset(r.name for r in cfg.repos if r.protected)
    kw = {"lease_retry_s": cfg.leases.busy_retry_s, "protected": protected, "hot": ctx.hot_jobs}
    return QueueWorker.start(ctx.bus, _owned(store), ctx.clock, cfg.queue, ceilings, **kw)


def _reaper(ctx: Context, store: Store[Any] | None) -> Ref:
    store = _owned(store)
    hosts = {"host": ctx.cfg.launcher.host_id, "silence_s": ctx.cfg.launcher.host_silence_s}
    return Reaper.start(ctx.bus, ctx.ref("queue_worker"), store, ctx.clock, ctx.cfg.reaper, **hosts)


def _lease_keeper(ctx: Context, store: Store[Any] | None) -> Ref:
    store = _owned(store)
    kept = merged_stages([(s.name, s.merge) for s in ctx.cfg.pipeline.stages])
    runs = ctx.bus.store(subjects.BUCKET_RUNS, Run)
    finished, in_progress = run_finished(runs), run_in_progress(runs)
    return LeaseKeeper.start(
        ctx.bus,
        store,
        ctx.clock,
        ctx.cfg.leases,
        kept=kept,
        finished=finished,
        in_progress=in_progress,
        current=attempt_owner(ctx.bus.store(subjects.BUCKET_JOBS, Job), ctx.hot_jobs),
        host=ctx.cfg.launcher.host_id,
        silence_s=ctx.cfg.launcher.host_silence_s,
    )


def _monitor(ctx: Context, store: Store[Any] | None) -> Ref:
    store = _owned(store)
    engine = ctx.ref("stage_engine")

    def _record(task_id: str, cause: str) -> None:
        key = f"monitor:{hashlib.sha256(cause.encode()).hexdigest()[:16]}"
        engine.tell(Annotate(id=task_id, cause=cause, key=key))

    def _branch_of(task_id: str) -> str | None:
        summary: Any = engine.ask(GetTask(task_id), timeout=ASK_TIMEOUT_S)
        return summary.branch if summary is not None else None

    committer = LogCommitter(ctx.forge, _branch_of) if ctx.forge is not None else None
    return PostDeployMonitor.start(
        ctx.bus,
        store,
        ctx.ledger("monitor"),
        ctx.clock,
        ctx.cfg,
        data_dir=ctx.layout.root,
        record=_record,
        committer=committer,
    )


def _notifier(ctx: Context, _store: Store[Any] | None) -> Ref:
    telegram = Telegram(ctx.cfg.telegram)
    ctx.closers.append(telegram.close)
    return Notifier.start(telegram.send, ctx.ledger("notifier"), ctx.cfg.telegram)


_STAGES = (CoreFeed(subjects.STAGE_ALL, StageChanged),)


def _janitor(ctx: Context, _store: Store[Any] | None) -> Ref:
    s, worker, forge = janitor_stores(ctx.bus), ctx.ref("queue_worker"), ctx.forge
    return Janitor.start(s, ctx.bus, worker, ctx.clock, ctx.cfg, forge=forge)


def _launcher(ctx: Context, store: Store[Any] | None) -> Ref:
    store = _owned(store)
    slots = Slots(ctx.cfg.launcher.slots, ctx.drain)
    ctx.slots = slots
    name = ctx.cfg.launcher.identity()
    owns = attempt_owner(ctx.bus.store(subjects.BUCKET_JOBS, Job))
    return Launcher.start(
        ctx.bus, store, ctx.ledger(name), ctx.need_forge(), ctx.clock, ctx.cfg, slots, owns
    )


# --- the table ---------------------------------------------------------------------------

_STAGES_AND_ALERTS = (subjects.STAGE_ALL, subjects.ALERTS)

TABLE: tuple[ActorSpec, ...] = (
    ActorSpec(
        "stage_engine",
        CONTROL,
        _stage_engine,
        bucket=subjects.BUCKET_TASKS,
        value_type=Task,
        feeds=(
            Feed(
                subjects.STREAM_JOBS,
                subjects.CONSUMER_STAGE_ENGINE,
                (subjects.JOBS_OUTCOME,),
                JobOutcome,
            ),
        ),
        ticks=True,
        status=lambda: StatusQuery(kind="actor"),
    ),
    ActorSpec(
        "queue_worker",
        CONTROL,
        _queue_worker,
        bucket=subjects.BUCKET_JOBS,
        value_type=Job,
        feeds=(
            Feed(
                subjects.STREAM_JOBS,
                subjects.CONSUMER_QUEUE_WORKER,
                (
                    subjects.JOBS_REQUESTED,
                    subjects.JOBS_CANCELLED,
                    subjects.JOBS_STARTED,
                    subjects.JOBS_FINISHED,
                    subjects.JOBS_REAP,
                ),
                JobInput,
            ),
        ),
        # The launchers' heartbeats carry live runs' running totals (spending ceilings).
        core_feeds=(CoreFeed(subjects.HEARTBEATS, RunHeartbeat),),
        ticks=True,
        status=QueueStatus,
    ),
    ActorSpec(
        "reaper",
        CONTROL,
        _reaper,
        bucket=subjects.BUCKET_RUNS,
        value_type=Run,
        # Applied reaps come back from the QueueWorker: only those are counted.
        core_feeds=(
            CoreFeed(subjects.HEARTBEATS, RunHeartbeat),
            CoreFeed(subjects.JOBS_REAPED, JobReaped),
        ),
        ticks=True,
        status=ReaperStatus,
    ),
    ActorSpec(
        "lease_keeper",
        CONTROL,
        _lease_keeper,
        bucket=subjects.BUCKET_LEASES,
        value_type=Lease,
        feeds=(
            Feed(
                subjects.STREAM_NOTIFY,
                subjects.CONSUMER_LEASE_KEEPER,
                _STAGES_AND_ALERTS,
                BusMessage,
            ),
            Feed(
                subjects.STREAM_LEASES,
                subjects.CONSUMER_LEASE_KEEPER,
                (subjects.LEASE_RELEASES,),
                LeaseRelease,
            ),
        ),
        ticks=True,
        status=LeaseStatus,
    ),
    ActorSpec(
        "tracker_sync",
        CONTROL,
        wiring_tracker.tracker_sync,
        feeds=(
            Feed(subjects.STREAM_NOTIFY, subjects.CONSUMER_TRACKER, _STAGES_AND_ALERTS, BusMessage),
        ),
    ),
    ActorSpec(
        "intake",
        CONTROL,
        wiring_tracker.intake,
        bucket=subjects.BUCKET_CARDS,
        value_type=CardState,
        feeds=(
            Feed(subjects.STREAM_EVENTS, subjects.CONSUMER_INTAKE, (subjects.EVENTS_ALL,), Event),
        ),
        status=IntakeStatus,
    ),
    ActorSpec(
        "reconciler", CONTROL, wiring_tracker.reconciler, ticks=True, status=ReconcilerStatus
    ),
    ActorSpec(
        "monitor",
        CONTROL,
        _monitor,
        bucket=subjects.BUCKET_MONITOR,
        value_type=Watch,
        feeds=(
            Feed(
                subjects.STREAM_NOTIFY,
                subjects.CONSUMER_MONITOR,
                (subjects.STAGE_ALL,),
                BusMessage,
            ),
        ),
        ticks=True,
        status=MonitorStatus,
    ),
    ActorSpec(
        "notifier",
        CONTROL,
        _notifier,
        feeds=(
            Feed(subjects.STREAM_NOTIFY, subjects.CONSUMER_NOTIFIER, (subjects.ALERTS,), Alert),
        ),
        status=NotifierStatus,
        enabled=lambda cfg: cfg.telegram.enabled,
    ),
    # A task's StageChanged to done: its branch and worktree go once it is settled.
    ActorSpec("janitor", CONTROL, _janitor, core_feeds=_STAGES, ticks=True, status=JanitorStatus),
    ActorSpec(
        "launcher",
        LAUNCHER,
        _launcher,
        bucket=subjects.BUCKET_RUNS,
        value_type=Run,
        feeds=(
            Feed(
                subjects.STREAM_LAUNCH,
                subjects.CONSUMER_LAUNCHERS,
                (subjects.LAUNCH_ORDERS,),
                LaunchOrder,
                reserves_slot=True,
            ),
        ),
        core_feeds=(CoreFeed(subjects.LAUNCH_KILL, KillJob),),
        ticks=True,
        status=LauncherStatus,
    ),
)

SPECS: dict[str, ActorSpec] = {spec.name: spec for spec in TABLE}

AUDITED: tuple[tuple[str, type[msgspec.Struct]], ...] = ((subjects.BUCKET_EFFECTS, Effect),)
"""Buckets no actor loads whole (effects are read by key). The control part reads
them once at start, so a record there that does not decode is reported then
(`bus.kv.quarantine`), not first when a step needs it."""


def audit(ctx: Context) -> None:
    """Read the `AUDITED` buckets' writes since the last audit: undecodable ones are reported."""
    for bucket, value_type in AUDITED:
        janitor_audit.audit_since(ctx.bus, bucket, value_type)


def specs_of(part: str, cfg: Config) -> Iterator[ActorSpec]:
    """The entries a process running `part` starts, in start order."""
    return (spec for spec in TABLE if spec.part == part and spec.enabled(cfg))


def incarnate(spec: ActorSpec, ctx: Context) -> Ref:
    """Start one incarnation of an entry's actor over its store (no consumers)."""
    store: Store[Any] | None = None
    if spec.value_type is not None:
        store = ctx.bus.store(spec.bucket, spec.value_type)
    return spec.start(ctx, store)


def start_actor(spec: ActorSpec, ctx: Context) -> Handle:
    """Start one entry: the actor over its store, then its consumers and subscriptions.

    The consumers, the ticker and the other actors hold the returned `Handle`, so a
    restart (`incarnate` again, `Handle.bind`) reaches them all without rewiring.
    """
    handle = Handle(spec.name, incarnate(spec, ctx))
    ctx.refs[spec.name] = handle
    for feed in spec.feeds:
        handler: Callable[[Delivery[Any]], None] = handle.tell
        capacity: Callable[[], int] | None = None
        if feed.reserves_slot:
            handler, capacity = _slot_reserving(ctx, handle)
        ctx.bus.consume(
            feed.stream,
            feed.durable,
            list(feed.filters),
            msgspec.json.Decoder(feed.message_type),
            handler,
            capacity=capacity,
        )
    for core in spec.core_feeds:
        ctx.bus.subscribe_core(core.subject, msgspec.json.Decoder(core.message_type), handle.tell)
    return handle


def _slot_reserving(
    ctx: Context, handle: Handle
) -> tuple[Callable[[Delivery[Any]], None], Callable[[], int]]:
    first = ctx.slots
    if first is None:
        raise ConveyorError("a slot-reserving consumer needs the launcher entry's slots")
    # Looked up on each use: a restarted launcher counts its slots afresh.
    return reserving(lambda: ctx.slots or first, handle.tell, handle.is_alive)


def statuses(ctx: Context, part: str) -> dict[str, tuple[Ref, Any]]:
    """Each started actor of `part` with a status endpoint: its ref and ask message."""
    return {
        spec.name: (ctx.refs[spec.name], spec.status())
        for spec in TABLE
        if spec.part == part and spec.status is not None and spec.name in ctx.refs
    }
