"""The demo agent's job, read from the launcher's environment, and how it writes.

Everything the agent writes goes through `write_file`, which refuses to follow a
symlink out of the worktree; progress goes to stdout one line at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

from conveyor import validate
from conveyor.errors import ConveyorError, InvalidField
from conveyor.pipeline import (
    AGENT_ROLES,
    DEPLOY_GATES,
    GATE_DEPLOY,
    GATE_STAGING,
    ROLE_DEPLOYER,
    WORK_ITEMS_DIR,
)

ROLES = frozenset(AGENT_ROLES)
"""Roles the demo agent can play (`CONVEYOR_ROLE`)."""

DEFAULT_STAGE_GATES = {"deploy-staging": GATE_STAGING, "deploy": GATE_DEPLOY}
"""Gates of the default pipeline's deploy stages, for a launcher that sets no `CONVEYOR_GATE`."""

_VISIT = re.compile(r"[1-9][0-9]{0,8}", re.ASCII)
_YAML_WIDTH = 4096
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class UnsafePath(ConveyorError):
    """A path the agent was about to write leads outside the worktree (a symlink)."""


@dataclass(frozen=True)
class Job:
    """What the launcher asked for, read from the environment and stdin."""

    role: str
    item_id: str
    title: str
    repo: str
    stage: str
    gate: str
    """The stage's gate: which verdict file the deployer writes."""
    visit: int
    attempt: int
    check_command: list[str] | None
    deploy_command: list[str] | None
    prompt: str
    root: Path

    @property
    def slug_id(self) -> str:
        """The id as a Python module name: `DEMO-1` -> `demo_1`."""
        return self.item_id.lower().replace("-", "_")

    @property
    def item_dir(self) -> tuple[str, ...]:
        """Path parts of the work item's artifact directory, relative to the worktree."""
        return (*WORK_ITEMS_DIR.split("/"), self.item_id)


def _clean_line(value: str, limit: int = validate.MAX_TITLE) -> str:
    """Make untrusted text a single printable line: no controls, no line breaks."""
    kept = "".join(" " if unicodedata.category(ch) in _DROPPED_CATEGORIES else ch for ch in value)
    return " ".join(kept.split())[:limit].strip()


def _positive_int(env: dict[str, str], name: str) -> int:
    raw = env.get(name, "").strip() or "1"
    if not _VISIT.fullmatch(raw):
        raise InvalidField(name, "must be a positive integer")
    return int(raw)


def _argv(env: dict[str, str], name: str) -> list[str] | None:
    """Decode a JSON array argv; absent, empty or `[]` means no command."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as err:
        raise InvalidField(name, "must be a JSON array of strings") from err
    if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
        raise InvalidField(name, "must be a JSON array of strings")
    if not value:
        return None
    if not value[0] or any("\x00" in arg for arg in value):
        raise InvalidField(name, "must name a program and contain no NUL bytes")
    return value


def load_job(env: dict[str, str], prompt: str, root: Path) -> Job:
    """Validate the launcher's environment; raise `InvalidField` naming the variable."""
    role = env.get("CONVEYOR_ROLE", "")
    if role not in ROLES:
        raise InvalidField("CONVEYOR_ROLE", f"must be one of {', '.join(sorted(ROLES))}")
    item_id = validate.work_item_id(env.get("CONVEYOR_WORK_ITEM"), "CONVEYOR_WORK_ITEM")
    stage = env.get("CONVEYOR_STAGE", "")
    gate = env.get("CONVEYOR_GATE")
    if gate is None:
        gate = DEFAULT_STAGE_GATES.get(stage, "")
        if role == ROLE_DEPLOYER and not gate:
            raise InvalidField("CONVEYOR_STAGE", "the deployer runs on deploy-staging or deploy")
    elif role == ROLE_DEPLOYER and gate not in DEPLOY_GATES:
        allowed = " or ".join(sorted(DEPLOY_GATES))
        raise InvalidField("CONVEYOR_GATE", f"the deployer runs on a stage gated by {allowed}")
    return Job(
        role=role,
        item_id=item_id,
        title=_clean_line(env.get("CONVEYOR_TITLE", "")) or item_id,
        repo=_clean_line(env.get("CONVEYOR_REPO", ""), 64),
        stage=_clean_line(stage, 64),
        gate=gate,
        visit=_positive_int(env, "CONVEYOR_VISIT"),
        attempt=_positive_int(env, "CONVEYOR_ATTEMPT"),
        check_command=_argv(env, "CONVEYOR_CHECK_COMMAND"),
        deploy_command=_argv(env, "CONVEYOR_DEPLOY_COMMAND"),
        prompt=prompt,
        root=root,
    )


def say(line: str) -> None:
    """Print one progress line to stdout now."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def warn(line: str) -> None:
    """Print a warning to stderr now."""
    sys.stderr.write(f"demo-agent: warning: {line}\n")
    sys.stderr.flush()


def result_line(role: str, outcome: str) -> None:
    """Print the JSON `result` line the launcher reads usage from."""
    say(
        json.dumps(
            {
                "type": "result",
                "role": role,
                "outcome": outcome,
                "usage": {"input_tokens": 0, "output_tokens": 0},
                "total_cost_usd": 0.0,
            }
        )
    )


def to_yaml(data: object) -> str:
    """Render `data` as block YAML, keys in their given order."""
    return yaml.safe_dump(
        data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=_YAML_WIDTH
    )


def front_matter(fields: dict[str, object], body: str) -> str:
    """Render a markdown artifact: YAML front matter between `---` lines, then `body`."""
    return f"---\n{to_yaml(fields)}---\n\n{body.rstrip()}\n"


def _ensure_dir(root: Path, parts: tuple[str, ...]) -> Path:
    """Create `root/parts...` one level at a time, refusing any symlink on the way."""
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise UnsafePath(f"{current} is a symlink; refusing to write through it")
        current.mkdir(exist_ok=True)
    return current


def write_file(root: Path, relative: str, text: str) -> Path:
    """Atomically write `text` to `root/relative`; a symlink at the target is replaced."""
    *dirs, name = relative.split("/")
    directory = _ensure_dir(root, tuple(dirs))
    target = directory / name
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(text.encode())
    os.replace(tmp, target)
    return target


def artifact(job: Job, name: str) -> str:
    """Path of artifact `name` relative to the worktree."""
    return "/".join((*job.item_dir, name))


def quote(text: str) -> str:
    """`text` as a markdown block quote."""
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())
