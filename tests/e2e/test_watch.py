"""Deploy a tiny HTTP service, then watch it: healthy stays, broken rolls back once.

The test owns the "production" service: it answers 200 while its state file says
`ok` (written by the deploy and rollback commands) and 500 once the test breaks it.
"""

from __future__ import annotations

import http.server
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bus import subjects
from gateways import git
from tests.harness import DEMO_CHECK, Harness, wait_until

pytestmark = pytest.mark.e2e

SET_STATE = """\
import pathlib, sys
pathlib.Path(sys.argv[1]).write_text(sys.argv[2])
if len(sys.argv) > 3:
    with open(sys.argv[3], "a") as log:
        log.write(sys.argv[4] + "\\n")
"""


class Production:
    """A health endpoint whose answer is whatever its state file says."""

    def __init__(self, state: Path) -> None:
        self.state = state
        owner = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                text = owner.state.read_text() if owner.state.exists() else "absent"
                code = {"ok": 200, "broken": 500}.get(text, 503)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def production(tmp_path: Path) -> Iterator[Production]:
    prod = Production(tmp_path / "prod-state")
    yield prod
    prod.close()


def _repo(tmp: Path, production: Production, **extra: Any) -> dict[str, Any]:
    script = tmp / "set_state.py"
    script.write_text(SET_STATE)
    state = str(production.state)
    return {
        "name": "demo",
        "prefix": "DEMO",
        "template": "demo",
        "check_command": DEMO_CHECK,
        # Staging and production share the one health endpoint of this tiny world.
        "staging_command": [sys.executable, str(script), state, "ok"],
        "deploy_command": [sys.executable, str(script), state, "ok"],
        "health_url": production.url,
        "rollback_command": [
            sys.executable,
            str(script),
            state,
            "ok",
            str(tmp / "rollbacks.log"),
            "{work_item}",
        ],
        **extra,
    }


MONITOR = {"window_s": 3.0, "interval_s": 0.1, "fail_threshold": 3, "min_checks": 4}


def _watch(harness: Harness, item: str) -> dict[str, Any] | None:
    status = harness.client.request(subjects.status_actor("monitor"))
    return next((w for w in status["watches"] if w["task_id"] == item), None)


def _closed(harness: Harness, item: str) -> dict[str, Any] | None:
    watch = _watch(harness, item)
    return watch if watch is not None and watch.get("closed") else None


def _log(harness: Harness, item: str) -> str:
    return (harness.layout.root / "monitor" / item / "16-post-deploy-log.md").read_text()


def _committed_log(harness: Harness, item: str) -> str:
    """The log as committed in the work item's directory, at the head of the task's branch."""
    branch = harness.task(item)["branch"]
    bare = harness.layout.forge / "repos" / "demo.git"
    path = f"docs/work-items/{item}/16-post-deploy-log.md"
    return git.run_git(["show", f"refs/heads/{branch}:{path}"], git_dir=bare)


def _log_commits(harness: Harness, item: str) -> int:
    branch = harness.task(item)["branch"]
    bare = harness.layout.forge / "repos" / "demo.git"
    path = f"docs/work-items/{item}/16-post-deploy-log.md"
    out = git.run_git(["log", "--format=%H", f"refs/heads/{branch}", "--", path], git_dir=bare)
    return len(out.split())


def _rollbacks(tmp: Path) -> list[str]:
    path = tmp / "rollbacks.log"
    return path.read_text().splitlines() if path.exists() else []


def test_a_healthy_window_ends_healthy_with_no_action(
    tmp_path: Path, production: Production, harness_factory: Callable[..., Harness]
) -> None:
    harness = harness_factory(repos=[_repo(tmp_path, production)], monitor=MONITOR)
    item = harness.submit("Ship it")["task"]["id"]
    harness.wait_stage(item, "done", deadline_s=120)

    watch = wait_until(lambda: _closed(harness, item), what="window closed", deadline_s=60)
    assert (watch["status"], watch["action"]) == ("HEALTHY", "NONE")
    log = _log(harness, item)
    assert 'post_deploy_status: "HEALTHY"' in log
    assert 'action: "NONE"' in log
    assert _rollbacks(tmp_path) == []
    # The verdict is in the repository too, beside the work item's other artifacts
    committed = _committed_log(harness, item)
    assert committed.strip() == log.strip()
    assert 'action_taken: "NONE"' in committed
    assert _log_commits(harness, item) == 1


def test_production_broken_after_the_deploy_is_rolled_back_once(
    tmp_path: Path, production: Production, harness_factory: Callable[..., Harness]
) -> None:
    harness = harness_factory(
        repos=[_repo(tmp_path, production)], monitor={**MONITOR, "window_s": 30.0}
    )
    item = harness.submit("Ship a regression")["task"]["id"]
    harness.wait_stage(item, "done", deadline_s=120)

    # When production starts failing inside the window
    production.state.write_text("broken")

    # Then the rollback command runs exactly once and the task's history says so
    watch = wait_until(lambda: _closed(harness, item), what="rolled back", deadline_s=60)
    assert (watch["status"], watch["action"]) == ("DEGRADED", "ROLLBACK")
    assert _rollbacks(tmp_path) == [item]
    assert production.state.read_text() == "ok"
    history = harness.task(item)["history"]
    assert any("post-deploy DEGRADED" in h["cause"] and "rollback" in h["cause"] for h in history)
    assert harness.task(item)["stage"] == "done"
    assert 'action: "ROLLBACK"' in _log(harness, item)
    assert 'action_taken: "ROLLBACK"' in _committed_log(harness, item)
    assert _log_commits(harness, item) == 1


def test_a_protected_repository_is_only_alerted(
    tmp_path: Path, production: Production, harness_factory: Callable[..., Harness]
) -> None:
    harness = harness_factory(
        repos=[_repo(tmp_path, production, protected=True)],
        monitor={**MONITOR, "window_s": 30.0},
    )
    item = harness.submit("Ship to the core")["task"]["id"]
    harness.wait_stage(item, "deploy", deadline_s=120)
    wait_until(lambda: harness.task(item).get("step") == "confirm", what="awaiting confirm")
    assert harness.command("confirm-deploy", item)["ok"]
    harness.wait_stage(item, "done", deadline_s=120)

    production.state.write_text("broken")

    watch = wait_until(lambda: _closed(harness, item), what="decided", deadline_s=60)
    assert (watch["status"], watch["action"]) == ("DEGRADED", "ALERT")
    assert _rollbacks(tmp_path) == []
    assert production.state.read_text() == "broken"
    comments = (harness.layout.tracker / f"{item}.json").read_text()
    assert "post-deploy" in comments.lower() or "degraded" in comments.lower()
    assert 'action_taken: "ALERT"' in _committed_log(harness, item)
