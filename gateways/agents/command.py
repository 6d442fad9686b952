"""Any other program as an agent: an argv template, judged by its exit code.

A Claude-style final `result` line, when the program prints one, supplies usage and cost.
"""

from __future__ import annotations

from conveyor.errors import InvalidField
from gateways.agents.base import (
    ERROR,
    SUCCESS,
    Activity,
    AgentRequest,
    AgentResult,
    LaunchPlan,
    Stream,
    Usage,
    json_object,
)
from gateways.agents.claude import ClaudeParser

PROMPT = "{prompt}"
WORKDIR = "{workdir}"


class CommandAdapter:
    """`argv` with `{prompt}` and `{workdir}` replaced; no `{prompt}` sends it on stdin.

    The program keeps the caller's environment (HOME included): it is the operator's own.
    """

    name = "command"

    def __init__(self, argv: tuple[str, ...]) -> None:
        if not argv:
            raise InvalidField("command", "must not be empty")
        self.argv = argv

    def plan(self, request: AgentRequest) -> LaunchPlan:
        def fill(arg: str) -> str:
            return arg.replace(PROMPT, request.prompt).replace(WORKDIR, str(request.workdir))

        argv = tuple(fill(arg) for arg in (*self.argv, *request.extra_args))
        by_argument = any(PROMPT in arg for arg in self.argv)
        return LaunchPlan(
            argv=argv,
            env=dict(request.env),
            cwd=request.workdir,
            stdin=None if by_argument else request.prompt,
        )

    def parser(self) -> CommandParser:
        return CommandParser()


class CommandParser:
    """Every line is activity; the exit code decides unless a `result` line says more."""

    def __init__(self) -> None:
        self._claude = ClaudeParser()
        self._has_result = False
        self._stderr: list[str] = []

    @property
    def usage(self) -> Usage:
        return self._claude.usage if self._has_result else Usage()

    def feed(self, line: str, stream: Stream = "stdout") -> list[Activity]:
        if stream == "stderr":
            if line.strip():
                self._stderr = [*self._stderr[-9:], line.strip()]
            return [Activity(kind="text")]
        event = json_object(line)
        if event is not None and event.get("type") == "result":
            self._has_result = True
            return self._claude.feed(line, stream)
        return [Activity(kind="text", detail=line.strip()[:200])] if line.strip() else []

    def finish(self, exit_code: int | None) -> AgentResult:
        if self._has_result:
            claimed = self._claude.finish(exit_code)
            if exit_code == 0 or claimed.outcome != SUCCESS:
                return claimed
        if exit_code == 0:
            return AgentResult(outcome=SUCCESS, exit_code=exit_code)
        detail = " ".join(self._stderr[-3:]) or f"exit code {exit_code}"
        return AgentResult(outcome=ERROR, usage=self.usage, detail=detail, exit_code=exit_code)
