"""`/metrics` from bus events and a status snapshot, read back in the exposition format;
the `[board]` config and its access rule."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.messages import Alert, JobFinished, JobOutcome, JobReaped, JobRequested, StageChanged
from conveyor import config as config_mod
from conveyor.config_board import BoardConfig, is_loopback
from conveyor.errors import ConfigError
from gateways.metrics import Metrics

pytestmark = pytest.mark.timeout(30)

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def parsed(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def get(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def moved(task: str, old: str, new: str, at: float) -> StageChanged:
    return StageChanged(task_id=task, repo="demo", old=old, new=new, cause="c", revision=1, at=at)


def make(snapshot: dict[str, Any] | None = None, webhooks: dict[str, Any] | None = None) -> Metrics:
    cfg = config_mod.load(
        env={}, overrides={"agents": {"developer": {"cli": "claude", "model": "sonnet-x"}}}
    )
    return Metrics(cfg, lambda: snapshot or {}, lambda: webhooks or {})


def test_stage_durations_and_reworks_by_stage() -> None:
    metrics = make()
    for msg in (
        moved("T-1", "", "created", 100.0),
        moved("T-1", "created", "development", 101.0),
        moved("T-1", "development", "review", 131.0),
        moved("T-1", "review", "development", 140.0),  # review sent it back
        moved("T-2", "review", "testing", 150.0),  # entered review before we started: no duration
    ):
        metrics.observe(msg)
    found = parsed(metrics)
    assert get(found, "conveyor_stage_duration_seconds_sum", stage="development") == 30.0
    assert get(found, "conveyor_stage_duration_seconds_count", stage="review") == 1
    assert get(found, "conveyor_stage_duration_seconds_bucket", stage="review", le="15.0") == 1
    assert get(found, "conveyor_reworks_total", stage="review") == 1
    assert get(found, "conveyor_reworks_total", stage="development") is None
    assert get(found, "conveyor_stage_changes_total", stage="development") == 2


def test_jobs_gates_reaps_lease_waits_tokens_and_alerts() -> None:
    metrics = make()
    metrics.started(1000.0)
    request = dict(task_id="T-1", stage="development", visit=2, role="developer", repo="demo")
    for msg in (
        JobRequested(
            job_id="T-1.development.2.work", branch="b", title="t", brief="fix", **request
        ),
        JobRequested(job_id="T-1.development.1.work", branch="b", title="t", **request),
        JobOutcome(
            job_id="T-1.development.2.work",
            task_id="T-1",
            stage="development",
            visit=2,
            role="developer",
            status="done",
            attempts=1,
            cost_usd=0.25,
            input_tokens=100,
            output_tokens=20,
        ),
        JobReaped(job_id="j", attempt=1, tier=2),
        JobFinished(job_id="j", attempt=1, run_id="r", exit_code=None, defer_s=5.0),
        JobFinished(job_id="j", attempt=1, run_id="r", exit_code=0),
        Alert(level="warning", text="x", at=1001.0, kind="job_failed"),
        Alert(level="warning", text="old", at=999.0, kind="job_failed"),  # replayed history
    ):
        metrics.observe(msg)
    found = parsed(metrics)
    assert get(found, "conveyor_gate_failures_total", stage="development") == 1
    labels = {"stage": "development", "role": "developer", "status": "done"}
    assert get(found, "conveyor_jobs_finished_total", **labels) == 1
    assert get(found, "conveyor_reaps_total", tier="2") == 1
    assert get(found, "conveyor_lease_waits_total") == 1
    tokens = {"role": "developer", "model": "sonnet-x"}
    assert get(found, "conveyor_agent_tokens_total", kind="input", **tokens) == 100
    assert get(found, "conveyor_agent_tokens_total", kind="output", **tokens) == 20
    assert get(found, "conveyor_agent_cost_usd_total", **tokens) == 0.25
    assert get(found, "conveyor_alerts_total", kind="job_failed", level="warning") == 1


def test_gauges_come_from_the_snapshot_and_webhooks_from_the_gateway() -> None:
    snapshot = {
        "overview": {
            "healthy": True,
            "by_stage": {"analysis": 3, "done": 7},
            "by_state": {"active": 3, "finished": 7, "escalated": 1},
            "jobs": {"done": 9, "running": 1},
            "actors": {"stage_engine": {"healthy": True}, "reaper": {"healthy": False}},
        },
        "queue": {"running": [{"id": "j"}]},
        "leases": {"leases": [{"name": "merge.demo"}]},
        "usage": {"by_role": {"developer": {"cost_usd": 1.5}}},
    }
    webhooks = {"sources": {"gitea": {"accepted": 4, "rejected": {"401": 2}}}}
    found = parsed(make(snapshot, webhooks))
    assert get(found, "conveyor_tasks", stage="done") == 7
    assert get(found, "conveyor_tasks_by_state", state="escalated") == 1
    assert get(found, "conveyor_jobs", state="running") == 1
    assert get(found, "conveyor_up") == 1
    assert get(found, "conveyor_actor_healthy", actor="reaper") == 0
    assert get(found, "conveyor_jobs_running") == 1
    assert get(found, "conveyor_leases_held") == 1
    assert get(found, "conveyor_ledger_cost_usd", role="developer") == 1.5
    deliveries = "conveyor_webhook_deliveries_total"
    assert get(found, deliveries, source="gitea", result="accepted") == 4
    assert get(found, deliveries, source="gitea", result="rejected_401") == 2
    # A control that does not answer: no task gauges, and down.
    down = parsed(make({"overview": {"ok": False, "error": "no answer"}}))
    assert get(down, "conveyor_up") == 0
    assert get(down, "conveyor_tasks", stage="done") is None


def test_board_token_and_its_file(tmp_path: Path) -> None:
    assert BoardConfig(token="t").secret() == "t"
    secret = tmp_path / "token"
    secret.write_text("from-file\nignored")
    assert BoardConfig(token_file=str(secret)).secret() == "from-file"
    with pytest.raises(ConfigError, match=r"board\.token_file: cannot read"):
        BoardConfig(token_file=str(tmp_path / "missing")).secret()
    with pytest.raises(ConfigError, match=r"board\.refresh_s"):
        config_mod.load(env={}, overrides={"board": {"refresh_s": 0}})
    env = {"CONVEYOR_BOARD__TOKEN": "abc"}
    assert config_mod.load(env=env).board.token == "abc"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),  # noqa: S104
     ("10.0.0.5", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bconveyor_[a-z_]+", expr)}
    snapshot = {"overview": {"by_stage": {"a": 1}, "by_state": {"active": 1}, "jobs": {"done": 1}}}
    metrics = make(snapshot, {"sources": {"gitea": {"accepted": 1}}})
    metrics.observe(moved("T-1", "", "created", 1.0))
    metrics.observe(moved("T-1", "created", "analysis", 2.0))
    exposed = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        exposed |= {sample.name for sample in family.samples} | {family.name}
    assert used <= exposed | {f"{name}_total" for name in exposed}, used - exposed
    assert "conveyor_stage_duration_seconds_bucket" in used
