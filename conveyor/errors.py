"""One error base for Conveyor; leaves are named for what happened."""

from __future__ import annotations

import re

# `scheme://user:secret@host`: a forge token embedded in a clone URL.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


def redact_credentials(text: str) -> str:
    """`text` with the credentials of any URL in it replaced by `***`."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


class ConveyorError(Exception):
    """Base of every error Conveyor raises on purpose."""


class InvalidField(ConveyorError):
    """An input field failed validation; `field` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ConfigError(ConveyorError):
    """The configuration cannot be used; the message names the dotted key."""


class GitError(ConveyorError):
    """A git command failed; carries the command and its stderr."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        args = [redact_credentials(arg) for arg in args]
        stderr = redact_credentials(stderr)
        super().__init__(f"git {' '.join(args)} exited {returncode}: {stderr.strip()[:500]}")
        self.args_list = args
        self.returncode = returncode
        self.stderr = stderr


class ForgeError(ConveyorError):
    """The forge refused or failed an operation."""


class MergeConflict(ForgeError):
    """The pull request cannot be merged without conflicts."""


class HeadMismatch(ForgeError):
    """The pull request head moved since it was checked; merging now is unsafe."""


class Fenced(ConveyorError):
    """A compare-and-swap write lost: another writer owns the data now."""


class BusUnavailable(ConveyorError):
    """NATS could not be reached or did not answer in time."""


class RemoteError(ConveyorError):
    """An HTTP API (Gitea, Plane, Telegram) refused a call, failed or answered junk.

    `status` is the HTTP status (None: no answer); `retryable` says whether the same
    call may be sent again (timeouts, 5xx and 429 on idempotent calls).
    """

    def __init__(
        self,
        service: str,
        operation: str,
        reason: str,
        *,
        status: int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(f"{service} {operation}: {reason}")
        self.service = service
        self.operation = operation
        self.reason = reason
        self.status = status
        self.retryable = retryable


class TrackerError(ConveyorError):
    """The tracker refused or failed an operation."""


class WebhookRejected(ConveyorError):
    """An inbound webhook is refused; `status` is the HTTP answer (401, 400, 413, 415)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
