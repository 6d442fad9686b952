"""Structured logging: one event name per line, context as fields.

`log.info("stage_engine.advanced", task_id=..., stage=...)`. JSON lines when
stderr is not a terminal, `event key=value` text when it is. Every line carries an
ISO-8601 UTC timestamp, the process part (`all`, `control`, `launcher`, `gateway`,
`nats`, or several joined with `+`) and the pid, so the lines of the split set-up
can be merged and told apart.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_CONFIGURED = False
_PART = "all"


def iso_time(created: float) -> str:
    """`created` (a record's epoch seconds) as ISO-8601 UTC with milliseconds."""
    stamp = datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": iso_time(record.created),
            "part": _PART,
            "pid": record.process,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


class TextFormatter(logging.Formatter):
    """Render a record as `time part[pid] level event key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        head = f"{iso_time(record.created)} {_PART}[{record.process}] {record.levelname:<7}"
        line = f"{head} {record.getMessage()}"
        if extra:
            line = f"{line} {extra}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class Logger:
    """A thin structlog-shaped facade over a stdlib logger."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def _emit(self, level: int, event: str, exc: bool, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, event, exc_info=exc, extra={"fields": fields}, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, False, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, True, fields)


def get_logger(name: str) -> Logger:
    """Return the structured logger for `name`."""
    return Logger(name)


def configure(level: str = "info", *, json_lines: bool | None = None, part: str = "") -> None:
    """Configure the root logger once per process; `part` names what this process runs."""
    global _CONFIGURED, _PART  # noqa: PLW0603 - logging is process-wide by nature
    _PART = part or _PART
    root = logging.getLogger()
    root.setLevel(level.upper())
    if _CONFIGURED:
        return
    handler = logging.StreamHandler(sys.stderr)
    use_json = not sys.stderr.isatty() if json_lines is None else json_lines
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root.addHandler(handler)
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("pykka").setLevel(logging.WARNING)
    _CONFIGURED = True
