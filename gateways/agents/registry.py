"""The adapters by the name a role's configuration gives: `agents.developer.cli = "claude"`."""

from __future__ import annotations

from conveyor.errors import InvalidField
from gateways.agents.aider import AiderAdapter
from gateways.agents.base import AgentAdapter
from gateways.agents.claude import ClaudeAdapter
from gateways.agents.codex import CodexAdapter
from gateways.agents.command import CommandAdapter
from gateways.agents.gemini import GeminiAdapter
from gateways.agents.opencode import OpenCodeAdapter

CLIS = ("claude", "codex", "gemini", "opencode", "aider", "command")
"""Every value `agents.<role>.cli` accepts; "command" runs `agents.<role>.command`."""


def adapter_for(cli: str, *, command: tuple[str, ...] = (), field: str = "cli") -> AgentAdapter:
    """The adapter for `cli`; `field` names the config key in the error for an unknown one."""
    match cli:
        case "claude":
            return ClaudeAdapter()
        case "codex":
            return CodexAdapter()
        case "gemini":
            return GeminiAdapter()
        case "opencode":
            return OpenCodeAdapter()
        case "aider":
            return AiderAdapter()
        case "command" if command:
            return CommandAdapter(command)
        case "command":
            raise InvalidField(field, "cli = 'command' needs a command")
        case _:
            raise InvalidField(field, f"unknown agent CLI {cli!r}; one of {', '.join(CLIS)}")
