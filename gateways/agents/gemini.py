"""Gemini CLI (`gemini -p --output-format json|stream-json --yolo`)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from gateways.agents.base import (
    AUTH_REFUSED,
    SUCCESS,
    Activity,
    AgentRequest,
    AgentResult,
    LaunchPlan,
    Stream,
    Usage,
    base_env,
    failure,
    home_dirs,
    int_field,
    json_object,
)

SETTINGS = {
    # Without an auth type the CLI exits 41; with folder trust on, a new worktree is
    # "untrusted" and --yolo is silently downgraded to asking (which headless means deny).
    "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
}

_HTTP_STATUSES = (429, 529, 503, 500, 401, 403, 400)
EXIT_AUTH = 41


class GeminiAdapter:
    """Prompt as the `-p` argument, stdin closed; settings in the run's own ~/.gemini."""

    name = "gemini"

    def __init__(self, *, output_format: str = "stream-json") -> None:
        self.output_format = output_format

    def plan(self, request: AgentRequest) -> LaunchPlan:
        home = request.run_dir / "home"
        env = base_env(request, home)
        env["GEMINI_CLI_TRUST_WORKSPACE"] = "true"
        if request.base_url is not None:
            env["GOOGLE_GEMINI_BASE_URL"] = request.base_url
        if request.api_key is not None:
            env["GEMINI_API_KEY"] = request.api_key
        argv = [request.binary, "-p", request.prompt, "--output-format", self.output_format]
        argv.append("--yolo")
        if request.model:
            argv += ["-m", request.model]
        argv += request.extra_args
        settings = json.dumps(SETTINGS, indent=2) + "\n"
        return LaunchPlan(
            argv=tuple(argv),
            env=env,
            cwd=request.workdir,
            files={home / ".gemini" / "settings.json": settings},
            dirs=home_dirs(home),
        )

    def parser(self) -> GeminiParser:
        return GeminiParser()


def _stats_usage(stats: object) -> Usage:
    """Usage from `stats`: the totals of stream-json, or the per-model `tokens` of json."""
    if not isinstance(stats, dict):
        return Usage()
    if "input_tokens" in stats:
        return _counts(stats, "input_tokens", "output_tokens")
    total = Usage()
    models = stats.get("models")
    for model in models.values() if isinstance(models, dict) else ():
        tokens = model.get("tokens") if isinstance(model, dict) else None
        if isinstance(tokens, dict):
            total = total + _counts(tokens, "prompt", "candidates")
    return total


def _counts(raw: dict[str, Any], prompt_key: str, output_key: str) -> Usage:
    """Gemini's prompt count includes the tokens served from the cache."""
    cached = int_field(raw, "cached")
    return Usage(
        input_tokens=max(int_field(raw, prompt_key) - cached, 0),
        output_tokens=int_field(raw, output_key),
        cached_tokens=cached,
    )


def _document(text: str) -> dict[str, Any] | None:
    """The JSON object in `text` (json mode pretty-prints one object over many lines)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        value = json.loads(text[start:])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class GeminiParser:
    """Reads JSONL events (stream-json) or the one JSON document (json) on stdout.

    On an API failure stdout is empty, the error JSON is on stderr and the exit code is the
    HTTP status modulo 256.
    """

    def __init__(self) -> None:
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._result: dict[str, Any] | None = None
        self._errors: list[str] = []

    @property
    def usage(self) -> Usage:
        return _stats_usage(self._result.get("stats")) if self._result else Usage()

    def feed(self, line: str, stream: Stream = "stdout") -> list[Activity]:
        if stream == "stderr":
            # Enough for the error document printed at exit; not a whole run of warnings.
            self._stderr = [*self._stderr[-199:], line]
            return []
        event = json_object(line)
        if event is None or "type" not in event:
            self._stdout.append(line)
            return [Activity(kind="text")] if line.strip() else []
        match event.get("type"):
            case "init":
                return [Activity(kind="started", detail=str(event.get("model", "")))]
            case "tool_use" | "tool_result":
                return [Activity(kind="tool", detail=str(event.get("tool_name", "")))]
            case "error":
                self._errors.append(str(event.get("message", "")))
                return [Activity(kind="error", detail=self._errors[-1])]
            case "result":
                self._result = event
                return [Activity(kind="usage", usage=self.usage)]
            case _:
                return [Activity(kind="text", detail=str(event.get("type")))]

    def finish(self, exit_code: int | None) -> AgentResult:
        if self._result is None:
            self._result = _document("\n".join(self._stdout))
        final = self._result or {}
        error = final.get("error") or (_document("\n".join(self._stderr)) or {}).get("error")
        ok = exit_code == 0 and not error and final.get("status", "success") == "success"
        if ok and ("response" in final or "stats" in final):
            return AgentResult(outcome=SUCCESS, usage=self.usage, exit_code=exit_code)
        detail, status = _error_text(error, self._errors, self._stderr)
        failed = failure(
            detail or f"exit {exit_code}",
            usage=self.usage,
            exit_code=exit_code,
            status=status or _status_of_exit(exit_code),
        )
        if exit_code == EXIT_AUTH:
            return msgspec.structs.replace(failed, outcome=AUTH_REFUSED)
        return failed


def _error_text(error: object, events: list[str], stderr: list[str]) -> tuple[str, int | None]:
    if isinstance(error, dict):
        code = error.get("code")
        return str(error.get("message", "")), code if isinstance(code, int) else None
    if events:
        return events[-1], None
    return " ".join(line.strip() for line in stderr[-5:] if line.strip()), None


def _status_of_exit(exit_code: int | None) -> int | None:
    if exit_code is None or exit_code < 2:
        return None
    return next((s for s in _HTTP_STATUSES if s % 256 == exit_code), None)
