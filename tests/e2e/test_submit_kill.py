"""A submit answered ok survives control's kill -9 right after the answer.

The submit front answers once the task record is durable and sends its outbox after
the answer, so a kill right after an ok may come before the job request went out.
The restarted control must find the task and send it on: every acknowledged task
exists after the restart and moves on through the pipeline.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.app.client import Client
from tests.harness import Processes, wait_ready, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_submits_acknowledged_then_control_killed_exist_and_move_after_restart(
    tmp_path: Path, nats_url: str
) -> None:
    procs = Processes(tmp_path, nats_url)
    procs.start("control", "control")
    procs.start("launcher", "launcher")
    client = Client(nats_url)
    try:
        wait_ready(client, procs)
        # Given three submits answered ok, one after another, then control killed -9 at once
        replies = [
            client.command("submit", {"repo": "demo", "title": f"Kept {n}"}) for n in (1, 2, 3)
        ]
        procs.kill("control")
        assert all(r["ok"] for r in replies), replies
        ids = [r["task"]["id"] for r in replies]

        # When control starts again
        procs.start("control", "control")
        wait_ready(client, procs)

        # Then every acknowledged task exists and its intake job runs: it moves on
        def _moved() -> bool:
            tasks = [client.request(f"conveyor.status.task.{i}") for i in ids]
            return all(t.get("stage") not in (None, "created") for t in tasks)

        wait_until(_moved, what="every acknowledged task past created", deadline_s=60)
    except AssertionError:
        print(procs.logs())
        raise
    finally:
        client.close()
        procs.stop_all()
