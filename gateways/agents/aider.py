"""Aider (`aider --message`), plain-text output; it exits 0 even when every model call failed."""

from __future__ import annotations

import re

from gateways.agents.base import (
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
)

_TOKENS = re.compile(r"^Tokens: (?P<counts>.+?) received\.(?: Cost: (?P<cost>.*))?$")
_COUNT = re.compile(r"([\d.]+)([kKmM]?) (sent|cache write|cache hit|received)")
_SESSION_COST = re.compile(r"\$([\d.]+) session")
_ERROR = re.compile(r"\b(?:litellm\.\w+|\w+(?:Error|Exception|Timeout))\b.*")
_RETRY = re.compile(r"Retrying in ([\d.]+) seconds")
_APPLIED = re.compile(r"^Applied edit to (.+)$")


def _count(number: str, suffix: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000}.get(suffix.lower(), 1)
    return round(float(number) * scale)


class AiderAdapter:
    """Prompt with `--message`, stdin closed; history files go to the run, not the worktree.

    Aider commits nothing (Conveyor owns the branch); `--yes-always` lets it create files
    the prompt did not name.
    """

    name = "aider"

    def plan(self, request: AgentRequest) -> LaunchPlan:
        home = request.run_dir / "home"
        env = base_env(request, home)
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        argv = [request.binary]
        if request.base_url is not None:
            argv += ["--openai-api-base", request.base_url.rstrip("/") + "/v1"]
            if request.model:
                argv += ["--model", f"openai/{request.model}"]
            if request.api_key is not None:
                env["OPENAI_API_KEY"] = request.api_key
        elif request.model:
            argv += ["--model", request.model]
        argv += [
            "--yes-always",
            "--no-auto-commits",
            "--no-dirty-commits",
            "--no-gitignore",
            "--no-check-update",
            "--no-show-model-warnings",
            "--analytics-disable",
            "--no-pretty",
            "--no-fancy-input",
            "--timeout",
            str(int(request.request_timeout_s)),
            "--chat-history-file",
            str(request.run_dir / "aider.chat.history.md"),
            "--input-history-file",
            str(request.run_dir / "aider.input.history"),
            *request.extra_args,
            "--message",
            request.prompt,
        ]
        return LaunchPlan(argv=tuple(argv), env=env, cwd=request.workdir, dirs=home_dirs(home))

    def parser(self) -> AiderParser:
        return AiderParser()


class AiderParser:
    """Sums the per-message `Tokens:` lines; the last `$… session` figure is the cost.

    The last thing that happened decides: a model reply after the errors is success, an
    error after the last reply is the outcome.
    """

    def __init__(self) -> None:
        self._usage = Usage()
        self._cost: float | None = None
        self._replies = 0
        self._edits = 0
        self._last_error: str | None = None

    @property
    def usage(self) -> Usage:
        return self._usage

    def feed(self, line: str, stream: Stream = "stdout") -> list[Activity]:
        del stream
        text = line.strip()
        if match := _TOKENS.match(text):
            return self._tokens(match)
        if match := _APPLIED.match(text):
            self._edits += 1
            return [Activity(kind="tool", detail=match.group(1))]
        if match := _RETRY.search(text):
            return [Activity(kind="retry", detail=text)]
        if match := _ERROR.search(text):
            self._last_error = match.group(0)
            return [Activity(kind="error", detail=self._last_error[:200])]
        return [Activity(kind="text", detail=text[:200])] if text else []

    def _tokens(self, match: re.Match[str]) -> list[Activity]:
        counts = {kind: _count(n, s) for n, s, kind in _COUNT.findall(match.group(0))}
        self._usage = self._usage + Usage(
            input_tokens=counts.get("sent", 0) + counts.get("cache write", 0),
            output_tokens=counts.get("received", 0),
            cached_tokens=counts.get("cache hit", 0),
        )
        if cost := _SESSION_COST.search(match.group("cost") or ""):
            self._cost = float(cost.group(1))
        self._replies += 1
        self._last_error = None
        return [Activity(kind="usage", usage=self._usage)]

    def finish(self, exit_code: int | None) -> AgentResult:
        if self._last_error is None and self._replies > 0 and exit_code == 0:
            return AgentResult(
                outcome=SUCCESS, usage=self._usage, cost_usd=self._cost, exit_code=exit_code
            )
        detail = self._last_error or f"no model reply (exit {exit_code})"
        return failure(detail, usage=self._usage, exit_code=exit_code, cost_usd=self._cost)
