"""Kill -9 at every named point of the pipeline, restart, and count the side effects.

Each point is a place where a process can die between two effects (state stored
but not announced, agent finished but not committed, pull request merged but not
reported, ...). After the restart the item must reach `done` with every external
effect done exactly once.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path

import pytest

from bus.server import EmbeddedNats
from conveyor import faults
from conveyor.app.client import Client
from conveyor.errors import BusUnavailable
from gateways.tracker import LocalTracker
from tests.harness import ALL_STAGES, Processes, drive, stored_jobs, wait_ready, wait_until

pytestmark = pytest.mark.e2e

CONTROL_POINTS = {
    p for p in faults.POINTS if p.split(".")[0] in ("stage_engine", "queue_worker", "tracker_sync")
}


def _effects(data: Path) -> Counter[str]:
    path = data / "forge" / "effects.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(json.loads(line)["kind"] for line in lines if line.strip())


def _agent_runs(data: Path, item: str) -> Counter[str]:
    """How many agent processes ran per job (a run directory with an output log)."""
    runs: Counter[str] = Counter()
    for log in (data / "runs" / item).glob("*/output.log"):
        job = log.parent.name.rsplit(".", 1)[0]
        runs[job] += 1
    return runs


def _assert_exactly_once(procs: Processes, client: Client, item: str) -> None:
    task = drive(client, item, "done", deadline_s=120)
    # Every stage was entered once, in order: no transition ran twice.
    assert [e["new"] for e in task["history"]] == ALL_STAGES
    effects = _effects(procs.data)
    assert effects["pr_opened"] == 1, effects
    assert effects["pr_merged"] == 1, effects
    # No agent ran twice for one job.
    runs = _agent_runs(procs.data, item)
    assert runs, "no agent ran"
    assert max(runs.values()) == 1, runs
    # Every job ended done.
    jobs = [j for j in stored_jobs(client) if j.task_id == item]
    assert {j.status for j in jobs} == {"done"}, [(j.id, j.status, j.error) for j in jobs]
    # The tracker saw each stage change once and ends on done.
    tracker = LocalTracker(procs.data / "tracker")
    wait_until(lambda: tracker.state(item) == "done", what="tracker done")
    comments = tracker.comments(item)
    assert sum(c.startswith("Stage ") for c in comments) == len(ALL_STAGES) - 1
    assert len(comments) == len(set(comments))


# The default demo repository has no deploy commands, so the deploy points are never
# reached here; tests/e2e/test_deploy.py kills at them with commands configured.
@pytest.mark.parametrize("point", [p for p in faults.POINTS if p not in faults.DEPLOY_POINTS])
def test_a_kill_at_any_point_is_recovered_with_every_effect_done_once(
    point: str, tmp_path: Path, nats_url: str
) -> None:
    # Given the Procfile processes, one of which will die at `point`
    procs = Processes(tmp_path, nats_url)
    victim = "control" if point in CONTROL_POINTS else "launcher"
    procs.start("control", "control", fault=point if victim == "control" else "")
    procs.start("launcher", "launcher", fault=point if victim == "launcher" else "")
    # A command the victim dies answering waits out this timeout; keep it short.
    client = Client(nats_url, timeout_s=3.0)
    try:
        wait_ready(client, procs)
        item = "DEMO-1"
        submit = {"repo": "demo", "title": "Survive " + point, "id": item}
        # It may die answering the submit itself; the operator retries it below.
        with contextlib.suppress(BusUnavailable):
            client.command("submit", submit)

        # When the process reaches the point it is killed -9 ...
        def _died() -> bool:
            drive_quietly(client, item)
            return procs.procs[victim].poll() is not None

        wait_until(_died, what=f"{victim} to die at {point}", deadline_s=90)
        procs.procs.pop(victim)
        # ... and an operator (or systemd) starts it again, without the fault
        procs.start(victim, victim)
        wait_ready(client, procs)
        # An operator unsure whether the submit landed sends it again: it is idempotent.
        assert client.command("submit", submit)["ok"]

        # Then the item finishes with every side effect exactly once
        _assert_exactly_once(procs, client, item)
    except AssertionError:
        print(procs.logs())
        raise
    finally:
        client.close()
        procs.stop_all()


def drive_quietly(client: Client, item: str) -> None:
    """Approve the analysis if it waits for it; ignore a bus that is briefly away."""
    try:
        task = client.request(f"conveyor.status.task.{item}")
        if "awaiting approval" in task.get("last_reason", ""):
            client.command("approve", {"id": item})
    except Exception:
        return


def test_nats_server_killed_mid_pipeline_loses_nothing_acknowledged(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    # Given the processes and an item whose developer takes a while
    procs = Processes(tmp_path, nats_server.url)
    procs.start("control", "control")
    procs.start("launcher", "launcher")
    client = Client(nats_server.url)
    try:
        wait_ready(client, procs)
        item = client.command(
            "submit", {"repo": "demo", "title": "Bus dies", "description": "demo: developer=slow:2"}
        )["task"]["id"]
        drive(client, item, "development")

        # When nats-server is killed -9 and comes back on the same port and store
        nats_server.kill()
        nats_server.start()

        # Then everything acknowledged survived and the item finishes exactly once
        _assert_exactly_once(procs, client, item)
    except AssertionError:
        print(procs.logs())
        raise
    finally:
        client.close()
        procs.stop_all()
