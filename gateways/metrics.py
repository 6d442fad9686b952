"""Prometheus metrics at `/metrics`, built from the status subjects and bus events.

Two sources, so it works whichever process serves it:

- gauges from the status snapshot the board also uses (`conveyor.status`, the queue,
  the lease keeper, the cost ledger): read at most once per `board.refresh_s`, each
  an O(stages) answer, never a scan of the stored tasks;
- counters and histograms from the bus as this process sees it from its start
  (stage changes, job messages, alerts), as Prometheus counters are: a restart
  resets them, which `rate()` and `increase()` expect.

Webhook deliveries are this gateway's own counts. Each gateway exposes its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bus.messages import (
    Alert,
    BusMessage,
    JobFinished,
    JobOutcome,
    JobReaped,
    JobRequested,
    StageChanged,
)
from conveyor.config import Config
from conveyor.pipeline import AGENT_ROLES, CANCELLED, CREATED, DONE

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, float("inf"))
TRACKED_TASKS = 50_000
"""Tasks whose last stage change is remembered (for durations); the oldest are forgotten."""


class Metrics:
    """The registry of one gateway; `observe` is called with every bus event (bus loop)."""

    def __init__(
        self, cfg: Config, snapshot: Callable[[], Mapping[str, Any]], webhooks: Callable[[], Any]
    ) -> None:
        # `*_created` series double the output and say only when this process started.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._order = {stage.name: i for i, stage in enumerate(cfg.pipeline.stages)}
        # A model is not on the wire; the configured one of the role is what ran.
        self._models = {role: _model(cfg, role) for role in AGENT_ROLES}
        self._entered: OrderedDict[str, float] = OrderedDict()
        self._since = 0.0
        reg = self.registry
        self.stage_seconds = Histogram(
            "conveyor_stage_duration_seconds",
            "Time a task spent in a stage, from entering it to leaving it",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=reg,
        )
        self.stage_changes = Counter(
            "conveyor_stage_changes", "Stage changes by the stage entered", ["stage"], registry=reg
        )
        self.reworks = Counter(
            "conveyor_reworks",
            "Tasks sent back to an earlier stage, by the stage left",
            ["stage"],
            registry=reg,
        )
        self.gate_failures = Counter(
            "conveyor_gate_failures",
            "Jobs requested again with a rework brief (a gate failed), by the stage that redoes it",
            ["stage"],
            registry=reg,
        )
        self.jobs_finished = Counter(
            "conveyor_jobs_finished",
            "Jobs that ended, by stage, role and status",
            ["stage", "role", "status"],
            registry=reg,
        )
        self.reaps = Counter("conveyor_reaps", "Attempts reaped, by tier", ["tier"], registry=reg)
        self.lease_waits = Counter(
            "conveyor_lease_waits", "Attempts deferred because a lease was busy", registry=reg
        )
        self.tokens = Counter(
            "conveyor_agent_tokens",
            "Tokens agents reported, by role, model and kind",
            ["role", "model", "kind"],
            registry=reg,
        )
        self.cost = Counter(
            "conveyor_agent_cost_usd",
            "USD agents reported, by role and model",
            ["role", "model"],
            registry=reg,
        )
        self.alerts = Counter(
            "conveyor_alerts", "Alerts raised, by kind and level", ["kind", "level"], registry=reg
        )
        reg.register(_StatusCollector(snapshot, webhooks))

    def started(self, at: float) -> None:
        """Alerts stamped before `at` were raised before this process counted (history)."""
        self._since = at

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)

    def observe(self, body: BusMessage) -> None:
        match body:
            case StageChanged():
                self._stage_changed(body)
            case JobRequested() if body.brief:
                self.gate_failures.labels(body.stage).inc()
            case JobOutcome():
                self._job_outcome(body)
            case JobReaped():
                self.reaps.labels(str(body.tier)).inc()
            case JobFinished() if body.defer_s > 0:
                self.lease_waits.inc()
            case Alert() if body.at >= self._since:
                self.alerts.labels(body.kind or "none", body.level).inc()
            case _:
                pass

    def _stage_changed(self, msg: StageChanged) -> None:
        self.stage_changes.labels(msg.new).inc()
        entered = self._entered.pop(msg.task_id, None)
        if entered is not None and msg.old:
            self.stage_seconds.labels(msg.old).observe(max(0.0, msg.at - entered))
        old, new = self._order.get(msg.old), self._order.get(msg.new)
        if old is not None and new is not None and new < old:
            self.reworks.labels(msg.old).inc()
        if msg.new not in (DONE, CANCELLED):
            self._entered[msg.task_id] = msg.at
            while len(self._entered) > TRACKED_TASKS:
                self._entered.popitem(last=False)

    def _job_outcome(self, msg: JobOutcome) -> None:
        self.jobs_finished.labels(msg.stage, msg.role, msg.status).inc()
        if msg.stage == CREATED:
            return
        model = self._models.get(msg.role, "")
        for kind, count in (
            ("input", msg.input_tokens),
            ("output", msg.output_tokens),
            ("cached", msg.cached_tokens),
        ):
            if count:
                self.tokens.labels(msg.role, model, kind).inc(count)
        if msg.cost_usd:
            self.cost.labels(msg.role, model).inc(msg.cost_usd)


class _StatusCollector(Collector):
    """Gauges from the latest status snapshot; webhook counters from this gateway."""

    def __init__(
        self, snapshot: Callable[[], Mapping[str, Any]], webhooks: Callable[[], Any]
    ) -> None:
        self._snapshot = snapshot
        self._webhooks = webhooks

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        overview = _dict(snap.get("overview"))
        yield _gauge(
            "conveyor_tasks", "Stored tasks by stage", "stage", _dict(overview.get("by_stage"))
        )
        yield _gauge(
            "conveyor_tasks_by_state",
            "Stored tasks by state (active includes escalated)",
            "state",
            _dict(overview.get("by_state")),
        )
        yield _gauge("conveyor_jobs", "Stored jobs by state", "state", _dict(overview.get("jobs")))
        healthy = int(bool(overview.get("healthy")))
        yield GaugeMetricFamily("conveyor_up", "1 when the overview says healthy", value=healthy)
        actors = GaugeMetricFamily(
            "conveyor_actor_healthy", "Each actor's health", labels=["actor"]
        )
        for name, info in sorted(_dict(overview.get("actors")).items()):
            actors.add_metric([name], int(bool(_dict(info).get("healthy"))))
        yield actors
        queue = _dict(snap.get("queue"))
        yield GaugeMetricFamily(
            "conveyor_jobs_running", "Jobs running now", value=len(queue.get("running") or [])
        )
        leases = _dict(snap.get("leases")).get("leases") or []
        yield GaugeMetricFamily("conveyor_leases_held", "Leases held now", value=len(leases))
        usage = _dict(snap.get("usage"))
        ledger = GaugeMetricFamily(
            "conveyor_ledger_cost_usd", "The cost ledger's USD by role", labels=["role"]
        )
        for role, spent in sorted(_dict(usage.get("by_role")).items()):
            ledger.add_metric([role], float(_dict(spent).get("cost_usd", 0.0)))
        yield ledger
        yield from self._deliveries()

    def _deliveries(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "conveyor_webhook_deliveries",
            "Webhooks this gateway answered, by source and result",
            labels=["source", "result"],
        )
        sources = _dict(_dict(self._webhooks()).get("sources"))
        for source, counts in sorted(sources.items()):
            for result, count in sorted(_dict(counts).items()):
                if isinstance(count, dict):
                    for status, n in sorted(count.items()):
                        family.add_metric([source, f"{result}_{status}"], float(n))
                else:
                    family.add_metric([source, result], float(count))
        yield family


def _model(cfg: Config, role: str) -> str:
    agent = cfg.agents.for_role(role)
    return agent.model or agent.cli


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) and value.get("ok") is not False else {}


def _gauge(name: str, doc: str, label: str, values: Mapping[str, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], float(value))
    return family
