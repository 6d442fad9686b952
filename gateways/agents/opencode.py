"""OpenCode (`opencode run --format json --auto`), configured through the run's opencode.json."""

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
PROVIDER = "conveyor"
DEFAULT_MODEL = "default"


def config_json(request: AgentRequest) -> str:
    """opencode.json: a Chat Completions provider at the base URL, or just the model."""
    config: dict[str, Any] = {"$schema": "https://opencode.ai/config.json", "autoupdate": False}
    if request.base_url is not None:
        model = request.model or DEFAULT_MODEL
        config["provider"] = {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Conveyor",
                "options": {
                    "baseURL": request.base_url.rstrip("/") + "/v1",
                    "apiKey": "{env:" + API_KEY_ENV + "}",
                    "timeout": int(request.request_timeout_s * 1000),
                },
                "models": {model: {"name": model, "tool_call": True}},
            }
        }
        config["model"] = f"{PROVIDER}/{model}"
    elif request.model:
        config["model"] = request.model
    return json.dumps(config, indent=2) + "\n"


class OpenCodeAdapter:
    """Prompt as the positional argument, stdin closed; `--auto` approves every permission."""

    name = "opencode"

    def plan(self, request: AgentRequest) -> LaunchPlan:
        home = request.run_dir / "home"
        env = base_env(request, home)
        env.update(
            OPENCODE_DISABLE_AUTOUPDATE="1",
            OPENCODE_DISABLE_MODELS_FETCH="1",
            OPENCODE_DISABLE_LSP_DOWNLOAD="1",
        )
        if request.api_key is not None:
            env[API_KEY_ENV] = request.api_key
        argv = [request.binary, "run", "--format", "json", "--auto", *request.extra_args]
        argv.append(request.prompt)
        config = home / ".config" / "opencode" / "opencode.json"
        return LaunchPlan(
            argv=tuple(argv),
            env=env,
            cwd=request.workdir,
            files={config: config_json(request)},
            dirs=home_dirs(home),
        )

    def parser(self) -> OpenCodeParser:
        return OpenCodeParser()


class OpenCodeParser(JsonLinesParser):
    """JSONL events; usage and cost are the sums over `step_finish` parts."""

    def __init__(self) -> None:
        super().__init__()
        self._usage = Usage()
        self._cost = 0.0
        self._steps = 0
        self._errors: list[tuple[str, int | None, float | None]] = []

    @property
    def usage(self) -> Usage:
        return self._usage

    def on_event(self, event: dict[str, Any]) -> list[Activity]:
        part = event.get("part")
        part = part if isinstance(part, dict) else {}
        match event.get("type"):
            case "step_start":
                return [Activity(kind="started" if self._steps == 0 else "text")]
            case "step_finish":
                return self._step_finish(part)
            case "tool_use":
                return [Activity(kind="tool", detail=str(part.get("tool", "")))]
            case "error":
                self._errors.append(_error(event.get("error")))
                return [Activity(kind="error", detail=self._errors[-1][0])]
            case "text":
                return [Activity(kind="text", detail=str(part.get("text", ""))[:200])]
            case _:
                return [Activity(kind="text", detail=str(event.get("type", "")))]

    def _step_finish(self, part: dict[str, Any]) -> list[Activity]:
        self._steps += 1
        tokens = part.get("tokens")
        if isinstance(tokens, dict):
            cache = tokens.get("cache")
            cached = int_field(cache, "read") if isinstance(cache, dict) else 0
            self._usage = self._usage + Usage(
                input_tokens=int_field(tokens, "input"),
                output_tokens=int_field(tokens, "output") + int_field(tokens, "reasoning"),
                cached_tokens=cached,
            )
        cost = part.get("cost")
        if isinstance(cost, int | float):
            self._cost += float(cost)
        return [Activity(kind="usage", usage=self._usage)]

    def finish(self, exit_code: int | None) -> AgentResult:
        # An unknown model is priced at 0: that is "no cost reported", not "free".
        cost = self._cost if self._cost > 0 else None
        if exit_code == 0 and not self._errors and self._steps > 0:
            return AgentResult(
                outcome=SUCCESS, usage=self._usage, cost_usd=cost, exit_code=exit_code
            )
        detail, status, wait_s = (
            self._errors[-1] if self._errors else (self.stderr_tail(), None, None)
        )
        detail = detail or f"no step finished (exit {exit_code})"
        return failure(
            detail,
            usage=self._usage,
            exit_code=exit_code,
            status=status,
            cost_usd=cost,
            wait_s=wait_s,
        )


def _error(raw: object) -> tuple[str, int | None, float | None]:
    """Message, HTTP status and Retry-After of an `error` event (`{name, data: {...}}`)."""
    if not isinstance(raw, dict):
        return str(raw or ""), None, None
    data = raw.get("data")
    data = data if isinstance(data, dict) else {}
    status = data.get("statusCode")
    message = str(data.get("message") or raw.get("message") or raw.get("name") or "")
    headers = data.get("responseHeaders")
    wait = headers.get("retry-after") if isinstance(headers, dict) else None
    try:
        wait_s = float(wait) if isinstance(wait, str) else None
    except ValueError:
        wait_s = None  # an HTTP date; the caller's back-off applies
    return message, status if isinstance(status, int) else None, wait_s
