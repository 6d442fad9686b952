"""Role instruction files: the operator's `agents.<role>.instructions` and the repository's.

`conveyor.config.load` makes relative paths relative to the config file and checks
every configured file at start-up; the Launcher's jobs read the files again at each
launch with the same bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigError
from conveyor.pipeline import AGENT_ROLES

if TYPE_CHECKING:
    from conveyor.config import Config

INSTRUCTIONS_MAX_BYTES = 64 * 1024
"""Largest role instruction file read (operator file or repository file)."""


def read_instructions(path: str) -> str:
    """The text of an instruction file; raises OSError or ValueError (too large, not UTF-8)."""
    with Path(path).expanduser().open("rb") as handle:
        data = handle.read(INSTRUCTIONS_MAX_BYTES + 1)
    if len(data) > INSTRUCTIONS_MAX_BYTES:
        raise ValueError(f"larger than {INSTRUCTIONS_MAX_BYTES} bytes")
    return data.decode()


def anchor_instructions(data: dict[str, Any], base: Path) -> None:
    """Make relative `agents.<role>.instructions` paths (raw config) relative to `base`."""
    agents = data.get("agents")
    for table in agents.values() if isinstance(agents, dict) else ():
        path = table.get("instructions") if isinstance(table, dict) else None
        if isinstance(path, str) and path and not Path(path).expanduser().is_absolute():
            table["instructions"] = str(base / path)


def check_instructions(cfg: Config) -> None:
    """Every configured role instruction file is readable now, or start-up stops."""
    for role in AGENT_ROLES:
        path = cfg.agents.for_role(role).instructions
        if not path:
            continue
        try:
            read_instructions(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"agents.{role}.instructions: cannot use {path!r}: {err}") from err
