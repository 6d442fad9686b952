"""Commands and status over NATS: bad input is refused naming the field and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus import subjects
from tests.harness import Harness, make_config


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One node for the whole module (hypothesis drives many requests through it)."""
    from bus.server import EmbeddedNats

    root = tmp_path_factory.mktemp("service")
    server = EmbeddedNats(root / "nats")
    server.start()
    cfg = make_config(root / "data", server.url)
    h = Harness(cfg, server.url).start()
    try:
        yield h
    finally:
        h.close()
        server.stop()


def _raw(harness: Harness, subject: str, body: bytes) -> dict[str, object]:
    reply = harness.client.bus.request(subject, body, timeout_s=10)
    parsed: dict[str, object] = json.loads(reply)
    return parsed


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"repo": "demo"}, "title"),
        ({"title": "x"}, "repo"),
        ({"repo": "nope", "title": "x"}, "repo"),
        ({"repo": "../demo", "title": "x"}, "repo"),
        ({"repo": "demo", "title": "x", "id": "../../etc"}, "id"),
        ({"repo": "demo", "title": "x", "id": "DEMO-1; rm -rf /"}, "id"),
        ({"repo": "demo", "title": "x", "id": "OTHER-1"}, "id"),
        ({"repo": "demo", "title": "bad\x00title"}, "title"),
        ({"repo": "demo", "title": "two\nlines"}, "title"),
        ({"repo": "demo", "title": ""}, "title"),
        ({"repo": "demo", "title": "x" * 201}, "title"),
        ({"repo": "demo", "title": 5}, "title"),
        ({"repo": "demo", "title": "x", "description": "\x1b[31m"}, "description"),
    ],
)
def test_a_bad_submit_is_refused_naming_the_field(
    harness: Harness, body: dict[str, object], field: str
) -> None:
    before = harness.tasks()
    reply = harness.client.command("submit", body)
    assert reply["ok"] is False
    assert reply["field"] == field, reply
    assert reply["error"]
    assert harness.tasks() == before


def test_a_body_that_is_not_json_is_refused(harness: Harness) -> None:
    reply = _raw(harness, subjects.CMD_SUBMIT, b"{not json")
    assert reply["ok"] is False
    assert reply["field"] == "body"


@pytest.mark.parametrize("name", ["approve", "reject", "cancel", "retry", "confirm-deploy"])
def test_a_command_for_an_unknown_or_invalid_id_is_refused(harness: Harness, name: str) -> None:
    assert harness.client.command(name, {"id": "DEMO-999"})["field"] == "id"
    assert harness.client.command(name, {"id": "../x"})["field"] == "id"
    assert harness.client.command(name, {})["field"] == "id"


def test_status_subjects_answer_json(harness: Harness) -> None:
    overview = harness.client.request(subjects.STATUS)
    assert overview["service"] == "conveyor"
    assert set(overview["actors"]) == {
        "stage_engine",
        "queue_worker",
        "reaper",
        "lease_keeper",
        "intake",
        "reconciler",
        "monitor",
        "janitor",
        "launcher",
    }
    assert overview["healthy"] is True
    queue = harness.client.request(subjects.STATUS_QUEUE)
    assert "counts" in queue
    assert "running" in queue
    actors = (
        "stage_engine",
        "queue_worker",
        "reaper",
        "lease_keeper",
        "intake",
        "reconciler",
        "monitor",
        "janitor",
    )
    for actor in (*actors, "launcher"):
        assert harness.client.request(subjects.status_actor(actor))["healthy"] is True
    missing = harness.client.request(subjects.status_task("DEMO-404"))
    assert missing["ok"] is False


def test_the_micro_service_is_discoverable(harness: Harness) -> None:
    info = harness.client.request("$SRV.INFO.conveyor")
    assert info["name"] == "conveyor"
    names = {ep["name"] for ep in info["endpoints"]}
    assert {"status", "tasks", "task", "queue", "cmd-submit"} <= names or {"launcher"} <= names
    pings = harness.client.request("$SRV.PING.conveyor")
    assert pings["name"] == "conveyor"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.dictionaries(
        st.sampled_from(["repo", "title", "id", "description", "x"]), json_values, max_size=5
    )
)
def test_fuzzed_submits_never_crash_and_never_create_invalid_tasks(
    harness: Harness, body: dict[str, object]
) -> None:
    reply = _raw(harness, subjects.CMD_SUBMIT, json.dumps(body).encode())
    assert isinstance(reply.get("ok"), bool)
    if not reply["ok"]:
        assert reply.get("error")
    else:
        task = reply["task"]
        assert isinstance(task, dict)
        assert task["repo"] == "demo"
        harness.client.command("cancel", {"id": task["id"]})


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.binary(max_size=64),
    name=st.sampled_from(["approve", "reject", "cancel", "retry", "confirm-deploy"]),
)
def test_fuzzed_command_bodies_are_answered_and_change_nothing(
    harness: Harness, raw: bytes, name: str
) -> None:
    before = [(t["id"], t["stage"]) for t in harness.tasks()]
    reply = _raw(harness, subjects.COMMANDS[name], raw)
    assert reply["ok"] is False
    assert [(t["id"], t["stage"]) for t in harness.tasks()] == before
