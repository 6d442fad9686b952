"""PlaneClient and PlaneTracker over real HTTP against the fake Plane."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from conveyor.clock import SystemClock
from conveyor.config import PlaneConfig
from conveyor.errors import RemoteError, TrackerError
from gateways.http import HttpOptions, no_jitter
from gateways.plane import (
    PlaneClient,
    PlaneTracker,
    comment_html,
    comment_text,
    rate_limit_wait_s,
)
from tests.fakes.plane import FIXTURE_PROJECT, FakePlane, ServerThread
from tests.harness import wait_until

KEY = "plane-test-key"
WORKSPACE = "acme"
SECRET = "conveyor-test-secret"
PROJECT = FIXTURE_PROJECT


class Sleeps:
    """An injected sleep: records each wait, returns at once."""

    def __init__(self, on_sleep: Any = None) -> None:
        self.waits: list[float] = []
        self._on_sleep = on_sleep

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self._on_sleep is not None:
            self._on_sleep()


class Receiver(ServerThread):
    """A webhook endpoint that keeps each raw body and its headers."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[bytes, dict[str, str]]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/webhooks/plane", self._hook)
        return app

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), dict(request.headers)))
        return web.Response(status=200)


@pytest.fixture
def plane() -> Iterator[FakePlane]:
    with FakePlane(KEY, WORKSPACE, webhook_secret=SECRET) as fake:
        yield fake


def config(fake: FakePlane, **changes: Any) -> PlaneConfig:
    fields: dict[str, Any] = {
        "url": fake.url,
        "api_key": KEY,
        "workspace": WORKSPACE,
        "webhook_secret": SECRET,
        "timeout_s": 2.0,
        "retries": 3,
        "per_page": 100,
        **changes,
    }
    return PlaneConfig(**fields)


@pytest.fixture
def item(plane: FakePlane) -> dict[str, Any]:
    return plane.create_item(PROJECT, "Add retry to widget sync")


def tracker_for(
    plane: FakePlane, item: dict[str, Any], sleep: Sleeps | None = None, **changes: Any
) -> PlaneTracker:
    refs = {"DEMO-1": (PROJECT, item["id"])}
    return PlaneTracker(
        config(plane, **changes),
        refs.get,
        http=HttpOptions(sleep=sleep or Sleeps(), jitter=no_jitter),
    )


@pytest.fixture
def tracker(plane: FakePlane, item: dict[str, Any]) -> Iterator[PlaneTracker]:
    t = tracker_for(plane, item)
    yield t
    t.close()


def run_client(cfg: PlaneConfig, body: Any, sleep: Sleeps | None = None) -> Any:
    """Run `body(client)` with a fresh client."""
    client = PlaneClient(cfg, http=HttpOptions(sleep=sleep or Sleeps(), jitter=no_jitter))
    try:
        return body(client)
    finally:
        client.close()


def gets(plane: FakePlane, part: str) -> int:
    return sum(1 for method, path in plane.requests if method == "GET" and part in path)


# --- states ----------------------------------------------------------------------------------


def test_states_are_read_once_and_reloaded_once_for_an_unknown_name(plane: FakePlane) -> None:
    def _body(client: PlaneClient) -> tuple[str, str, str]:
        first = client.state_by_name(PROJECT, "In Progress")
        again = client.state_by_name(PROJECT, "In Progress")
        assert first == again
        assert gets(plane, "/states/") == 1
        # When an admin adds a state after the cache was filled
        plane.add_state(PROJECT, "QA")
        qa = client.state_by_name(PROJECT, "QA")
        assert gets(plane, "/states/") == 2
        name = client.state_name(PROJECT, qa.id)
        with pytest.raises(TrackerError, match="no state named 'Nope'"):
            client.state_by_name(PROJECT, "Nope")
        assert gets(plane, "/states/") == 3
        return first.name, qa.name, name

    assert run_client(config(plane), _body) == ("In Progress", "QA", "QA")


def test_the_fake_serves_the_fixture_states_with_conveyors_board_states(plane: FakePlane) -> None:
    def _body(client: PlaneClient) -> list[str]:
        return [s.name for s in client.states(PROJECT)]

    names = run_client(config(plane, per_page=4), _body)
    assert names[:6] == ["Backlog", "Todo", "In Progress", "In Review", "Done", "Cancelled"]
    assert {"Approved", "Rejected", "Confirm Deploy", "Blocked", "Needs Input"} <= set(names)


# --- pagination ------------------------------------------------------------------------------


def test_work_items_are_read_over_every_page(plane: FakePlane) -> None:
    # Given 250 work items and 100 per page
    for n in range(250):
        plane.create_item(PROJECT, f"item {n}")

    def _body(client: PlaneClient) -> list[int]:
        return [i.sequence_id for i in client.work_items(PROJECT)]

    # Then all of them arrive, in order, in three list requests
    assert run_client(config(plane, per_page=100), _body) == list(range(1, 251))
    assert gets(plane, "/work-items/") == 3


def _aged_items(plane: FakePlane, count: int) -> list[dict[str, Any]]:
    """`count` work items last updated long ago, in creation order."""
    items = [plane.create_item(PROJECT, f"item {n}") for n in range(count)]
    for n, item in enumerate(items):
        plane.items[item["id"]]["updated_at"] = f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}Z"
    return items


def test_a_poll_since_a_moment_reads_only_the_pages_that_reach_back_to_it(
    plane: FakePlane, item: dict[str, Any]
) -> None:
    # Given 250 work items untouched for a year, and two moved just now
    aged = _aged_items(plane, 250)
    plane.move(aged[3]["id"], "Approved")
    plane.move(aged[200]["id"], "Rejected")
    plane.requests.clear()
    tracker = tracker_for(plane, item, per_page=100)
    try:
        # When the Reconciler polls for what moved in the last hour
        since = SystemClock().now() - 3600.0
        polled = tracker.poller([PROJECT])(since, [])
    finally:
        tracker.close()
    # Then it gets the two moved items (and the fixture's, created now) from one list
    # request, not three
    assert sorted(p.sequence_id for p in polled) == [1, 5, 202]
    assert {p.state_name for p in polled if p.sequence_id > 1} == {"Approved", "Rejected"}
    assert gets(plane, "/work-items/") == 1


def test_a_poll_reads_every_page_from_a_server_that_ignores_the_order(
    plane: FakePlane, item: dict[str, Any]
) -> None:
    aged = _aged_items(plane, 250)
    plane.move(aged[200]["id"], "Rejected")
    plane.ignore_order = True
    plane.requests.clear()
    tracker = tracker_for(plane, item, per_page=100)
    try:
        polled = tracker.poller([PROJECT])(SystemClock().now() - 3600.0, [])
    finally:
        tracker.close()
    # Creation order puts a year-old item after the new one and then newer ones after
    # it: out of order, so no early stop.
    assert [p.sequence_id for p in polled] == [1, 202]
    assert gets(plane, "/work-items/") == 3


def test_a_poll_reads_a_named_item_the_list_left_out_by_id(
    plane: FakePlane, item: dict[str, Any]
) -> None:
    aged = _aged_items(plane, 5)
    plane.requests.clear()
    tracker = tracker_for(plane, item)
    try:
        since = SystemClock().now() - 3600.0
        polled = tracker.poller([PROJECT])(since, [(PROJECT, aged[1]["id"]), ("other", "x")])
    finally:
        tracker.close()
    # The fixture's item was created now (listed); the named aged one is read by id.
    assert sorted(p.sequence_id for p in polled) == [1, 3]


def test_a_cursor_that_does_not_advance_stops_the_listing(plane: FakePlane) -> None:
    for n in range(5):
        plane.create_item(PROJECT, f"item {n}")
    plane.stuck_cursor = True

    def _body(client: PlaneClient) -> list[str]:
        return [i.id for i in client.work_items(PROJECT)]

    with pytest.raises(RemoteError, match="does not advance") as err:
        run_client(config(plane, per_page=2), _body)
    assert not err.value.retryable
    # The first page already hands back the cursor it was asked for
    assert gets(plane, "/work-items/") == 1


def test_a_bad_cursor_is_refused_by_the_fake_like_plane(plane: FakePlane) -> None:
    def _body(client: PlaneClient) -> Any:
        return client._send(
            "GET", f"{client._project(PROJECT)}/states/", "x", True, params={"cursor": "zz"}
        )

    with pytest.raises(RemoteError) as err:
        run_client(config(plane), _body)
    assert err.value.status == 400


def test_poll_states_returns_items_with_their_state_names(
    plane: FakePlane, tracker: PlaneTracker, item: dict[str, Any]
) -> None:
    plane.move(item["id"], "Approved")
    polled = tracker.poll_states(PROJECT)
    assert [(p.id, p.sequence_id, p.state_name) for p in polled] == [(item["id"], 1, "Approved")]
    assert polled[0].project_id == PROJECT
    assert polled[0].state_id == plane.state_id(PROJECT, "Approved")


# --- the Tracker -----------------------------------------------------------------------------


def test_set_state_moves_the_item_once_for_two_calls(
    plane: FakePlane, tracker: PlaneTracker, item: dict[str, Any]
) -> None:
    tracker.set_state("DEMO-1", "In Progress", key="DEMO-1:stage:1")
    tracker.set_state("DEMO-1", "In Progress", key="DEMO-1:stage:1")
    assert tracker.state("DEMO-1") == "In Progress"
    assert plane.state_of(item["id"]) == "In Progress"
    assert [e["kind"] for e in plane.effects] == ["state_set"]


def test_set_state_to_a_name_the_board_lacks_is_a_tracker_error(tracker: PlaneTracker) -> None:
    with pytest.raises(TrackerError, match="Shipped"):
        tracker.set_state("DEMO-1", "Shipped", key="k")


def test_a_comment_is_posted_once_per_key(plane: FakePlane, tracker: PlaneTracker) -> None:
    tracker.comment("DEMO-1", "Stage analysis → architecture: <approved>", key="DEMO-1:stage:2")
    tracker.comment("DEMO-1", "Stage analysis → architecture: <approved>", key="DEMO-1:stage:2")
    tracker.comment("DEMO-1", "second", key="DEMO-1:stage:3")
    assert tracker.comments("DEMO-1") == ["Stage analysis → architecture: <approved>", "second"]
    assert [e["kind"] for e in plane.effects] == ["comment", "comment"]
    assert "&lt;approved&gt;" in plane.effects[0]["html"]
    assert "<!-- conveyor:DEMO-1:stage:2 -->" in plane.effects[0]["html"]


def test_a_comment_whose_answer_was_lost_is_not_posted_again(
    plane: FakePlane, item: dict[str, Any]
) -> None:
    # Given Plane stores the comment, then answers 500
    plane.fail_next("POST", "/comments/", 500, after_store=True)
    sleeps = Sleeps()
    tracker = tracker_for(plane, item, sleeps)
    try:
        # When the tracker retries, it finds its marker and stops
        tracker.comment("DEMO-1", "hello", key="alert:1")
        # And a replay of the same event later posts nothing either
        tracker.comment("DEMO-1", "hello", key="alert:1")
    finally:
        tracker.close()
    # Then there is exactly one comment and one POST
    assert [e["kind"] for e in plane.effects] == ["comment"]
    assert sum(1 for m, p in plane.requests if m == "POST") == 1
    assert len(sleeps.waits) == 1


def test_a_failed_comment_without_retries_is_safe_to_replay(
    plane: FakePlane, item: dict[str, Any]
) -> None:
    # Given no retries: the lost answer surfaces as a retryable error
    plane.fail_next("POST", "/comments/", 502, after_store=True)
    tracker = tracker_for(plane, item, retries=0)
    try:
        with pytest.raises(RemoteError) as err:
            tracker.comment("DEMO-1", "hello", key="alert:2")
        assert err.value.retryable
        # When TrackerSync replays the event (redelivery after a nak)
        tracker.comment("DEMO-1", "hello", key="alert:2")
    finally:
        tracker.close()
    # Then the comment exists once
    assert [e["kind"] for e in plane.effects] == ["comment"]


def test_plane_refuses_a_second_comment_with_the_same_external_id(plane: FakePlane) -> None:
    item = plane.create_item(PROJECT, "x")

    def _body(client: PlaneClient) -> int | None:
        client.comment(PROJECT, item["id"], comment_html("a", "k"), external_id="k")
        try:
            client.comment(PROJECT, item["id"], comment_html("a", "k"), external_id="k")
        except RemoteError as err:
            return err.status
        return None

    assert run_client(config(plane), _body) == 409


def test_unknown_work_item_is_a_tracker_error_naming_it(tracker: PlaneTracker) -> None:
    with pytest.raises(TrackerError, match="DEMO-404"):
        tracker.comment("DEMO-404", "x", key="k")
    with pytest.raises(TrackerError, match="DEMO-404"):
        tracker.state("DEMO-404")


def test_a_rate_limit_reset_is_read_as_epoch_or_seconds_and_capped() -> None:
    now = 1_700_000_000.0
    assert rate_limit_wait_s(httpx.Headers({"X-RateLimit-Reset": str(now + 12)}), 0, now) == 12
    assert rate_limit_wait_s(httpx.Headers({"X-RateLimit-Reset": "7"}), 0, now) == 7
    assert rate_limit_wait_s(httpx.Headers({"Retry-After": "900"}), 0, now) == 60
    assert rate_limit_wait_s(httpx.Headers({}), 2, now) == 2.0


def test_comment_text_strips_marker_and_markup() -> None:
    assert comment_text(comment_html("a < b & c", "x:1")) == "a < b & c"
    assert comment_text("<p>Hi <strong>there</strong></p>") == "Hi there"


# --- failures --------------------------------------------------------------------------------


def test_a_5xx_on_a_read_is_retried_with_back_off(plane: FakePlane, item: dict[str, Any]) -> None:
    plane.fail_next("GET", "/work-items/", 503, count=2)
    sleeps = Sleeps()
    tracker = tracker_for(plane, item, sleeps)
    try:
        assert tracker.state("DEMO-1") == "Backlog"
    finally:
        tracker.close()
    assert sleeps.waits == [0.5, 1.0]


def test_a_5xx_past_the_retries_is_a_retryable_remote_error(
    plane: FakePlane, item: dict[str, Any]
) -> None:
    plane.fail_next("GET", "/work-items/", 500, count=10)
    tracker = tracker_for(plane, item, retries=2)
    try:
        with pytest.raises(RemoteError) as err:
            tracker.state("DEMO-1")
    finally:
        tracker.close()
    assert (err.value.status, err.value.retryable) == (500, True)
    assert gets(plane, "/work-items/") == 3


def test_a_429_waits_for_the_rate_limit_reset(plane: FakePlane, item: dict[str, Any]) -> None:
    # Given two requests a window; the injected sleep lets the window pass
    plane.rate_limit = 2
    sleeps = Sleeps(on_sleep=plane.reset_rate_window)
    tracker = tracker_for(plane, item, sleeps)
    try:
        # When the third request of the window (the second call's work item GET) gets a 429
        assert tracker.state("DEMO-1") == "Backlog"
        assert tracker.state("DEMO-1") == "Backlog"
    finally:
        tracker.close()
    # Then it waited once, for about the rest of Plane's 60 s window
    assert len(sleeps.waits) == 1
    assert 50.0 <= sleeps.waits[0] <= 60.0


def test_a_request_that_hangs_is_a_retryable_timeout(
    plane: FakePlane, item: dict[str, Any]
) -> None:
    plane.hang_next("GET", "/work-items/", count=2)
    tracker = tracker_for(plane, item, timeout_s=0.3, retries=1)
    try:
        with pytest.raises(RemoteError, match="timed out") as err:
            tracker.state("DEMO-1")
    finally:
        tracker.close()
    assert err.value.retryable
    assert err.value.status is None


def test_junk_instead_of_json_is_a_permanent_remote_error(
    plane: FakePlane, tracker: PlaneTracker
) -> None:
    plane.junk_next("GET", "/work-items/")
    with pytest.raises(RemoteError, match="unexpected answer") as err:
        tracker.state("DEMO-1")
    assert not err.value.retryable


def test_a_wrong_shape_is_a_permanent_remote_error(plane: FakePlane, tracker: PlaneTracker) -> None:
    plane.junk_next("GET", "/work-items/", body=b'{"id": 7}')
    with pytest.raises(RemoteError, match="unexpected answer"):
        tracker.state("DEMO-1")


def test_a_bad_api_key_is_a_401_remote_error(plane: FakePlane, item: dict[str, Any]) -> None:
    tracker = tracker_for(plane, item, api_key="wrong")
    try:
        with pytest.raises(RemoteError) as err:
            tracker.state("DEMO-1")
    finally:
        tracker.close()
    assert (err.value.status, err.value.retryable) == (401, False)
    assert len(plane.requests) == 1


# --- webhooks --------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_webhooks_from_the_fake_are_signed_like_plane(plane: FakePlane, receiver: Receiver) -> None:
    # Given Plane posts webhooks to our receiver
    plane.webhook_url = f"{receiver.url}/webhooks/plane"
    # When a human creates an item and moves it, and Conveyor moves it by API
    item = plane.create_item(PROJECT, "Widget sync drops items on timeout")
    plane.move(item["id"], "In Progress")
    tracker = tracker_for(plane, item)
    try:
        tracker.set_state("DEMO-1", "In Review", key="k")
    finally:
        tracker.close()
    wait_until(lambda: len(receiver.received) == 3, what="three webhooks")

    # Then each body is json.dumps of the payload, signed over the raw bytes
    deliveries = set()
    seen = []
    for body, headers in receiver.received:
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Plane-Signature"] == expected
        assert headers["X-Plane-Event"] == "issue"
        assert headers["User-Agent"] == "Autopilot"
        payload = json.loads(body)
        assert json.dumps(payload).encode() == body
        deliveries.add(headers["X-Plane-Delivery"])
        seen.append(
            (payload["action"], payload["activity"]["field"], payload["data"]["state"]["name"])
        )
    assert len(deliveries) == 3
    assert seen == [
        ("created", None, "Backlog"),
        ("updated", "state_id", "In Progress"),
        ("updated", "state", "In Review"),
    ]
    updated = json.loads(receiver.received[2][0])
    assert updated["activity"]["old_value"] == plane.state_id(PROJECT, "In Progress")
    assert updated["activity"]["new_value"] == plane.state_id(PROJECT, "In Review")
    assert updated["data"]["id"] == item["id"]


def test_the_fake_drops_a_seeded_share_of_webhooks(receiver: Receiver) -> None:
    with FakePlane(KEY, WORKSPACE, f"{receiver.url}/webhooks/plane", SECRET, 0.5, seed=7) as fake:
        for n in range(20):
            fake.create_item(PROJECT, f"item {n}")
        wait_until(
            lambda: (
                len(fake.deliveries) == 20
                and all(d["dropped"] or d["status"] for d in fake.deliveries)
            ),
            what="20 delivery attempts",
        )
        dropped = sum(1 for d in fake.deliveries if d["dropped"])
    assert 0 < dropped < 20
    assert len(receiver.received) == 20 - dropped
