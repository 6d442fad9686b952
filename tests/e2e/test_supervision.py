"""A whole node keeps going: garbage in every bucket is quarantined, a fenced actor comes back.

The node runs control, launcher and the webhook gateway in one process on a
fixture nats-server; the test speaks to it as an operator would (`conveyor.status`,
`GET /healthz`, commands) and watches `conveyor.alerts` from its own connection.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from actors.stage_policy import Task
from bus import subjects
from bus.bridge import BUCKETS
from bus.kv import QUARANTINED
from bus.messages import Alert
from conveyor.app.node import GATEWAY, Node
from conveyor.app.supervisor import ACTOR_DOWN
from conveyor.app.wiring import CONTROL, LAUNCHER
from tests.actors.conftest import Captured
from tests.harness import Harness, make_config, wait_until
from tests.kv_raw import get_raw, put_raw, settled_alerts

pytestmark = pytest.mark.e2e

GARBAGE = b'{"written by": "something else", "stage": 42'
GARBAGE_KEY = "garbage.1"


def _start(harness: Harness) -> Node:
    harness.node = Node(harness.cfg, parts=(CONTROL, LAUNCHER, GATEWAY)).start()
    return harness.node


def _healthz(node: Node) -> tuple[int, dict[str, Any]]:
    assert node.gateway is not None
    url = f"{node.gateway.url}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - the test's own server
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), json.loads(err.read())


def _overview(harness: Harness) -> dict[str, Any]:
    status: dict[str, Any] = harness.client.request(subjects.STATUS)
    return status


@pytest.fixture
def harness(tmp_path: Path, nats_url: str) -> Any:
    cfg = make_config(
        tmp_path / "data",
        nats_url,
        # Slow enough for the test to see the actor down before it is back.
        supervisor={"restart_base_s": 3.0, "check_s": 0.1},
        gateway={"port": 0},
    )
    made = Harness(cfg, nats_url)
    yield made
    made.close()


def test_a_garbage_record_in_every_bucket_is_quarantined_and_the_node_keeps_delivering(
    harness: Harness,
) -> None:
    alerts = Captured(harness.client.bus, subjects.ALERTS, Alert)
    node = _start(harness)
    first = harness.submit("Before the garbage")["task"]["id"]
    harness.wait_stage(first, "development", "review", "testing", "staging", "deploy", "done")

    # Garbage lands in every bucket of the running node.
    for bucket in BUCKETS:
        put_raw(harness.client.bus, bucket, GARBAGE_KEY, GARBAGE)
    assert _overview(harness)["healthy"] is True
    assert _healthz(node)[0] == 200

    # A restart reads what its checkpoints do not cover: each bad record there is
    # reported once, the rest loads. The Intake reads a card only when its work item's
    # event comes (`tests/actors/test_intake_cold_state.py`), so no start reads it.
    harness.stop_node()
    node = _start(harness)
    second = harness.submit("After the garbage")["task"]["id"]
    assert harness.wait_stage(first, "done")["stage"] == "done"
    assert harness.wait_stage(second, "done")["stage"] == "done"

    # Each process that meets a bad record reports it; the alert's message id makes
    # every report after the first a duplicate the stream drops, but this core
    # subscription sees each publish: so the reported records, not the publishes.
    quarantined = settled_alerts(harness.client.bus, alerts, QUARANTINED)
    assert sorted({a.text.split(" ")[1] for a in quarantined}) == sorted(
        f"{bucket}/{GARBAGE_KEY}" for bucket in BUCKETS if bucket != subjects.BUCKET_CARDS
    )
    overview = _overview(harness)
    assert overview["healthy"] is True, overview
    assert _healthz(node)[0] == 200
    assert [a for a in alerts.of(Alert) if a.kind == ACTOR_DOWN] == []
    # Every bad record is still there, as it was, for the operator.
    for bucket in BUCKETS:
        assert get_raw(harness.client.bus, bucket, GARBAGE_KEY) == GARBAGE


def test_a_fenced_stage_engine_is_reported_down_restarted_and_takes_its_tasks_back(
    harness: Harness,
) -> None:
    alerts = Captured(harness.client.bus, subjects.ALERTS, Alert)
    node = _start(harness)
    item = harness.submit("Fence me")["task"]["id"]
    wait_until(
        lambda: "awaiting approval" in harness.task(item).get("last_reason", ""),
        what="analysis to await approval",
    )
    # Another writer moves the task's record past the revision the engine holds.
    tasks = harness.client.bus.store(subjects.BUCKET_TASKS, Task)
    entry = tasks.get(item)
    assert entry is not None
    tasks.update(item, entry.value, expect=entry.revision)

    # The engine's next write of it is fenced: it stops, and the node says so.
    refused = harness.command("approve", item)
    assert refused == {"ok": False, "error": "stage engine unavailable: it stopped; retry"}
    down = wait_until(
        lambda: (
            lambda s: (
                s if s["actors"]["stage_engine"].get("reason", "").startswith("fenced: ") else None
            )
        )(_overview(harness)),
        what="the overview to report the stage engine down",
    )
    assert down["healthy"] is False
    engine = down["actors"]["stage_engine"]
    assert engine["healthy"] is False
    assert engine["restarts"] == 0
    assert engine["restarting"] is True
    assert _healthz(node) == (503, {"ok": False, "error": "actor(s) down: stage_engine"})
    own = harness.client.request(subjects.status_actor("stage_engine"))
    assert own["ok"] is False
    assert own["down"] is True
    assert own["error"].startswith("down: fenced: ")

    # Restarted after its back-off: healthy again, and it owns the task again.
    up = wait_until(
        lambda: (lambda s: s if s["healthy"] else None)(_overview(harness)),
        what="the overview to be healthy again",
    )
    assert up["actors"]["stage_engine"]["restarts"] == 1
    assert _healthz(node)[0] == 200
    assert harness.wait_stage(item, "done")["stage"] == "done"
    down_alerts = settled_alerts(harness.client.bus, alerts, ACTOR_DOWN)
    assert len(down_alerts) == 1
    assert "stage_engine" in down_alerts[0].text


def test_every_actor_stopped_at_once_is_restarted_and_the_pipeline_still_delivers(
    harness: Harness,
) -> None:
    node = _start(harness)
    names = sorted(node.refs)
    assert {"stage_engine", "queue_worker", "launcher", "lease_keeper", "reaper"} <= set(names)
    for name in names:
        node.refs[name].stop(block=True, timeout=10)
    wait_until(lambda: _healthz(node)[0] == 503, what="/healthz to say 503")
    # The launcher part's own endpoint answers for its down launcher too.
    launcher = harness.client.request(subjects.status_actor("launcher"))
    assert launcher["healthy"] is False
    assert launcher["down"] is True

    up = wait_until(
        lambda: (lambda s: s if s["healthy"] else None)(_overview(harness)),
        what="every actor to be back",
    )
    assert _healthz(node)[0] == 200
    for name, entry in up["actors"].items():
        if name in node.refs and "restarts" in entry:
            assert entry["restarts"] == 1, (name, entry)
    assert node.supervisor is not None
    assert {name: life.restarts for name, life in node.supervisor.lives().items()} == dict.fromkeys(
        names, 1
    )
    item = harness.submit("After every restart")["task"]["id"]
    assert harness.wait_stage(item, "done")["stage"] == "done"
