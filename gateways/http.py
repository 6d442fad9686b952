"""One blocking HTTP helper for the Gitea, Plane and Telegram clients.

Each client owns one `Http`: a pooled `httpx.Client` with a timeout on every
call. A request that may be repeated (every read, and writes whose effect is
the same however often they land) is retried on timeouts, lost connections,
429 and 5xx, waiting what `Retry-After` asks for, else a jittered back-off.
A write with a one-time effect is repeated only after a caller-supplied probe
has read back that the first send did not land.

Errors never carry a request URL or an httpx message: a bot token may be part
of the URL, so transport errors are raised without their cause.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import httpx

from conveyor import retry
from conveyor.clock import Clock, SystemClock
from conveyor.errors import InvalidField, RemoteError
from conveyor.logs import get_logger

log = get_logger(__name__)

# httpx logs every request URL at INFO, and a Bot API URL carries the token.
logging.getLogger("httpx").setLevel(logging.WARNING)

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 60.0
"""Longest wait a server may impose; a longer `Retry-After` is treated as this."""

T = TypeVar("T")
Sleep = Callable[[float], None]
Jitter = Callable[[], float]
"""A fresh share in [0, 1) of each back-off to take off."""
Describe = Callable[[httpx.Response], str]
"""The reason text of a failed answer, for errors and logs."""
WaitHint = Callable[[httpx.Response, float], float | None]
"""Seconds a failed answer asks the client to wait (given now), or None."""


def equal_jitter() -> float:
    """Take off up to half of each back-off."""
    # Jitter spreads retries out; it guards no secret.
    return random.uniform(0.0, 0.5)  # noqa: S311


def no_jitter() -> float:
    """Back off exactly (for tests that assert the delays)."""
    return 0.0


def status_line(response: httpx.Response) -> str:
    """`HTTP 503`: the reason of a failed answer when the service says nothing better."""
    return f"HTTP {response.status_code}"


def retry_after_hint(response: httpx.Response, now: float) -> float | None:
    """The `Retry-After` header, in seconds or as an HTTP date."""
    return retry.retry_after_s(response.headers.get("Retry-After"), now)


@dataclass(frozen=True)
class HttpOptions:
    """What a caller may swap in a client (tests, mostly).

    The wait between attempts, its jitter, the clock (for `Retry-After` dates and
    as the default sleep) and the httpx transport.
    """

    sleep: Sleep | None = None
    jitter: Jitter = equal_jitter
    clock: Clock | None = None
    transport: httpx.BaseTransport | None = None


class _Transient(Exception):
    """A failure worth another try; `maybe_applied` when the request may have landed."""

    def __init__(
        self, error: RemoteError, *, maybe_applied: bool, wait_s: float | None = None
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.maybe_applied = maybe_applied
        self.wait_s = wait_s


class Http:
    """Blocking calls to one service; `path` is joined to `base_url` (or is a full URL).

    `describe` words a failed answer and `wait_hint` reads how long a 429 or 5xx
    asks to wait; `options` holds what tests swap in.
    """

    def __init__(
        self,
        service: str,
        base_url: str = "",
        *,
        timeout_s: float,
        retries: int,
        headers: dict[str, str] | None = None,
        describe: Describe = status_line,
        wait_hint: WaitHint = retry_after_hint,
        options: HttpOptions | None = None,
    ) -> None:
        if retries < 0:
            raise InvalidField("retries", "must be >= 0")
        self.service = service
        self.timeout_s = timeout_s
        self.retries = retries
        options = options or HttpOptions()
        self._clock: Clock = options.clock if options.clock is not None else SystemClock()
        self._sleep: Sleep = options.sleep if options.sleep is not None else self._clock.sleep
        self._jitter = options.jitter
        self._describe = describe
        self._wait_hint = wait_hint
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout_s, transport=options.transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _pause(self, op: str, attempt: int, error: RemoteError, wait_s: float | None) -> None:
        """Wait before retry number `attempt`: `wait_s` when the server named it, else back off."""
        if wait_s is None:
            delay = retry.backoff_s(BACKOFF_BASE_S, BACKOFF_MAX_S, attempt, self._jitter())
        else:
            delay = min(wait_s, RETRY_AFTER_MAX_S)
        log.warning(
            "http.retrying",
            service=self.service,
            op=op,
            attempt=attempt + 1,
            delay_s=delay,
            status=error.status,
            reason=error.reason,
        )
        self._sleep(delay)

    def request(
        self,
        method: str,
        path: str,
        op: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send a call; every answer but 429 and 5xx is returned for the caller to judge.

        An idempotent call is retried on transient failures; any other is sent
        once, and the caller decides whether a failure may be sent again.
        """
        retries = self.retries if idempotent else 0
        return cast(httpx.Response, self._send(method, path, op, params, json, retries, None))

    def write(
        self,
        method: str,
        path: str,
        op: str,
        probe: Callable[[], T | None],
        *,
        json: Any = None,
    ) -> httpx.Response | T:
        """Send a call with a one-time effect; before repeating an ambiguous one, ask `probe`.

        Returns the answer, or what `probe` found when an earlier send took effect.
        A failure that provably never reached the server (no connection, 429) is
        simply sent again.
        """
        return self._send(method, path, op, None, json, self.retries, probe)

    def _send(
        self,
        method: str,
        path: str,
        op: str,
        params: dict[str, Any] | None,
        json: Any,
        retries: int,
        probe: Callable[[], T | None] | None,
    ) -> httpx.Response | T:
        attempt = 0
        while True:
            try:
                return self._once(method, path, op, params, json)
            except _Transient as failure:
                if attempt >= retries:
                    raise failure.error from None
                self._pause(op, attempt, failure.error, failure.wait_s)
                if probe is not None and failure.maybe_applied:
                    found = self._probe(probe, op, failure)
                    if found is not None:
                        return found
                attempt += 1

    def _probe(self, probe: Callable[[], T | None], op: str, failure: _Transient) -> T | None:
        try:
            found = probe()
        except RemoteError:
            # Cannot tell whether it landed: only the caller may decide to resend.
            raise failure.error from None
        if found is not None:
            log.info("http.effect_found", service=self.service, op=op, reason=failure.error.reason)
        return found

    def _once(
        self, method: str, path: str, op: str, params: dict[str, Any] | None, json: Any
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, params=params, json=json)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            reason = f"cannot connect ({type(err).__name__})"
            raise _Transient(self._error(op, reason, None), maybe_applied=False) from None
        except httpx.TimeoutException:
            reason = f"timed out: no answer within {self.timeout_s:g}s"
            raise _Transient(self._error(op, reason, None), maybe_applied=True) from None
        except httpx.TransportError as err:
            reason = f"no answer ({type(err).__name__})"
            raise _Transient(self._error(op, reason, None), maybe_applied=True) from None
        status = response.status_code
        if status == 429 or status >= 500:
            # A 429 is refused before any work is done; a 5xx may have done some.
            raise _Transient(
                self._error(op, self._describe(response), status),
                maybe_applied=status != 429,
                wait_s=self._wait_hint(response, self._clock.now()),
            )
        return response

    def _error(self, op: str, reason: str, status: int | None) -> RemoteError:
        return RemoteError(self.service, op, reason, status=status, retryable=True)
