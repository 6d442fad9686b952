"""Claude Code (`claude -p --output-format stream-json --verbose`)."""

from __future__ import annotations

import re
from typing import Any

from gateways.agents.base import (
    PERMISSION_DENIED,
    SUCCESS,
    Activity,
    AgentRequest,
    AgentResult,
    JsonLinesParser,
    LaunchPlan,
    Usage,
    base_env,
    failure,
    home_dirs,
    int_field,
)

WRITE_TOOLS = frozenset({"Write", "Edit", "MultiEdit", "NotebookEdit"})
_REFUSED = re.compile(r"is disabled|No such tool available|permission|not allowed|denied", re.I)
"""A write tool's error that means the session refused the tool, not that the edit failed."""


class ClaudeAdapter:
    """Prompt as the `-p` argument, stdin closed; one NDJSON event per line, a `result` last.

    `skip_permissions` adds `--dangerously-skip-permissions`, which exits at once as root
    unless IS_SANDBOX=1 (set when the request says it runs as root). Without it, writes are
    denied and the run still "succeeds": the parser reports permission_denied.
    """

    name = "claude"

    def __init__(self, *, skip_permissions: bool = True) -> None:
        self.skip_permissions = skip_permissions

    def plan(self, request: AgentRequest) -> LaunchPlan:
        home = request.run_dir / "home"
        env = base_env(request, home)
        env.update(
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            DISABLE_AUTOUPDATER="1",
            CLAUDE_CODE_MAX_RETRIES=str(request.max_retries),
            API_TIMEOUT_MS=str(int(request.request_timeout_s * 1000)),
        )
        if request.as_root:
            env["IS_SANDBOX"] = "1"
        if request.base_url is not None:
            env["ANTHROPIC_BASE_URL"] = request.base_url
        if request.api_key is not None:
            env["ANTHROPIC_API_KEY"] = request.api_key
        argv = [request.binary, "-p", request.prompt, "--output-format", "stream-json"]
        argv.append("--verbose")
        if self.skip_permissions:
            argv.append("--dangerously-skip-permissions")
        if request.model:
            argv += ["--model", request.model]
        argv += request.extra_args
        return LaunchPlan(argv=tuple(argv), env=env, cwd=request.workdir, dirs=home_dirs(home))

    def parser(self) -> ClaudeParser:
        return ClaudeParser()


def _usage(raw: object) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(
        input_tokens=int_field(raw, "input_tokens") + int_field(raw, "cache_creation_input_tokens"),
        output_tokens=int_field(raw, "output_tokens"),
        cached_tokens=int_field(raw, "cache_read_input_tokens"),
    )


class ClaudeParser(JsonLinesParser):
    """Reads stream-json; usage and cost come only from the final `result` line."""

    def __init__(self) -> None:
        super().__init__()
        self._result: dict[str, Any] | None = None
        self._per_message: dict[str, Usage] = {}
        self._last_retry_status: int | None = None
        self._writes_done = 0
        self._write_calls: set[str] = set()
        self._writes_refused = 0

    @property
    def usage(self) -> Usage:
        if self._result is not None:
            return _usage(self._result.get("usage"))
        total = Usage()
        for usage in self._per_message.values():
            total = total + usage
        return total

    def on_event(self, event: dict[str, Any]) -> list[Activity]:
        match event.get("type"), event.get("subtype"):
            case "system", "init":
                return [Activity(kind="started", detail=str(event.get("model", "")))]
            case "system", "api_retry":
                status = event.get("error_status")
                self._last_retry_status = status if isinstance(status, int) else None
                return [Activity(kind="retry", detail=f"{status} {event.get('error', '')}")]
            case "assistant", _:
                return self._assistant(event)
            case "user", _:
                result = event.get("tool_use_result")
                if isinstance(result, dict) and result.get("type") in ("create", "update"):
                    self._writes_done += 1
                self._count_refused(event)
                return [Activity(kind="tool", detail="tool_result")]
            case "result", _:
                self._result = event
                return [Activity(kind="usage", usage=self.usage)]
            case _:
                return [Activity(kind="text", detail=str(event.get("type", "")))]

    def _count_refused(self, event: dict[str, Any]) -> None:
        # A tool taken away (`--disallowedTools`) never shows in `permission_denials`: the
        # call just errors, and the run ends "successfully" having written nothing.
        message = event.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if (
                isinstance(block, dict)
                and block.get("is_error")
                and block.get("tool_use_id") in self._write_calls
                and _REFUSED.search(str(block.get("content", "")))
            ):
                self._writes_refused += 1

    def _assistant(self, event: dict[str, Any]) -> list[Activity]:
        message = event.get("message")
        if not isinstance(message, dict):
            return []
        # One assistant message arrives once per content block with the same id and usage.
        self._per_message[str(message.get("id", len(self._per_message)))] = _usage(
            message.get("usage")
        )
        activities = []
        for block in message.get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                if block.get("name") in WRITE_TOOLS:
                    self._write_calls.add(str(block.get("id", "")))
                activities.append(Activity(kind="tool", detail=str(block.get("name", ""))))
            elif isinstance(block, dict) and block.get("type") == "text":
                activities.append(Activity(kind="text", detail=str(block.get("text", ""))[:200]))
        return [*activities, Activity(kind="usage", usage=self.usage)]

    def finish(self, exit_code: int | None) -> AgentResult:
        result = self._result
        if result is None:
            detail = self.stderr_tail() or f"no result line (exit {exit_code})"
            return failure(
                detail, usage=self.usage, exit_code=exit_code, status=self._last_retry_status
            )
        text = str(result.get("result") or "")
        errors = result.get("errors")
        if isinstance(errors, list) and errors:
            text = " ".join([text, *map(str, errors)]).strip()
        cost = result.get("total_cost_usd")
        cost_usd = float(cost) if isinstance(cost, int | float) else None
        failed = bool(result.get("is_error")) or str(result.get("subtype", "")).startswith("error")
        if failed:
            status = result.get("api_error_status")
            return failure(
                text,
                usage=self.usage,
                exit_code=exit_code,
                status=status if isinstance(status, int) else None,
                cost_usd=cost_usd,
            )
        # A denied call may show both ways (a denial and an erroring result): count it once.
        denied = max(len(result.get("permission_denials") or []), self._writes_refused)
        if denied and self._writes_done == 0:
            return AgentResult(
                outcome=PERMISSION_DENIED,
                usage=self.usage,
                cost_usd=cost_usd,
                detail=f"{denied} tool call(s) denied: {text}",
                exit_code=exit_code,
            )
        return AgentResult(
            outcome=SUCCESS, usage=self.usage, cost_usd=cost_usd, detail=text, exit_code=exit_code
        )
