"""Role text overrides: the operator's config path, the repository's file, and their bad cases."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from actors import prompt_policy as pp
from actors.jobs import prompt as job_prompt
from actors.jobs.context import JobContext
from actors.role_text_policy import ROLE_TEXTS
from bus.messages import LaunchOrder
from conveyor import config as config_mod
from conveyor.config import Config
from conveyor.errors import ConfigError
from conveyor.instructions import INSTRUCTIONS_MAX_BYTES

ITEM = "DEMO-3"


def load(tmp_path: Path, body: str) -> Config:
    path = tmp_path / "conveyor.toml"
    path.write_text(body)
    return config_mod.load(path, env={})


# --- the operator's config path -------------------------------------------------------------


def test_no_instructions_by_default() -> None:
    cfg = config_mod.load(env={})
    assert all(cfg.agents.for_role(role).instructions == "" for role in config_mod.ROLES)


def test_a_relative_instructions_path_is_read_next_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "dev.md").write_text("Operator prose.")
    cfg = load(tmp_path, '[agents.developer]\ninstructions = "texts/dev.md"\n')
    assert cfg.agents.developer.instructions == str(tmp_path.resolve() / "texts" / "dev.md")


def test_a_missing_instructions_file_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agents\.reviewer\.instructions: cannot use"):
        load(tmp_path, '[agents.reviewer]\ninstructions = "/nonexistent/reviewer.md"\n')


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"x" * (INSTRUCTIONS_MAX_BYTES + 1), "larger than"),
        (b"\xff\xfe not text", "decode"),
    ],
)
def test_a_too_large_or_binary_instructions_file_stops_start_up(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    (tmp_path / "t.md").write_bytes(content)
    with pytest.raises(ConfigError, match=rf"agents\.tester\.instructions: .*{problem}"):
        load(tmp_path, '[agents.tester]\ninstructions = "t.md"\n')


def test_an_instructions_path_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    env = {"CONVEYOR_AGENTS__ANALYST__INSTRUCTIONS": str(tmp_path / "missing.md")}
    with pytest.raises(ConfigError, match=r"agents\.analyst\.instructions"):
        config_mod.load(env=env)


# --- the job side: reading the overrides, listing the artifacts -----------------------------


def order(stage: str = "review", role: str = "reviewer") -> LaunchOrder:
    return LaunchOrder(
        job_id=f"{ITEM}.{stage}.1.work",
        attempt=1,
        task_id=ITEM,
        repo="demo",
        stage=stage,
        role=role,
        visit=1,
        branch=f"feature/{ITEM}-x",
        title="X",
        description="The work.",
    )


def context(cfg: Config) -> JobContext:
    return cast(JobContext, SimpleNamespace(cfg=cfg))


def with_instructions(role: str, path: Path) -> Config:
    agents: dict[str, Any] = {role: {"instructions": str(path)}}
    return config_mod.load(env={}, overrides={"agents": agents})


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    root = tmp_path / "worktree"
    (root / ".conveyor" / "agents").mkdir(parents=True)
    return root


def test_the_repository_text_replaces_the_shipped_prose(worktree: Path) -> None:
    (worktree / pp.repo_instructions_path("reviewer")).write_text("REPO-REVIEWER-PROSE")
    text = job_prompt.agent_prompt(context(config_mod.load(env={})), order(), worktree)
    assert "REPO-REVIEWER-PROSE" in text
    assert ROLE_TEXTS["reviewer"].strip() not in text
    assert "`verdict` must be exactly one of" in text


def test_the_operator_text_beats_the_repository_text(worktree: Path, tmp_path: Path) -> None:
    (worktree / pp.repo_instructions_path("reviewer")).write_text("REPO-REVIEWER-PROSE")
    (tmp_path / "ops.md").write_text("OPERATOR-PROSE")
    cfg = with_instructions("reviewer", tmp_path / "ops.md")
    text = job_prompt.agent_prompt(context(cfg), order(), worktree)
    assert "OPERATOR-PROSE" in text
    assert "REPO-REVIEWER-PROSE" not in text


def test_an_unreadable_repository_text_falls_back_to_the_shipped_one_with_a_log_line(
    worktree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (worktree / pp.repo_instructions_path("reviewer")).write_bytes(b"\xff\xfe")
    with caplog.at_level(logging.WARNING):
        text = job_prompt.agent_prompt(context(config_mod.load(env={})), order(), worktree)
    assert ROLE_TEXTS["reviewer"].strip() in text
    assert "launcher.role_text_ignored" in caplog.text


def test_a_repository_text_linked_outside_the_worktree_is_not_read(
    worktree: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text("SECRET-OUTSIDE")
    (worktree / pp.repo_instructions_path("reviewer")).symlink_to(tmp_path / "secret")
    text = job_prompt.agent_prompt(context(config_mod.load(env={})), order(), worktree)
    assert "SECRET-OUTSIDE" not in text
    assert ROLE_TEXTS["reviewer"].strip() in text


def test_an_operator_file_gone_since_start_up_falls_back(worktree: Path, tmp_path: Path) -> None:
    (tmp_path / "ops.md").write_text("OPERATOR-PROSE")
    cfg = with_instructions("reviewer", tmp_path / "ops.md")
    (tmp_path / "ops.md").unlink()
    text = job_prompt.agent_prompt(context(cfg), order(), worktree)
    assert ROLE_TEXTS["reviewer"].strip() in text


def test_only_the_earlier_artifacts_present_in_the_worktree_are_listed(worktree: Path) -> None:
    folder = worktree / "docs" / "work-items" / ITEM
    (folder / "06-adr").mkdir(parents=True)
    (folder / "01-brd.md").write_text("---\ntype: brd\n---\n")
    (folder / "06-adr" / "0002-b.md").write_text("b")
    (folder / "06-adr" / "0001-a.md").write_text("a")
    (folder / "06-adr" / "notes.txt").write_text("not an ADR")
    (folder / "12-review.md").write_text("the stage's own verdict, not an earlier artifact")
    text = job_prompt.agent_prompt(context(config_mod.load(env={})), order(), worktree)
    listed = text.split("## Artifacts of earlier stages\n\n", 1)[1].split("\n\n", 1)[0]
    assert listed.splitlines() == [
        f"- `docs/work-items/{ITEM}/01-brd.md`",
        f"- `docs/work-items/{ITEM}/06-adr/0001-a.md`",
        f"- `docs/work-items/{ITEM}/06-adr/0002-b.md`",
    ]
