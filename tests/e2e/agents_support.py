"""Shared pieces of the end-to-end tests that put real agent CLIs on Conveyor's roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.launcher_policy import Run
from bus import subjects
from conveyor.layout import Layout
from gateways import git
from tests.harness import DEMO_CHECK, Harness

KEY_ENV = "CONVEYOR_TEST_MODEL_KEY"
ROLES = ("analyst", "architect", "developer", "reviewer", "tester", "deployer")
MODELS = {
    "claude": "claude-sonnet-4-5",
    "codex": "gpt-5.5",
    "gemini": "gemini-2.5-flash",
    "opencode": "fake-model",
    "aider": "fake",
}
ARGS: dict[str, list[str]] = {"aider": ["--edit-format", "whole"]}
PRICES = {
    "gpt-5.5": {"input": 1.25, "output": 10.0, "cached": 0.125},
    "fake-model": {"input": 2.0, "output": 8.0},
    "fake": {"input": 3.0, "output": 15.0},
    "gemini-2.5-flash": {"input": 0.3, "output": 2.5},
}
"""Prices for the fake models of the CLIs that report tokens but no cost."""


def cli_agent(cli: str, binary: str, url: str, **extra: Any) -> dict[str, Any]:
    """One role's table: `cli` on the fake model, with short retries and a bounded run."""
    return {
        "cli": cli,
        "binary": binary,
        "model": MODELS[cli],
        "args": ARGS.get(cli, []),
        "base_url": url,
        "api_key_env": KEY_ENV,
        "max_retries": 1,
        "request_timeout_s": 30.0,
        "timeout_s": 120.0,
        **extra,
    }


def deploying_repo() -> list[dict[str, Any]]:
    """The demo repository with deploy commands, so Conveyor deploys without a deployer run."""
    ok = ["{python}", "-c", "print('deployed')"]
    return [
        {
            "name": "demo",
            "prefix": "DEMO",
            "template": "demo",
            "check_command": DEMO_CHECK,
            "staging_command": ok,
            "deploy_command": ok,
        }
    ]


def worktree(tmp_path: Path, item: str) -> Path:
    """Where the item's worktree will be, for the fake model's absolute paths."""
    return Layout((tmp_path / "data").resolve()).worktree("demo", item)


def main_files(harness: Harness) -> list[str]:
    bare = harness.layout.forge / "repos" / "demo.git"
    return git.run_git(["ls-tree", "-r", "--name-only", "main"], git_dir=bare).split()


def runs(harness: Harness) -> list[Run]:
    store = harness.client.bus.store(subjects.BUCKET_RUNS, Run)
    return sorted((e.value for e in store.load_all().values()), key=lambda r: r.started_at)
