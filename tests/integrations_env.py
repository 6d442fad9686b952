"""A whole Conveyor on a fake Gitea and a fake Plane, wired through the real gateway.

Shared by the end-to-end tests and `bench/webhook_loss.py`: the fakes speak the
recorded APIs and send signed webhooks to the gateway, as the real servers would.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conveyor.agents import demo_repo as demo
from conveyor.app.node import ALL_PARTS, GATEWAY, Node
from tests.fakes.gitea import FakeGitea
from tests.fakes.plane import FIXTURE_PROJECT, FakePlane
from tests.harness import Harness, make_config

SECRET = "conveyor-test-secret"
TOKEN = "gitea-test-token"
API_KEY = "plane-test-key"
WORKSPACE = "acme"
REPO = "acme/demo"
PROJECT = FIXTURE_PROJECT
CHECK = [sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", "."]


class World:
    """The fakes, the running node and an operator's client."""

    def __init__(self, gitea: FakeGitea, plane: FakePlane, harness: Harness) -> None:
        self.gitea = gitea
        self.plane = plane
        self.harness = harness

    def start_item(self, title: str) -> tuple[str, str]:
        """A human creates a work item and moves it to In Progress: (task id, Plane id)."""
        item = self.plane.create_item(PROJECT, title)
        self.plane.move(item["id"], "In Progress")
        return f"DEMO-{item['sequence_id']}", item["id"]


@contextmanager
def world(
    tmp: Path,
    nats_url: str,
    *,
    drop_rate: float = 0.0,
    seed: int = 0,
    **overrides: Any,
) -> Iterator[World]:
    """Start fakes and a node with every part (gateway included) on `nats_url`."""
    gitea = FakeGitea(
        tmp / "gitea",
        TOKEN,
        webhook_secret=SECRET,
        drop_rate=drop_rate,
        check_command=CHECK,
        seed=seed,
    ).start()
    plane = FakePlane(
        API_KEY, WORKSPACE, webhook_secret=SECRET, drop_rate=drop_rate, seed=seed + 1
    ).start()
    harness: Harness | None = None
    try:
        gitea.create_repo(REPO, demo.create_demo_files())
        settings: dict[str, Any] = {
            "forge": {"kind": "gitea", "check_timeout_s": 120.0},
            "tracker": {"kind": "plane"},
            "gitea": {
                "url": gitea.url,
                "token": TOKEN,
                "owner": "acme",
                "webhook_secret": SECRET,
                "ci_poll_s": 0.2,
            },
            "plane": {
                "url": plane.url,
                "api_key": API_KEY,
                "workspace": WORKSPACE,
                "webhook_secret": SECRET,
            },
            "repos": [
                {
                    "name": "demo",
                    "prefix": "DEMO",
                    "template": "demo",
                    "gitea_repo": REPO,
                    "plane_project": PROJECT,
                }
            ],
            **overrides,
        }
        cfg = make_config(tmp / "data", nats_url, **settings)
        harness = Harness(cfg, nats_url)
        harness.node = Node(cfg, parts=(*ALL_PARTS, GATEWAY)).start()
        assert harness.node.gateway is not None
        gitea.webhook_url = f"{harness.node.gateway.url}/webhooks/gitea"
        plane.webhook_url = f"{harness.node.gateway.url}/webhooks/plane"
        yield World(gitea, plane, harness)
    finally:
        if harness is not None:
            harness.close()
        plane.stop()
        gitea.stop()
