"""OpenAI Codex CLI (`codex exec --json`), configured through a per-run `CODEX_HOME`."""

from __future__ import annotations

import json
from typing import Any

from gateways.agents.base import (
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

API_KEY_ENV = "CONVEYOR_MODEL_API_KEY"
"""The variable the per-run provider reads its key from (sent as a Bearer token)."""


def _toml(value: object) -> str:
    # JSON strings, integers and booleans are valid TOML values.
    return json.dumps(value)


def config_toml(request: AgentRequest) -> str:
    """Codex's config.toml: never ask, full access, short retries, and the provider if any."""
    lines = [
        'approval_policy = "never"',
        'sandbox_mode = "danger-full-access"',
    ]
    if request.model:
        lines.insert(0, f"model = {_toml(request.model)}")
    if request.base_url is not None:
        lines += [
            'model_provider = "conveyor"',
            "",
            "[model_providers.conveyor]",
            'name = "Conveyor"',
            f"base_url = {_toml(request.base_url.rstrip('/') + '/v1')}",
            'wire_api = "responses"',
            f"env_key = {_toml(API_KEY_ENV)}",
            f"request_max_retries = {request.max_retries}",
            f"stream_max_retries = {request.max_retries}",
            f"stream_idle_timeout_ms = {int(request.stall_s * 1000)}",
        ]
    return "\n".join(lines) + "\n"


class CodexAdapter:
    """Prompt as the positional argument; stdin must be /dev/null or exec waits for its end.

    Codex has no request timeout before response headers and loops on a refused
    connection: the caller's timeout and stall brake are what end such a run.
    """

    name = "codex"

    def plan(self, request: AgentRequest) -> LaunchPlan:
        home = request.run_dir / "home"
        codex_home = home / ".codex"
        env = base_env(request, home)
        env["CODEX_HOME"] = str(codex_home)
        if request.api_key is not None:
            key_env = API_KEY_ENV if request.base_url is not None else "CODEX_API_KEY"
            env[key_env] = request.api_key
        argv = [request.binary, "exec", "--json", "--skip-git-repo-check"]
        argv += request.extra_args
        argv.append(request.prompt)
        return LaunchPlan(
            argv=tuple(argv),
            env=env,
            cwd=request.workdir,
            files={codex_home / "config.toml": config_toml(request)},
            dirs=home_dirs(home),
        )

    def parser(self) -> CodexParser:
        return CodexParser()


class CodexParser(JsonLinesParser):
    """JSONL events; `turn.completed.usage` is the thread's running total, not a delta."""

    def __init__(self) -> None:
        super().__init__()
        self._usage = Usage()
        self._completed = False
        self._failure: str | None = None
        self._last_error = ""

    @property
    def usage(self) -> Usage:
        return self._usage

    def on_event(self, event: dict[str, Any]) -> list[Activity]:
        kind = event.get("type")
        if kind == "thread.started":
            return [Activity(kind="started", detail=str(event.get("thread_id", "")))]
        if kind == "turn.completed":
            self._completed = True
            self._usage = _usage(event.get("usage"))
            return [Activity(kind="usage", usage=self._usage)]
        if kind == "turn.failed":
            error = event.get("error")
            self._failure = str(error.get("message", "")) if isinstance(error, dict) else ""
            return [Activity(kind="error", detail=self._failure)]
        if kind == "error":
            self._last_error = str(event.get("message", ""))
            return [Activity(kind="retry", detail=self._last_error)]
        if isinstance(kind, str) and kind.startswith("item."):
            return [_item_activity(event.get("item"))]
        return [Activity(kind="text", detail=str(kind))]

    def finish(self, exit_code: int | None) -> AgentResult:
        if self._failure is None and self._completed and exit_code == 0:
            return AgentResult(outcome=SUCCESS, usage=self._usage, exit_code=exit_code)
        detail = self._failure or self._last_error or self.stderr_tail()
        detail = detail or f"no turn.completed (exit {exit_code})"
        return failure(detail, usage=self._usage, exit_code=exit_code)


def _usage(raw: object) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    cached = int_field(raw, "cached_input_tokens")
    return Usage(
        input_tokens=max(int_field(raw, "input_tokens") - cached, 0),
        output_tokens=int_field(raw, "output_tokens"),
        cached_tokens=cached,
    )


def _item_activity(item: Any) -> Activity:
    if not isinstance(item, dict):
        return Activity(kind="text")
    item_type = str(item.get("type", ""))
    if item_type in ("command_execution", "file_change", "mcp_tool_call", "web_search"):
        return Activity(kind="tool", detail=item_type)
    if item_type == "error":
        return Activity(kind="error", detail=str(item.get("message", ""))[:200])
    return Activity(kind="text", detail=str(item.get("text", item_type))[:200])
