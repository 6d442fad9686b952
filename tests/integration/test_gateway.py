"""The webhook gateway against a real nats-server and the real Bus: HTTP and raw NATS in,
events stored once in CONVEYOR_EVENTS, nothing stored for anything refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus import subjects
from bus.bridge import MSG_ID, Bus
from bus.messages import CommitStatusEvent, PullRequestEvent, PushEvent, WorkItemEvent
from bus.server import EmbeddedNats
from conveyor import config as config_mod
from conveyor.config import Config
from gateways import webhooks
from gateways.gateway import Gateway, start_gateway
from tests.harness import wait_until
from tests.webhook_fixtures import SECRET, WEBHOOKS, load, payload, resigned, sign, source_of

MAX_BODY = 64 * 1024
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
event_decoder = msgspec.json.Decoder(
    WorkItemEvent | CommitStatusEvent | PullRequestEvent | PushEvent
)


def gateway_config(nats_url: str, data_dir: Path, **gateway: Any) -> Config:
    return config_mod.load(
        env={},
        overrides={
            "data_dir": str(data_dir),
            "nats": {"url": nats_url},
            "gitea": {"webhook_secret": SECRET},
            "plane": {"webhook_secret": SECRET},
            "gateway": {"port": 0, "max_body_bytes": MAX_BODY, "publish_timeout_s": 1.0, **gateway},
        },
    )


class Env:
    """A bus, a gateway on it, and an HTTP client pointed at the gateway."""

    def __init__(self, bus: Bus, gateway: Gateway) -> None:
        self.bus = bus
        self.gateway = gateway
        self.http = httpx.Client(base_url=gateway.url, trust_env=False, timeout=10.0)

    def post(self, name: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        return self.http.post(f"/webhooks/{source_of(name)}", headers=headers, content=body)

    def raw(self, name: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        subject = subjects.WEBHOOKS_GITEA if source_of(name) == "gitea" else subjects.WEBHOOKS_PLANE

        async def _req() -> bytes:
            reply = await self.bus.nc.request(subject, body, timeout=5.0, headers=headers)
            return bytes(reply.data)

        answer: dict[str, Any] = json.loads(self.bus.call(_req()))
        return answer

    def stored(self) -> int:
        async def _count() -> int:
            info = await self.bus.js.stream_info(subjects.STREAM_EVENTS)
            return int(info.state.messages)

        return self.bus.call(_count())

    def message(self, seq: int) -> tuple[str, str, Any]:
        """(subject, Nats-Msg-Id, decoded event) of one stored message."""
        raw = self.bus.call(self.bus.js.get_msg(subjects.STREAM_EVENTS, seq))
        headers = raw.headers or {}
        return str(raw.subject), headers.get(MSG_ID, ""), event_decoder.decode(raw.data or b"")

    def reset_stream(self) -> None:
        """A fresh CONVEYOR_EVENTS: no messages and no remembered msg ids."""
        self.bus.call(self.bus.js.delete_stream(subjects.STREAM_EVENTS))
        self.bus.setup()

    def close(self) -> None:
        self.http.close()
        self.gateway.stop()
        self.bus.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("gateway")
    server = EmbeddedNats(tmp / "nats")
    server.start()
    bus = Bus.connect(server.url)
    env: Env | None = None
    try:
        bus.setup()
        env = Env(bus, start_gateway(bus, gateway_config(server.url, tmp)))
        yield env
    finally:
        if env is not None:
            env.close()
        else:
            bus.close()
        server.stop()


@pytest.fixture
def env(shared: Env) -> Env:
    shared.reset_stream()
    return shared


def unique(name: str) -> tuple[dict[str, str], bytes]:
    """A fixture's payload under a fresh delivery id, signed."""
    return resigned(name, payload(name), delivery=str(uuid.uuid4()))


# --- accepted -----------------------------------------------------------------------------


def test_each_recorded_webhook_is_stored_once_with_its_delivery_as_msg_id(env: Env) -> None:
    for index, name in enumerate(WEBHOOKS, start=1):
        headers, body = load(name)
        expected = webhooks.normalize(source_of(name), headers, body, secret=SECRET)
        assert isinstance(expected, webhooks.Normalized)

        response = env.post(name, headers, body)

        assert response.status_code == 200, response.text
        assert response.json() == {"ok": True, "duplicate": False}
        assert env.stored() == index
        assert env.message(index) == (expected.subject, expected.msg_id, expected.event)


def test_the_same_delivery_twice_is_stored_once_and_answered_as_a_duplicate(env: Env) -> None:
    headers, body = load("gitea-status")
    first = env.post("gitea-status", headers, body)
    second = env.post("gitea-status", headers, body)
    assert first.json() == {"ok": True, "duplicate": False}
    assert (second.status_code, second.json()) == (200, {"ok": True, "duplicate": True})
    assert env.stored() == 1


def test_the_http_and_nats_paths_share_the_dedupe(env: Env) -> None:
    headers, body = load("plane-issue-updated")
    assert env.post("plane-issue-updated", headers, body).status_code == 200
    reply = env.raw("plane-issue-updated", headers, body)
    assert reply == {"ok": True, "status": 200, "duplicate": True}
    assert env.stored() == 1


# --- refused ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WEBHOOKS)
def test_an_unsigned_or_mis_signed_webhook_is_refused_with_401_and_nothing_stored(
    env: Env, name: str
) -> None:
    headers, body = load(name)
    unsigned = {k: v for k, v in headers.items() if "signature" not in k.lower()}
    mis_signed = {
        **{k: v for k, v in headers.items() if "signature" not in k.lower()},
        "X-Gitea-Signature" if name.startswith("gitea") else "X-Plane-Signature": sign(body, "x"),
    }
    tampered = body.replace(b"widget", b"gadget") if b"widget" in body else body + b"\n"
    for case_headers, case_body in ((unsigned, body), (mis_signed, body), (headers, tampered)):
        response = env.post(name, case_headers, case_body)
        assert response.status_code == 401
        assert response.json()["ok"] is False
    assert env.stored() == 0


def test_a_malformed_payload_is_refused_with_400_naming_the_field(env: Env) -> None:
    data = payload("gitea-pull_request-opened")
    del data["pull_request"]["head"]["sha"]
    response = env.post("gitea-pull_request-opened", *resigned("gitea-pull_request-opened", data))
    assert response.status_code == 400
    assert response.json() == {"ok": False, "error": "pull_request.head.sha: missing"}
    headers, _ = load("plane-issue-created")
    headers["X-Plane-Signature"] = sign(b"{nope")
    assert env.post("plane-issue-created", headers, b"{nope").status_code == 400
    assert env.stored() == 0


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(env: Env) -> None:
    headers, _ = load("gitea-push")
    big = b"{" + b" " * MAX_BODY + b"}"
    headers["X-Gitea-Signature"] = sign(big)
    response = env.post("gitea-push", headers, big)
    assert response.status_code == 413
    assert response.json()["error"] == f"body: larger than {MAX_BODY} bytes"

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b" " * (MAX_BODY // 2)

    # Without a Content-Length, aiohttp's own limit stops the read.
    chunked = env.http.post("/webhooks/gitea", headers=headers, content=chunks())
    assert chunked.status_code == 413
    assert env.raw("gitea-push", headers, big)["status"] == 413
    assert env.stored() == 0


def test_a_wrong_content_type_is_refused_with_415(env: Env) -> None:
    headers, body = load("gitea-push")
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    assert env.post("gitea-push", headers, body).status_code == 415
    assert env.stored() == 0


def test_an_unused_event_is_acknowledged_with_202_and_not_stored(env: Env) -> None:
    headers, body = load("plane-issue-created")
    headers["X-Plane-Event"] = "issue_comment"
    response = env.post("plane-issue-created", headers, body)
    assert response.status_code == 202
    assert response.json() == {"ok": True, "ignored": "plane event 'issue_comment' is not used"}
    headers, body = load("gitea-push")
    headers["X-Gitea-Event-Type"] = "issues"
    assert env.post("gitea-push", headers, body).status_code == 202
    assert env.stored() == 0


def test_an_unexpected_error_answers_500_and_is_logged(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(webhooks, "normalize", broken)
    response = env.post("gitea-push", *load("gitea-push"))
    assert (response.status_code, response.json()) == (
        500,
        {"ok": False, "error": "internal error"},
    )
    assert any(r.getMessage() == "gateway.failed" for r in caplog.records)
    assert env.stored() == 0


def test_a_missing_events_stream_is_unavailable_until_it_is_back(env: Env) -> None:
    env.bus.call(env.bus.js.delete_stream(subjects.STREAM_EVENTS))
    assert env.http.get("/healthz").status_code == 503
    headers, body = unique("gitea-push")
    assert env.post("gitea-push", headers, body).status_code == 503
    env.bus.setup()
    assert env.http.get("/healthz").json() == {"ok": True}
    assert env.post("gitea-push", headers, body).status_code == 200
    assert env.stored() == 1


# --- raw NATS -----------------------------------------------------------------------------


def test_the_raw_nats_path_answers_as_http_would(env: Env) -> None:
    for index, name in enumerate(WEBHOOKS, start=1):
        headers, body = load(name)
        assert env.raw(name, headers, body) == {"ok": True, "status": 200, "duplicate": False}
        assert env.stored() == index
    headers, body = load("gitea-push")
    assert env.raw("gitea-push", headers, body)["duplicate"] is True
    unsigned = {k: v for k, v in headers.items() if "Signature" not in k}
    assert env.raw("gitea-push", unsigned, body) == {
        "ok": False,
        "status": 401,
        "error": "X-Gitea-Signature: missing",
    }
    ignored = dict(headers, **{"X-Gitea-Event-Type": "fork"})
    assert env.raw("gitea-push", ignored, body)["status"] == 202
    assert env.stored() == len(WEBHOOKS)


def test_a_raw_webhook_without_a_reply_subject_is_still_stored(env: Env) -> None:
    headers, body = unique("gitea-status")
    env.bus.call(env.bus.nc.publish(subjects.WEBHOOKS_GITEA, body, headers=headers))
    wait_until(lambda: env.stored() == 1, deadline_s=10, what="the raw webhook stored")


def test_status_counts_outcomes_by_source(env: Env) -> None:
    before = env.gateway.status()["sources"]["plane"]
    headers, body = unique("plane-issue-created")
    env.post("plane-issue-created", headers, body)
    env.post("plane-issue-created", headers, body)
    env.post("plane-issue-created", {**headers, "X-Plane-Signature": "0" * 64}, body)
    after = env.gateway.status()
    plane = after["sources"]["plane"]
    assert after["running"] is True
    assert plane["accepted"] == before["accepted"] + 1
    assert plane["duplicate"] == before["duplicate"] + 1
    assert plane["rejected"]["401"] == before["rejected"].get("401", 0) + 1


# --- fuzzing: only valid signed webhooks ever add to the stream ---------------------------

garbage_headers = st.dictionaries(
    st.sampled_from(
        [
            "Content-Type",
            "X-Gitea-Event-Type",
            "X-Gitea-Delivery",
            "X-Gitea-Signature",
            "X-Plane-Event",
            "X-Plane-Delivery",
            "X-Plane-Signature",
        ]
    ),
    st.one_of(
        st.sampled_from(["application/json", "push", "issue", "status", "0" * 64]),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=70),
    ),
    max_size=7,
)
webhook = st.one_of(
    st.tuples(st.just("garbage"), st.sampled_from(WEBHOOKS), garbage_headers, st.binary()),
    st.tuples(st.just("valid"), st.sampled_from(WEBHOOKS), st.uuids().map(str), st.just(b"")),
)


def _fuzz_case(env: Env, case: tuple[str, str, Any, bytes], send: Any) -> None:
    kind, name, extra, body = case
    before = env.stored()
    if kind == "garbage":
        status, _ = send(name, extra, body)
        assert status in (400, 401, 413, 415)
        assert env.stored() == before
        return
    headers, body = resigned(name, payload(name), delivery=extra)
    status, answer = send(name, headers, body)
    assert status == 200
    assert env.stored() == before + (0 if answer["duplicate"] else 1)


def test_fuzzed_http_webhooks_store_only_valid_signed_payloads(shared: Env) -> None:
    shared.reset_stream()

    def send(name: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        response = shared.post(name, headers, body)
        return response.status_code, response.json()

    @FUZZ
    @given(case=webhook)
    def run(case: tuple[str, str, Any, bytes]) -> None:
        _fuzz_case(shared, case, send)

    run()


def test_fuzzed_raw_nats_webhooks_store_only_valid_signed_payloads(shared: Env) -> None:
    shared.reset_stream()

    def send(name: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        answer = shared.raw(name, headers, body)
        return int(answer["status"]), answer

    @FUZZ
    @given(case=webhook)
    def run(case: tuple[str, str, Any, bytes]) -> None:
        _fuzz_case(shared, case, send)

    run()


# --- the bus going away -------------------------------------------------------------------


def test_health_and_webhooks_answer_503_while_nats_is_down_and_nothing_is_lost(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    bus = Bus.connect(nats_server.url)
    bus.setup()
    env = Env(bus, start_gateway(bus, gateway_config(nats_server.url, tmp_path)))
    try:
        # Given a healthy gateway that has stored one webhook
        assert env.http.get("/healthz").json() == {"ok": True}
        assert env.post("gitea-push", *load("gitea-push")).status_code == 200
        # When nats-server stops
        nats_server.stop()
        wait_until(lambda: env.http.get("/healthz").status_code == 503, what="healthz 503")
        # Then a webhook is refused with 503, so its sender retries
        headers, body = load("gitea-status")
        refused = env.post("gitea-status", headers, body)
        assert refused.status_code == 503
        assert refused.json() == {"ok": False, "error": "event bus unavailable"}
        # And once nats-server is back, the retry is stored, exactly once
        nats_server.start()
        wait_until(lambda: env.http.get("/healthz").status_code == 200, what="healthz 200")
        assert env.post("gitea-status", headers, body).status_code == 200
        assert env.stored() == 2
        assert env.message(2)[1] == "gitea:4b6d8f0a-1c3e-4a5b-8d7f-9e0a1b2c3d4e"
        assert env.gateway.status()["sources"]["gitea"]["unavailable"] >= 1
    finally:
        env.close()


def test_stop_is_idempotent_and_frees_the_port(nats_url: str, tmp_path: Path) -> None:
    bus = Bus.connect(nats_url)
    bus.setup()
    try:
        gateway = start_gateway(bus, gateway_config(nats_url, tmp_path))
        url = gateway.url
        gateway.stop()
        gateway.stop()
        assert gateway.status()["running"] is False
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", trust_env=False, timeout=2.0)
    finally:
        bus.close()
