"""The I/O around an agent's prompt: the role text overrides and the earlier artifacts."""

from __future__ import annotations

from pathlib import Path

from actors import launcher_policy as policy
from actors import prompt_policy
from actors.jobs.context import JobContext
from bus.messages import LaunchOrder
from conveyor.instructions import read_instructions
from conveyor.logs import get_logger

log = get_logger(__name__)

MAX_LISTED_PER_DIR = 50
"""Files listed from one artifact directory (the ADRs); the prompt stays bounded."""


def _read(path: Path, *, role: str, source: str) -> str | None:
    """An override's text, or None (logged) when it cannot be used."""
    try:
        return read_instructions(str(path))
    except (OSError, ValueError) as err:
        log.warning("launcher.role_text_ignored", role=role, source=source, error=str(err))
        return None


def _repo_text(worktree: Path, role: str) -> str | None:
    """The repository's own text for `role`; never a file outside the worktree."""
    path = worktree / prompt_policy.repo_instructions_path(role)
    if not path.exists() and not path.is_symlink():
        return None
    if not path.resolve().is_relative_to(worktree.resolve()):
        log.warning("launcher.role_text_ignored", role=role, source="repository", error="outside")
        return None
    return _read(path, role=role, source="repository")


def existing_artifacts(worktree: Path, spots: list[prompt_policy.Spot]) -> list[str]:
    """The spots present in the worktree; a directory contributes its `.md` files."""
    found: list[str] = []
    for spot in spots:
        where = worktree / spot.path
        if spot.directory and where.is_dir():
            names = sorted(p.name for p in where.glob("*.md") if p.is_file())
            found.extend(f"{spot.path}/{name}" for name in names[:MAX_LISTED_PER_DIR])
        elif not spot.directory and where.is_file():
            found.append(spot.path)
    return found


def agent_prompt(ctx: JobContext, order: LaunchOrder, worktree: Path) -> str:
    """The prompt of `order`, with the role text overrides read from their files now."""
    configured = ctx.cfg.agents.for_role(order.role).instructions
    operator = _read(Path(configured), role=order.role, source="config") if configured else None
    repo = None if operator else _repo_text(worktree, order.role)
    prose, source = prompt_policy.choose_prose(order.role, operator=operator, repo=repo)
    spots = prompt_policy.earlier_artifacts(ctx.cfg, order.stage, order.task_id)
    existing = existing_artifacts(worktree, spots)
    log.info(
        "launcher.prompt_built", job_id=order.job_id, role_text=source, artifacts=len(existing)
    )
    return policy.prompt(order, ctx.cfg, prose=prose, existing=existing)
