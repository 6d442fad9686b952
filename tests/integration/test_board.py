"""The board's JSON, its event stream, its access rules and `/metrics`, over real HTTP.

One node (control, launcher, gateway; the demo agent) on a real nats-server serves the
whole module; DEMO-1 waits for approval on analysis until the last test approves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.bridge import Bus
from bus.server import EmbeddedNats
from conveyor import config as config_mod
from conveyor.clock import SystemClock
from gateways.gateway import Gateway, start_gateway
from tests.board_support import XSS_TITLE, BoardNode, board_node
from tests.harness import wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoardNode]:
    with board_node(tmp_path_factory.mktemp("board"), board={"refresh_s": 0.2}) as running:
        running.submit(XSS_TITLE)
        running.wait_stage("DEMO-1", "analysis", approve=False)
        wait_until(
            lambda: "awaiting approval" in running.task("DEMO-1")["last_reason"],
            what="DEMO-1 to await approval",
        )
        yield running


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_metrics_parse_and_count_the_pipeline(node: BoardNode) -> None:
    # An unsigned webhook: refused with 401, counted by source and result.
    assert node.http.post("/webhooks/gitea", content=b"{}").status_code in (400, 401, 415)
    response = node.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(response.text)
    assert value(found, "conveyor_tasks", stage="analysis") == 1
    assert value(found, "conveyor_tasks_by_state", state="active") == 1
    assert value(found, "conveyor_up") == 1
    assert value(found, "conveyor_stage_changes_total", stage="analysis") == 1
    assert value(found, "conveyor_stage_duration_seconds_count", stage="created") == 1
    assert (
        value(
            found, "conveyor_jobs_finished_total", stage="analysis", role="analyst", status="done"
        )
        == 1
    )
    assert value(found, "conveyor_jobs", state="done") == 2
    assert value(found, "conveyor_leases_held") == 0
    refused = [
        v
        for (name, labels), v in found.items()
        if name == "conveyor_webhook_deliveries_total" and ("source", "gitea") in labels
    ]
    assert sum(refused) == 1
    families = {
        family.name: family.type for family in text_string_to_metric_families(response.text)
    }
    for family in (
        "conveyor_reworks",
        "conveyor_gate_failures",
        "conveyor_reaps",
        "conveyor_lease_waits",
        "conveyor_agent_tokens",
        "conveyor_alerts",
    ):
        assert families[family] == "counter"


def test_overview_is_one_page_of_rows_with_the_stages(node: BoardNode) -> None:
    body = node.http.get("/board/api/overview").json()
    assert body["stages"][0] == "created"
    assert body["stages"][-2:] == ["done", "cancelled"]
    assert "analysis" in body["stages"]
    assert [row["id"] for row in body["page"]["tasks"]] == ["DEMO-1"]
    assert body["page"]["tasks"][0]["title"] == XSS_TITLE
    assert body["overview"]["healthy"] is True
    assert body["leases"]["leases"] == []
    assert body["queue"]["counts"] == {"done": 2}


def test_task_has_timeline_jobs_and_effects(node: BoardNode) -> None:
    task = node.http.get("/board/api/task/DEMO-1").json()
    assert [h["new"] for h in task["history"]] == ["created", "analysis"]
    assert [j["id"] for j in task["jobs"]] == ["DEMO-1.created.1.intake", "DEMO-1.analysis.1.work"]
    assert all(j["status"] == "done" and j["attempts"] == 1 for j in task["jobs"])
    assert any(e["key"].startswith("DEMO-1.pull.") for e in task["effects"])
    assert node.http.get("/board/api/task/DEMO-9").status_code == 404
    assert node.http.get("/board/api/task/a.b").status_code == 400


def test_pages_carry_a_strict_content_security_policy(node: BoardNode) -> None:
    for path in ("/board", "/board/task/DEMO-1", "/board/static/board.js"):
        response = node.http.get(path)
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    assert node.http.get("/board/static/../board.py").status_code == 404
    assert "innerHTML" not in node.http.get("/board/static/board.js").text


def test_stage_change_is_streamed(node: BoardNode) -> None:
    deadline = SystemClock().monotonic() + 30
    with node.http.stream("GET", "/board/events") as stream:
        assert stream.headers["content-type"] == "text/event-stream"
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        assert node.command("approve", "DEMO-1")["ok"]
        for line in lines:
            assert SystemClock().monotonic() < deadline, "no stage event in time"
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "stage" and event["task_id"] == "DEMO-1":
                assert event["old"] == "analysis"
                break


def test_board_needs_a_token_off_loopback(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    def gateway(board: dict) -> tuple[Bus, str, Gateway]:
        cfg = config_mod.load(
            env={},
            overrides={
                "data_dir": str(tmp_path),
                "nats": {"url": nats_server.url},
                "gateway": {"host": "0.0.0.0", "port": 0},  # noqa: S104 - the case under test
                "board": board,
            },
        )
        bus = Bus.connect(nats_server.url, name="board-test")
        bus.setup()
        running = start_gateway(bus, cfg)
        port = running.url.rsplit(":", 1)[1]
        return bus, f"http://127.0.0.1:{port}", running

    bus, url, running = gateway({})
    try:
        with httpx.Client(base_url=url, trust_env=False) as http:
            assert http.get("/board").status_code == 404
            assert http.get("/metrics").status_code == 404
    finally:
        running.stop()
        bus.close()
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    bus, url, running = gateway({"token_file": str(token_file)})
    try:
        with httpx.Client(base_url=url, trust_env=False) as http:
            assert http.get("/board").status_code == 401
            assert http.get("/metrics").status_code == 401
            assert http.get("/board/api/overview?token=s3cret").status_code == 401
            assert (
                http.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            )
            assert http.get("/board", headers={"Authorization": "Bearer nope"}).status_code == 401
            login = http.get("/board?token=s3cret", follow_redirects=False)
            assert login.status_code == 303
            assert login.headers["location"] == "/board"
            # The cookie it set is sent from now on (an EventSource cannot send headers).
            assert http.get("/board").status_code == 200
            assert http.get("/board/static/board.js").status_code == 200
    finally:
        running.stop()
        bus.close()
