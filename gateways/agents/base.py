"""What every agent adapter shares: the request, the launch plan, the parser protocol, results.

An adapter is pure: `plan()` turns a request into argv, environment and files to write, and its
parser turns output lines into activity and a final `AgentResult`. Spawning, reading pipes and
killing belong to the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

Outcome = Literal[
    "success",
    "error",
    "rate_limited",
    "overloaded",
    "auth_refused",
    "context_exceeded",
    "permission_denied",
]
"""How a run ended, as far as the CLI's own output tells."""

SUCCESS: Outcome = "success"
ERROR: Outcome = "error"
RATE_LIMITED: Outcome = "rate_limited"
OVERLOADED: Outcome = "overloaded"
AUTH_REFUSED: Outcome = "auth_refused"
CONTEXT_EXCEEDED: Outcome = "context_exceeded"
PERMISSION_DENIED: Outcome = "permission_denied"

Stream = Literal["stdout", "stderr"]


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens of a run; `input_tokens` excludes prompt tokens served from the cache."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cached_tokens


class Activity(msgspec.Struct, frozen=True, kw_only=True):
    """One sign of life from a running agent; `usage` is the running total when it changed."""

    kind: Literal["started", "text", "tool", "retry", "usage", "error"]
    detail: str = ""
    usage: Usage | None = None


class AgentResult(msgspec.Struct, frozen=True, kw_only=True):
    """The end of a run: outcome, what it consumed, and the CLI's own words on failure."""

    outcome: Outcome
    usage: Usage = Usage()
    cost_usd: float | None = None
    """As the CLI reported it; None when it reports none (see `price_usd`)."""
    retry_after_s: float | None = None
    detail: str = ""
    exit_code: int | None = None


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True):
    """USD per million tokens; `cached_per_mtok` defaults to the input price."""

    input_per_mtok: float
    output_per_mtok: float
    cached_per_mtok: float | None = None


class AgentRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One run of one agent CLI.

    `run_dir` is private to the run: the adapter puts HOME and the CLI's config there.
    `env` is the inherited environment (at least PATH); `api_key` and `base_url` point the CLI
    at a model API other than its default. `max_retries` and `request_timeout_s` keep a failing
    run short; `stall_s` is how long a started stream may stay silent.
    """

    binary: str
    prompt: str
    workdir: Path
    run_dir: Path
    env: Mapping[str, str] = msgspec.field(default_factory=dict)
    model: str | None = None
    extra_args: tuple[str, ...] = ()
    base_url: str | None = None
    api_key: str | None = None
    as_root: bool = False
    max_retries: int = 2
    request_timeout_s: float = 60.0
    stall_s: float = 120.0


class LaunchPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What the caller does: write `files`, then run `argv` in `cwd` with exactly `env`.

    `stdin` is the text to send on standard input; None means /dev/null (never an open pipe:
    several CLIs wait for its end before they start).
    """

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    files: dict[Path, str] = msgspec.field(default_factory=dict)
    dirs: tuple[Path, ...] = ()
    stdin: str | None = None

    def materialize(self) -> None:
        """Create the run's directories and write its files (the one side effect of a plan)."""
        for directory in self.dirs:
            directory.mkdir(parents=True, exist_ok=True)
        for path, text in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


class OutputParser(Protocol):
    """Fed every line the CLI writes, in order; pure, so a recorded run replays exactly."""

    def feed(self, line: str, stream: Stream = "stdout") -> list[Activity]: ...

    def finish(self, exit_code: int | None) -> AgentResult: ...

    @property
    def usage(self) -> Usage: ...


class AgentAdapter(Protocol):
    """One agent CLI: how to launch it and how to read it."""

    name: str

    def plan(self, request: AgentRequest) -> LaunchPlan: ...

    def parser(self) -> OutputParser: ...


def base_env(request: AgentRequest, home: Path) -> dict[str, str]:
    """The inherited environment with HOME and the XDG directories moved into the run."""
    env = {k: v for k, v in request.env.items() if k != "CLAUDECODE"}
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env["XDG_DATA_HOME"] = str(home / ".local" / "share")
    env["XDG_STATE_HOME"] = str(home / ".local" / "state")
    env["XDG_CACHE_HOME"] = str(home / ".cache")
    env["TMPDIR"] = str(home / ".tmp")
    return env


def home_dirs(home: Path) -> tuple[Path, ...]:
    """The directories `base_env` points at that must exist before the CLI starts."""
    return (home, home / ".tmp")


def price_usd(model: str | None, usage: Usage, table: Mapping[str, ModelPrice]) -> float | None:
    """Cost of `usage` by the table's entry for `model` (or its "*" entry); None if neither."""
    price = table.get(model or "") or table.get("*")
    if price is None:
        return None
    cached = price.input_per_mtok if price.cached_per_mtok is None else price.cached_per_mtok
    return (
        usage.input_tokens * price.input_per_mtok
        + usage.cached_tokens * cached
        + usage.output_tokens * price.output_per_mtok
    ) / 1_000_000


def with_price(
    result: AgentResult, model: str | None, table: Mapping[str, ModelPrice]
) -> AgentResult:
    """`result` with its cost from the table where the CLI reported none."""
    if result.cost_usd is not None:
        return result
    return msgspec.structs.replace(result, cost_usd=price_usd(model, result.usage, table))


_RETRY_AFTER = re.compile(
    r"(?:retry[- _]?after|retry in|retrydelay)\D{0,4}(\d+(?:\.\d+)?)\s*(ms|s)?", re.IGNORECASE
)
_STATUS_WORDS: tuple[tuple[Outcome, re.Pattern[str]], ...] = (
    (
        CONTEXT_EXCEEDED,
        re.compile(
            r"context[_ ](?:length|window)[_ ]exceeded|prompt is too long|maximum context length"
            r"|ContextWindowExceeded|input token count .* exceeds",
            re.IGNORECASE,
        ),
    ),
    (
        RATE_LIMITED,
        re.compile(r"\b429\b|rate[_ ]?limit|too many requests|RESOURCE_EXHAUSTED", re.IGNORECASE),
    ),
    (OVERLOADED, re.compile(r"\b529\b|overloaded", re.IGNORECASE)),
    (
        AUTH_REFUSED,
        re.compile(
            r"\b40[13]\b|authentication|unauthori[sz]ed|invalid[ _-]?(?:x-)?api[ _-]?key"
            r"|API key not valid|PERMISSION_DENIED|forbidden",
            re.IGNORECASE,
        ),
    ),
)


def outcome_for_status(status: int | None) -> Outcome | None:
    """The outcome an HTTP status from the model API means, if it means a specific one."""
    match status:
        case 429:
            return RATE_LIMITED
        case 529 | 503:
            return OVERLOADED
        case 401 | 403:
            return AUTH_REFUSED
        case _:
            return None


def classify_error(text: str, status: int | None = None) -> Outcome:
    """The outcome an error message (and its HTTP status, when known) stands for."""
    by_status = outcome_for_status(status)
    if by_status is not None:
        return by_status
    for outcome, pattern in _STATUS_WORDS:
        if pattern.search(text):
            return outcome
    return ERROR


def failure(
    detail: str,
    *,
    usage: Usage,
    exit_code: int | None,
    status: int | None = None,
    cost_usd: float | None = None,
    wait_s: float | None = None,
) -> AgentResult:
    """A failed run: the outcome its message and status stand for, and any wait it asked for."""
    return AgentResult(
        outcome=classify_error(detail, status),
        usage=usage,
        cost_usd=cost_usd,
        retry_after_s=wait_s if wait_s is not None else retry_after_s(detail),
        detail=detail,
        exit_code=exit_code,
    )


def retry_after_s(text: str) -> float | None:
    """Seconds the API asked to wait, when the message carries them."""
    match = _RETRY_AFTER.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value / 1000 if (match.group(2) or "").lower() == "ms" else value


def int_field(data: Mapping[str, object], key: str) -> int:
    """An integer field of decoded JSON; absent, null or malformed counts as 0."""
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def json_object(line: str) -> dict[str, Any] | None:
    """`line` decoded when it is one JSON object; CLIs mix log text into their output."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


class JsonLinesParser:
    """Base of the parsers of JSONL output: decodes each line, keeps the tail of stderr."""

    def __init__(self) -> None:
        self._stderr: list[str] = []

    def feed(self, line: str, stream: Stream = "stdout") -> list[Activity]:
        event = json_object(line)
        if event is not None:
            return self.on_event(event)
        if stream == "stderr" and line.strip():
            self._stderr = [*self._stderr[-9:], line.strip()]
        return []

    def on_event(self, event: dict[str, Any]) -> list[Activity]:
        raise NotImplementedError

    def stderr_tail(self, lines: int = 3) -> str:
        return " ".join(self._stderr[-lines:])


class LineBuffer:
    """Splits chunks of output into complete lines; a partial line waits for its end."""

    def __init__(self) -> None:
        self._partial = ""

    def push(self, chunk: str) -> Iterator[str]:
        text = self._partial + chunk
        *lines, self._partial = text.split("\n")
        yield from (line.rstrip("\r") for line in lines)

    def flush(self) -> Iterator[str]:
        if self._partial:
            line, self._partial = self._partial, ""
            yield line
