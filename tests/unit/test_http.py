"""The shared HTTP helper against a tiny local HTTP server on a random port."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from conveyor.clock import FakeClock
from conveyor.errors import InvalidField, RemoteError
from gateways.http import RETRY_AFTER_MAX_S, Http, HttpOptions, Jitter, equal_jitter, no_jitter


@dataclass
class Answer:
    """One scripted answer; `store` records the POST's effect before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"{}"
    store: bool = False
    hang: bool = False


class Server:
    """Answers each (method, path) from a script, then with 200; POSTs are stored as effects."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.effects: list[bytes] = []
        self.script: dict[tuple[str, str], list[Answer]] = {}
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.handle(self)

            def do_POST(self) -> None:
                owner.handle(self)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test reads `requests` instead."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def then(self, method: str, path: str, *answers: Answer) -> None:
        self.script.setdefault((method, path), []).extend(answers)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        size = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(size) if size else b""
        key = (request.command, request.path)
        self.requests.append(key)
        queue = self.script.get(key) or []
        answer = queue.pop(0) if queue else Answer(store=request.command == "POST")
        if answer.store:
            self.effects.append(body)
        if answer.hang:
            self.release.wait(10)
        if request.path == "/effects" and answer.status == 200 and answer.body == b"{}":
            answer.body = json.dumps([e.decode() for e in self.effects]).encode()
        request.send_response(answer.status)
        for name, value in answer.headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(answer.body)))
        request.end_headers()
        request.wfile.write(answer.body)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Sleeps:
    """The helper's waits, recorded instead of slept."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


CLOCK_START = 1_700_000_000.0


def client(
    server: Server,
    sleeps: Sleeps,
    *,
    timeout_s: float = 2.0,
    retries: int = 2,
    jitter: Jitter = no_jitter,
    **changes: Any,
) -> Http:
    options = HttpOptions(sleep=sleeps, jitter=jitter, clock=FakeClock(CLOCK_START))
    return Http("svc", server.url, timeout_s=timeout_s, retries=retries, options=options, **changes)


def effects_seen(http: Http) -> list[str] | None:
    """A probe: the stored effects, or None when the POST did not land."""
    found: list[str] = http.request("GET", "/effects", "probe").json()
    return found or None


# -- retries of idempotent calls -----------------------------------------------


def test_a_get_failing_with_503_is_retried_with_jittered_back_off(
    server: Server, sleeps: Sleeps
) -> None:
    server.then("GET", "/thing", Answer(503), Answer(503))
    http = client(server, sleeps, jitter=lambda: 0.25)
    try:
        assert http.request("GET", "/thing", "read").status_code == 200
    finally:
        http.close()
    assert sleeps.waits == [0.375, 0.75]
    assert server.requests == [("GET", "/thing")] * 3


def test_the_default_jitter_takes_off_at_most_half_of_each_back_off(
    server: Server, sleeps: Sleeps
) -> None:
    server.then("GET", "/thing", *[Answer(502)] * 4)
    http = client(server, sleeps, retries=4, jitter=equal_jitter)
    try:
        http.request("GET", "/thing", "read")
    finally:
        http.close()
    for wait, full in zip(sleeps.waits, [0.5, 1.0, 2.0, 4.0], strict=True):
        assert full / 2 <= wait <= full


def test_retry_after_in_seconds_is_waited_instead_of_the_back_off(
    server: Server, sleeps: Sleeps
) -> None:
    server.then("GET", "/thing", Answer(429, {"Retry-After": "7"}))
    http = client(server, sleeps)
    try:
        assert http.request("GET", "/thing", "read").status_code == 200
    finally:
        http.close()
    assert sleeps.waits == [7.0]


def test_retry_after_as_an_http_date_is_honoured_on_a_503(server: Server, sleeps: Sleeps) -> None:
    when = formatdate(CLOCK_START + 30, usegmt=True)
    server.then("GET", "/thing", Answer(503, {"Retry-After": when}))
    http = client(server, sleeps)
    try:
        http.request("GET", "/thing", "read")
    finally:
        http.close()
    assert sleeps.waits == [30.0]


def test_a_long_retry_after_is_capped(server: Server, sleeps: Sleeps) -> None:
    server.then("GET", "/thing", Answer(429, {"Retry-After": "3600"}))
    http = client(server, sleeps)
    try:
        http.request("GET", "/thing", "read")
    finally:
        http.close()
    assert sleeps.waits == [RETRY_AFTER_MAX_S]


def test_failing_past_the_retries_raises_the_last_failure_as_retryable(
    server: Server, sleeps: Sleeps
) -> None:
    server.then("GET", "/thing", *[Answer(503)] * 3)
    http = client(server, sleeps, describe=lambda r: f"down ({r.status_code})")
    try:
        with pytest.raises(RemoteError) as caught:
            http.request("GET", "/thing", "read")
    finally:
        http.close()
    error = caught.value
    assert (error.service, error.operation, error.status, error.retryable) == (
        "svc",
        "read",
        503,
        True,
    )
    assert error.reason == "down (503)"
    assert len(sleeps.waits) == 2


def test_refusals_are_returned_to_the_caller_unretried(server: Server, sleeps: Sleeps) -> None:
    server.then("GET", "/thing", Answer(404, body=b'{"message": "nope"}'))
    http = client(server, sleeps)
    try:
        assert http.request("GET", "/thing", "read").status_code == 404
    finally:
        http.close()
    assert sleeps.waits == []


def test_a_call_that_is_not_idempotent_is_sent_once(server: Server, sleeps: Sleeps) -> None:
    server.then("POST", "/things", Answer(503))
    http = client(server, sleeps)
    try:
        with pytest.raises(RemoteError):
            http.request("POST", "/things", "create", json={"a": 1}, idempotent=False)
    finally:
        http.close()
    assert server.requests == [("POST", "/things")]


# -- writes with a one-time effect ---------------------------------------------


def test_an_ambiguous_post_is_read_back_through_the_probe_and_not_repeated(
    server: Server, sleeps: Sleeps
) -> None:
    # Given the server stores the POST, then answers 500
    server.then("POST", "/things", Answer(500, store=True))
    http = client(server, sleeps)
    try:
        # When the helper writes with a probe
        outcome = http.write("POST", "/things", "create", lambda: effects_seen(http), json={"a": 1})
    finally:
        http.close()
    # Then the probe's finding is the answer, and the POST was sent once
    assert outcome == ['{"a":1}']
    assert server.requests.count(("POST", "/things")) == 1
    assert len(server.effects) == 1


def test_an_ambiguous_post_that_did_not_land_is_sent_again(server: Server, sleeps: Sleeps) -> None:
    server.then("POST", "/things", Answer(502))
    http = client(server, sleeps)
    try:
        outcome = http.write("POST", "/things", "create", lambda: effects_seen(http), json={"a": 1})
    finally:
        http.close()
    assert isinstance(outcome, httpx.Response)
    assert outcome.status_code == 200
    assert server.requests == [("POST", "/things"), ("GET", "/effects"), ("POST", "/things")]
    assert len(server.effects) == 1


def test_a_post_refused_with_429_is_sent_again_without_a_probe(
    server: Server, sleeps: Sleeps
) -> None:
    probes: list[int] = []

    def probe() -> None:
        probes.append(1)

    server.then("POST", "/things", Answer(429, {"Retry-After": "2"}))
    http = client(server, sleeps)
    try:
        http.write("POST", "/things", "create", probe, json={})
    finally:
        http.close()
    assert probes == []
    assert sleeps.waits == [2.0]
    assert server.requests == [("POST", "/things")] * 2


def test_a_probe_that_fails_leaves_the_write_to_the_caller(server: Server, sleeps: Sleeps) -> None:
    server.then("POST", "/things", Answer(500, store=True))
    server.then("GET", "/effects", *[Answer(503)] * 3)
    http = client(server, sleeps)
    try:
        with pytest.raises(RemoteError) as caught:
            http.write("POST", "/things", "create", lambda: effects_seen(http), json={})
    finally:
        http.close()
    assert (caught.value.operation, caught.value.status) == ("create", 500)
    assert server.requests.count(("POST", "/things")) == 1


# -- timeouts and transport failures -------------------------------------------


def test_every_call_has_a_timeout(server: Server, sleeps: Sleeps) -> None:
    server.then("GET", "/slow", Answer(hang=True), Answer(hang=True))
    http = client(server, sleeps, timeout_s=0.2, retries=1)
    try:
        with pytest.raises(RemoteError, match="timed out") as caught:
            http.request("GET", "/slow", "read")
    finally:
        http.close()
    assert (caught.value.status, caught.value.retryable) == (None, True)
    assert "0.2s" in caught.value.reason
    assert len(sleeps.waits) == 1


def test_a_refused_connection_never_shows_the_url(sleeps: Sleeps) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    http = Http(
        "svc", timeout_s=1.0, retries=1, options=HttpOptions(sleep=sleeps, jitter=no_jitter)
    )
    try:
        with pytest.raises(RemoteError, match="cannot connect") as caught:
            http.request("POST", f"http://127.0.0.1:{port}/botSECRET/send", "send", json={})
    finally:
        http.close()
    assert "SECRET" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_negative_retries_are_refused() -> None:
    with pytest.raises(InvalidField):
        Http("svc", timeout_s=1.0, retries=-1)
