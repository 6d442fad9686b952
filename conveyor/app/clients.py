"""The outside systems a node talks to: forge (local or Gitea) and tracker (local or Plane).

A local forge also gets the configured repositories here when they are missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pykka

from actors.task_summary import GetTask, TaskSummary
from bus.effects import Ledger
from conveyor.agents import demo_repo as demo
from conveyor.clock import Clock
from conveyor.config import Config, python_argv
from conveyor.errors import ConfigError
from conveyor.layout import Layout
from gateways.forge import Forge
from gateways.gitea import GiteaForge
from gateways.local_forge import LocalForge
from gateways.local_forge_client import ForgeClient
from gateways.local_forge_server import ForgeServer
from gateways.plane import PlaneTracker
from gateways.tracker import LocalTracker
from gateways.tracker_sync import TrackerSync


def make_forge(cfg: Config, clock: Clock, *, owner: bool = False) -> Forge:
    """The configured forge: bare repositories on disk, over HTTP, or a Gitea server.

    `owner`: this process runs the `forge` part, so the bare repositories are its
    own whatever `forge.url` says; any other process with `forge.url` set reaches
    them over HTTP (`docs/local-forge.md`).
    """
    if cfg.forge.kind == "gitea":
        return GiteaForge(cfg, clock=clock)
    if cfg.forge.url and not owner:
        return ForgeClient(
            cfg.forge.url,
            cfg.forge.secret(),
            check_timeout_s=cfg.forge.check_timeout_s,
            clock=clock,
        )
    checks = {
        repo.name: python_argv(repo.check_command) for repo in cfg.repos if repo.check_command
    }
    return LocalForge(
        Layout(cfg.data_path).forge, checks, check_timeout_s=cfg.forge.check_timeout_s, clock=clock
    )


def ensure_repos(cfg: Config, forge: Forge) -> None:
    """Create the configured repositories on the local forge if they are missing.

    On Gitea the repositories are the operator's: Conveyor never creates them.
    """
    if not isinstance(forge, LocalForge):
        return
    for repo in cfg.repos:
        files = (
            demo.create_demo_files()
            if repo.template == "demo"
            else {"README.md": f"# {repo.name}\n".encode()}
        )
        forge.create_repo(repo.name, initial_files=files)


def plane_state_for(cfg: Config) -> Callable[[str], str | None]:
    """The Plane state a stage puts its work item in (None: leave the board as it is).

    Only states that say something to people: the review and the end. Every other
    stage is visible as a comment; moving cards there would fight the humans who
    move them to Approved, Blocked or Confirm Deploy.
    """
    states = cfg.plane.states
    mapping = {"review": states.in_review, "done": states.done}
    if cfg.plane.trouble_states.cancelled:
        mapping["cancelled"] = cfg.plane.trouble_states.cancelled
    return mapping.get


def plane_trouble_state(cfg: Config) -> Callable[[str], str | None]:
    """The Plane state an alert kind puts its card in (None: leave the board as it is)."""
    trouble = cfg.plane.trouble_states
    mapping = {
        "escalated": trouble.escalated,
        "awaiting_confirm": trouble.awaiting_confirm,
        "awaiting_approval": trouble.awaiting_approval,
    }
    return lambda kind: mapping.get(kind) or None


def start_tracker_sync(
    cfg: Config, clock: Clock, engine: pykka.ActorRef[Any], ledger: Ledger | None = None
) -> tuple[pykka.ActorRef[Any], PlaneTracker | None]:
    """TrackerSync over the configured tracker; for Plane, only tasks from Plane.

    The Plane client is returned too: Intake resolves state ids and the Reconciler
    polls with it.
    """
    if cfg.tracker.kind != "plane":
        local = LocalTracker(Layout(cfg.data_path).tracker, clock)
        return TrackerSync.start(local, ledger=ledger), None

    def _refs(task_id: str) -> tuple[str, str] | None:
        task = cast("TaskSummary | None", engine.ask(GetTask(task_id), timeout=10))
        if task is None or not task.external_id:
            return None
        project = cfg.repo(task.repo).plane_project
        return (project, task.external_id) if project else None

    plane = PlaneTracker(cfg.plane, _refs)
    sync = TrackerSync.start(
        plane,
        state_for=plane_state_for(cfg),
        tracked=lambda task_id: _refs(task_id) is not None,
        trouble_state=plane_trouble_state(cfg),
        ledger=ledger,
    )
    return sync, plane


def serve_forge(cfg: Config, forge: Forge) -> ForgeServer:
    """Serve this process's local forge over HTTP (the `forge` part); see `ForgeServer`."""
    if not isinstance(forge, LocalForge):
        raise ConfigError("the forge part serves the local forge only (forge.kind = local)")
    server = ForgeServer(forge, cfg.forge.secret(), host=cfg.forge.host, port=cfg.forge.port)
    server.start()
    (Layout(cfg.data_path).forge_url_file).write_text(server.url)
    return server
