"""What a fake model answers: a script of file writes and a final text, plus fault modes."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FaultMode = Literal["status", "hang", "stall"]


@dataclass(frozen=True)
class WriteFile:
    """One tool call that writes `content` to `path` (relative to the script's workdir)."""

    path: str
    content: str


@dataclass(frozen=True)
class Fault:
    """An answer instead of the script: an HTTP error, no headers at all, or a stalled stream."""

    mode: FaultMode
    status: int = 0
    retry_after_s: int | None = None
    message: str = ""


RATE_LIMITED = Fault("status", 429, retry_after_s=1, message="fake rate limit")
SERVER_ERROR = Fault("status", 500, message="fake internal error")
OVERLOADED = Fault("status", 529, message="fake overloaded")
UNAUTHORIZED = Fault("status", 401, message="invalid x-api-key")
FORBIDDEN = Fault("status", 403, message="fake forbidden")
BAD_REQUEST = Fault("status", 400, message="fake bad request")
HANG = Fault("hang")
STALL = Fault("stall")


@dataclass
class Script:
    """One write per tool turn, then `final_text`; every reply reports the same usage.

    The turn a request is at is counted from the tool results it carries, so a retried request
    gets the same answer. `whole_format` answers tool-less chat requests in Aider's "whole"
    edit format (all files at once) instead of a plain title.
    """

    workdir: Path
    writes: list[WriteFile] = field(default_factory=list)
    final_text: str = "Done: wrote the file."
    input_tokens: int = 123
    output_tokens: int = 45
    cached_tokens: int = 0
    whole_format: bool = False

    def observe(self, raw: str) -> None:
        """See a request's raw body before it is answered; a plain script ignores it."""
        del raw

    def turn(self, tool_results: int) -> WriteFile | None:
        """The write for a request that already carries `tool_results` results, or None."""
        return self.writes[tool_results] if tool_results < len(self.writes) else None

    def absolute(self, write: WriteFile) -> str:
        return str(self.workdir / write.path)

    def shell_command(self, write: WriteFile) -> str:
        return f"printf %s {shlex.quote(write.content)} > {shlex.quote(self.absolute(write))}"

    def apply_patch(self, write: WriteFile) -> str:
        body = "".join(f"+{line}\n" for line in write.content.splitlines())
        return f"*** Begin Patch\n*** Add File: {write.path}\n{body}*** End Patch\n"

    def whole_text(self) -> str:
        parts = ["I'll create the files.\n"]
        for write in self.writes:
            parts.append(f"\n{write.path}\n```\n{write.content.rstrip(chr(10))}\n```\n")
        return "".join(parts)


@dataclass(frozen=True)
class LoggedRequest:
    """A request as the fake received it; `body` is the decoded JSON (empty if not JSON)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: str
