"""Webhook verification and normalization: recorded fixtures, refusals, and fuzzing."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus import subjects
from bus.messages import (
    CommitStatusEvent,
    Message,
    PullRequestEvent,
    PushEvent,
    WorkItemEvent,
)
from conveyor.errors import WebhookRejected
from gateways import webhooks
from gateways.webhooks import Ignored, Normalized
from tests.webhook_fixtures import (
    SECRET,
    WEBHOOKS,
    load,
    payload,
    resigned,
    sign,
    source_of,
)

FUZZ_EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "2000"))
"""Examples of the big fuzz property; `CONVEYOR_FUZZ_EXAMPLES=10000` for the long run."""
MUTATION_EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "500"))
"""Examples of the signed-mutation property (each one re-signs a whole payload)."""
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HEAD = "a3c9e7f1d2b4c6e8f0a1b3c5d7e9f1a2b4c6d8e0"
EXPECTED: dict[str, tuple[str, str, Message]] = {
    "gitea-push": (
        subjects.EVENTS_GITEA_PUSH,
        "gitea:0f3b2a4e-6c1d-4e8a-9b7f-2d5c8e1a3b60",
        PushEvent(
            delivery_id="0f3b2a4e-6c1d-4e8a-9b7f-2d5c8e1a3b60",
            repo="acme/widgets",
            branch="feature/WID-42-retry",
            before="5f0c2e1b7a9d4c3e8f6a1b2c3d4e5f60718293a4",
            after=HEAD,
        ),
    ),
    "gitea-status": (
        subjects.EVENTS_GITEA_STATUS,
        "gitea:4b6d8f0a-1c3e-4a5b-8d7f-9e0a1b2c3d4e",
        CommitStatusEvent(
            delivery_id="4b6d8f0a-1c3e-4a5b-8d7f-9e0a1b2c3d4e",
            repo="acme/widgets",
            sha=HEAD,
            state="success",
            context="ci/build",
            description="Build passed",
            target_url="https://ci.example.test/builds/311",
        ),
    ),
    "gitea-pull_request-opened": (
        subjects.EVENTS_GITEA_PULL_REQUEST,
        "gitea:7a1e9c3d-2b4f-4d6a-8e0c-1f3a5b7d9e21",
        PullRequestEvent(
            delivery_id="7a1e9c3d-2b4f-4d6a-8e0c-1f3a5b7d9e21",
            repo="acme/widgets",
            number=17,
            action="opened",
            merged=False,
            head_branch="feature/WID-42-retry",
            head_sha=HEAD,
            base_branch="main",
        ),
    ),
    "gitea-pull_request-closed-merged": (
        subjects.EVENTS_GITEA_PULL_REQUEST,
        "gitea:c2d4e6f8-0a1b-4c3d-9e5f-7a8b9c0d1e2f",
        PullRequestEvent(
            delivery_id="c2d4e6f8-0a1b-4c3d-9e5f-7a8b9c0d1e2f",
            repo="acme/widgets",
            number=17,
            action="closed",
            merged=True,
            head_branch="feature/WID-42-retry",
            head_sha=HEAD,
            base_branch="main",
            merge_commit_sha="e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3",
        ),
    ),
    "plane-issue-created": (
        subjects.EVENTS_PLANE_WORK_ITEM,
        "plane:01ab9316-f978-4449-bad6-dce958be8454",
        WorkItemEvent(
            delivery_id="01ab9316-f978-4449-bad6-dce958be8454",
            action="created",
            project_id="22b6fc9c-1849-45da-b103-52a3e3a6b4c1",
            work_item_id="088a83b9-a53f-4dda-b2bc-c860cf455997",
            sequence_id=43,
            title="Widget sync drops items on timeout",
            description="<p></p>",
            state_id="067b88e5-304b-4221-ba09-94340dcc36e5",
            state_name="Todo",
        ),
    ),
    "plane-issue-updated": (
        subjects.EVENTS_PLANE_WORK_ITEM,
        "plane:f819eff4-cd50-4987-bc97-e5be1e04c94f",
        WorkItemEvent(
            delivery_id="f819eff4-cd50-4987-bc97-e5be1e04c94f",
            action="updated",
            project_id="22b6fc9c-1849-45da-b103-52a3e3a6b4c1",
            work_item_id="775c5716-5302-4617-bb9f-2cd843911268",
            sequence_id=42,
            title="Add retry to widget sync",
            description="<p></p>",
            state_id="b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e",
            state_name="In Review",
            field="state_id",
        ),
    ),
}


def normalize(name: str, headers: dict[str, str], body: bytes) -> Normalized | Ignored:
    return webhooks.normalize(source_of(name), headers, body, secret=SECRET)


def rejected(name: str, headers: dict[str, str], body: bytes) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        normalize(name, headers, body)
    return info.value


# --- recorded fixtures --------------------------------------------------------------------


@pytest.mark.parametrize("name", WEBHOOKS)
def test_every_recorded_webhook_verifies_against_its_exact_bytes(name: str) -> None:
    headers, body = load(name)
    signature = headers["X-Gitea-Signature" if name.startswith("gitea") else "X-Plane-Signature"]
    assert webhooks.verify(SECRET.encode(), body, signature)


@pytest.mark.parametrize("name", WEBHOOKS)
def test_every_recorded_webhook_normalizes_to_its_event_subject_and_msg_id(name: str) -> None:
    headers, body = load(name)
    subject, msg_id, event = EXPECTED[name]
    assert normalize(name, headers, body) == Normalized(
        source=source_of(name), subject=subject, msg_id=msg_id, event=event
    )


@pytest.mark.parametrize("name", WEBHOOKS)
def test_header_names_are_matched_in_any_case(name: str) -> None:
    headers, body = load(name)
    lowered = {k.lower(): v for k, v in headers.items()}
    upper = {k.upper(): v for k, v in headers.items()}
    assert normalize(name, lowered, body) == normalize(name, upper, body)
    assert isinstance(normalize(name, lowered, body), Normalized)


def test_parse_functions_return_the_normalized_event_or_none() -> None:
    headers, body = load("gitea-push")
    parsed = webhooks.parse_gitea(headers, body, secret=SECRET)
    assert parsed is not None
    assert parsed.event == EXPECTED["gitea-push"][2]
    headers, body = load("plane-issue-created")
    plane = webhooks.parse_plane(headers, body, secret=SECRET.encode())
    assert plane is not None
    assert isinstance(plane.event, WorkItemEvent)
    headers, body = load("gitea-push")
    headers["X-Gitea-Event-Type"] = "issues"
    assert webhooks.parse_gitea(headers, body, secret=SECRET) is None


def test_a_normalized_event_round_trips_as_a_bus_message() -> None:
    decoder = msgspec.json.Decoder(WorkItemEvent | CommitStatusEvent | PullRequestEvent | PushEvent)
    for name in WEBHOOKS:
        result = normalize(name, *load(name))
        assert isinstance(result, Normalized)
        assert decoder.decode(msgspec.json.encode(result.event)) == result.event


# --- signatures ---------------------------------------------------------------------------


def test_verify_accepts_the_hub_prefix_and_upper_case_hex() -> None:
    body = b'{"a": 1}'
    digest = sign(body)
    assert webhooks.verify(SECRET.encode(), body, digest)
    assert webhooks.verify(SECRET.encode(), body, f"sha256={digest}")
    assert webhooks.verify(SECRET.encode(), body, digest.upper())


@pytest.mark.parametrize(
    "signature",
    ["", "sha1=abc", "0" * 64, "zz" * 32, "sha256=", "é" * 64, " " + "0" * 63],
)
def test_verify_refuses_anything_but_the_right_digest(signature: str) -> None:
    assert not webhooks.verify(SECRET.encode(), b"{}", signature)


def test_verify_refuses_everything_without_a_secret() -> None:
    body = b"{}"
    assert not webhooks.verify(b"", body, webhooks.sign(b"", body))


@pytest.mark.parametrize("name", WEBHOOKS)
def test_a_tampered_body_is_refused_with_401(name: str) -> None:
    headers, body = load(name)
    tampered = body.replace(b"a3c9", b"a3c8") if b"a3c9" in body else body + b" "
    assert rejected(name, headers, tampered).status == 401


@pytest.mark.parametrize("name", WEBHOOKS)
def test_a_tampered_or_missing_signature_is_refused_with_401(name: str) -> None:
    headers, body = load(name)
    key = "X-Gitea-Signature" if name.startswith("gitea") else "X-Plane-Signature"
    flipped = dict(headers, **{key: ("1" if headers[key][0] != "1" else "2") + headers[key][1:]})
    assert rejected(name, flipped, body).status == 401
    missing = {k: v for k, v in headers.items() if "signature" not in k.lower()}
    err = rejected(name, missing, body)
    assert err.status == 401
    assert "missing" in err.reason


def test_gitea_falls_back_to_the_hub_signature_header() -> None:
    headers, body = load("gitea-push")
    del headers["X-Gitea-Signature"]
    assert isinstance(normalize("gitea-push", headers, body), Normalized)


@pytest.mark.parametrize("name", ["gitea-push", "plane-issue-created"])
def test_a_source_without_a_configured_secret_accepts_nothing(name: str) -> None:
    headers, body = load(name)
    source = source_of(name)
    with pytest.raises(WebhookRejected) as info:
        webhooks.normalize(source, headers, body, secret="")
    assert info.value.status == 401
    assert info.value.reason == f"no secret configured for {source}"


def test_a_wrong_secret_is_refused_with_401() -> None:
    headers, body = load("gitea-status")
    with pytest.raises(WebhookRejected) as info:
        webhooks.normalize("gitea", headers, body, secret="another-secret")
    assert info.value.status == 401


def test_the_signature_is_checked_before_the_payload_is_read() -> None:
    # Given an unsigned body that is not even JSON
    headers, _ = load("gitea-push")
    # Then the answer is 401, which says nothing about the payload
    assert rejected("gitea-push", headers, b"not json").status == 401


# --- content type and headers -------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["", "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_json_by_content_type_is_refused_with_415(content_type: str) -> None:
    headers, body = load("gitea-push")
    headers["Content-Type"] = content_type
    err = rejected("gitea-push", headers, body)
    assert err.status == 415
    assert err.reason == "Content-Type: must be application/json"


def test_a_json_content_type_with_parameters_is_accepted() -> None:
    headers, body = load("plane-issue-created")
    headers["Content-Type"] = "Application/JSON; charset=utf-8"
    assert isinstance(normalize("plane-issue-created", headers, body), Normalized)


@pytest.mark.parametrize(
    ("name", "header"),
    [("gitea-push", "X-Gitea-Delivery"), ("plane-issue-updated", "X-Plane-Delivery")],
)
def test_a_missing_delivery_id_is_refused_with_400_naming_the_header(
    name: str, header: str
) -> None:
    headers, body = load(name)
    del headers[header]
    err = rejected(name, headers, body)
    assert (err.status, err.reason) == (400, f"{header}: missing")


def test_a_delivery_id_that_cannot_be_a_msg_id_is_refused_with_400() -> None:
    headers, body = resigned("gitea-push", payload("gitea-push"), delivery="a b")
    err = rejected("gitea-push", headers, body)
    assert err.status == 400
    assert err.reason.startswith("X-Gitea-Delivery:")


def test_a_missing_event_type_is_refused_with_400() -> None:
    headers, body = load("gitea-push")
    for key in ("X-Gitea-Event-Type", "X-Gitea-Event"):
        del headers[key]
    assert rejected("gitea-push", headers, body).reason == "X-Gitea-Event-Type: missing"
    headers, body = load("plane-issue-created")
    del headers["X-Plane-Event"]
    assert rejected("plane-issue-created", headers, body).reason == "X-Plane-Event: missing"


# --- payload validation -------------------------------------------------------------------


def _without(data: Any, path: str) -> Any:
    out = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    del node[last]
    return out


def _with(data: Any, path: str, value: Any) -> Any:
    out = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[last] = value
    return out


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("gitea-pull_request-opened", "pull_request.head.sha"),
        ("gitea-pull_request-opened", "pull_request.base.ref"),
        ("gitea-pull_request-closed-merged", "number"),
        ("gitea-push", "after"),
        ("gitea-push", "repository.full_name"),
        ("gitea-status", "sha"),
        ("gitea-status", "state"),
        ("plane-issue-created", "data.project"),
        ("plane-issue-created", "data.sequence_id"),
        ("plane-issue-updated", "data.id"),
        ("plane-issue-updated", "action"),
    ],
)
def test_a_missing_field_is_refused_with_400_naming_it(name: str, path: str) -> None:
    headers, body = resigned(name, _without(payload(name), path))
    err = rejected(name, headers, body)
    assert (err.status, err.reason) == (400, f"{path}: missing")


@pytest.mark.parametrize(
    ("name", "path", "value", "reason"),
    [
        ("gitea-pull_request-opened", "number", "17", "number: expected `int`, got `str`"),
        ("gitea-pull_request-closed-merged", "pull_request.merged", "yes", None),
        ("gitea-pull_request-opened", "pull_request.head.sha", "abc", None),
        ("gitea-pull_request-opened", "pull_request.head.ref", "--upload-pack=x", None),
        ("gitea-pull_request-opened", "pull_request.base.ref", "a/../b", None),
        ("gitea-pull_request-opened", "action", "Opened!", None),
        ("gitea-pull_request-opened", "number", 0, None),
        ("gitea-push", "after", "g" * 40, "after: must be 40 hex digits"),
        ("gitea-push", "repository.full_name", "widgets", None),
        ("gitea-push", "repository.full_name", "acme/../etc", None),
        ("gitea-status", "state", "great", None),
        ("gitea-status", "context", 7, None),
        ("gitea-status", "context", "x" * 300, None),
        ("plane-issue-created", "data.sequence_id", "43", None),
        ("plane-issue-created", "data.project", "../../etc", None),
        ("plane-issue-created", "data.state", 5, None),
        ("plane-issue-updated", "data.state.id", None, None),
        ("plane-issue-updated", "activity.new_value", 5, None),
    ],
)
def test_a_field_of_the_wrong_type_or_shape_is_refused_with_400_naming_it(
    name: str, path: str, value: Any, reason: str | None
) -> None:
    headers, body = resigned(name, _with(payload(name), path, value))
    err = rejected(name, headers, body)
    assert err.status == 400
    assert err.reason.startswith(f"{path}:"), err.reason
    if reason is not None:
        assert err.reason == reason


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"\xff\xfe", b'{"a": '])
def test_a_signed_body_that_is_not_json_is_refused_with_400(body: bytes) -> None:
    headers, _ = load("gitea-status")
    headers["X-Gitea-Signature"] = sign(body)
    err = rejected("gitea-status", headers, body)
    assert err.status == 400
    assert err.reason.startswith("body: malformed JSON")


def test_a_signed_json_array_is_refused_with_400() -> None:
    headers, body = resigned("plane-issue-created", [1, 2])
    err = rejected("plane-issue-created", headers, body)
    assert (err.status, err.reason) == (400, "body: expected `object`, got `array`")


def test_a_branch_may_contain_slashes() -> None:
    data = _with(payload("gitea-push"), "ref", "refs/heads/team/a/feature-1")
    result = normalize("gitea-push", *resigned("gitea-push", data))
    assert isinstance(result, Normalized)
    assert isinstance(result.event, PushEvent)
    assert result.event.branch == "team/a/feature-1"


def test_free_text_is_cleaned_and_cut_instead_of_refused() -> None:
    data = _with(payload("plane-issue-created"), "data.name", "Fix\x00 it\u2028now")
    data = _with(data, "data.description_html", "x" * 30_000)
    result = normalize("plane-issue-created", *resigned("plane-issue-created", data))
    assert isinstance(result, Normalized)
    assert isinstance(result.event, WorkItemEvent)
    assert result.event.title == "Fix  it now"
    assert len(result.event.description) == 20_000


# --- plane specifics ----------------------------------------------------------------------


def test_a_deleted_work_item_carries_only_its_id() -> None:
    data = {
        "event": "issue",
        "action": "deleted",
        "webhook_id": "3c2c32ac-82df-48b3-be2a-a3e21dbe8692",
        "workspace_id": "d2d97c94-6a1b-4c2d-8e3f-5577c0d7c769",
        "data": {"id": "775c5716-5302-4617-bb9f-2cd843911268"},
        "activity": {"field": None, "new_value": None, "old_value": None},
    }
    result = normalize("plane-issue-updated", *resigned("plane-issue-updated", data))
    assert isinstance(result, Normalized)
    assert result.event == WorkItemEvent(
        delivery_id="f819eff4-cd50-4987-bc97-e5be1e04c94f",
        action="deleted",
        project_id="",
        work_item_id="775c5716-5302-4617-bb9f-2cd843911268",
    )


def test_an_api_state_change_names_the_new_state_by_id_only_when_data_disagrees() -> None:
    # Given a PATCH {"state": ...} through Plane's API: field `state`, data a step behind
    data = payload("plane-issue-updated")
    data["activity"] = {**data["activity"], "field": "state", "new_value": "0" * 8}
    result = normalize("plane-issue-updated", *resigned("plane-issue-updated", data))
    # Then the state is the activity's id, with no name to guess from
    assert isinstance(result, Normalized)
    assert isinstance(result.event, WorkItemEvent)
    assert (result.event.state_id, result.event.state_name) == ("0" * 8, "")
    assert result.event.field == "state"


def test_a_state_given_as_a_bare_id_is_taken() -> None:
    data = _with(payload("plane-issue-created"), "data.state", "067b88e5")
    result = normalize("plane-issue-created", *resigned("plane-issue-created", data))
    assert isinstance(result, Normalized)
    assert isinstance(result.event, WorkItemEvent)
    assert (result.event.state_id, result.event.state_name) == ("067b88e5", "")


def test_an_update_of_another_field_keeps_the_current_state() -> None:
    data = payload("plane-issue-updated")
    data["activity"] = {**data["activity"], "field": "priority", "new_value": "urgent"}
    result = normalize("plane-issue-updated", *resigned("plane-issue-updated", data))
    assert isinstance(result, Normalized)
    assert isinstance(result.event, WorkItemEvent)
    assert (result.event.state_name, result.event.field) == ("In Review", "priority")


# --- ignored deliveries -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "header", "value"),
    [
        ("gitea-push", "X-Gitea-Event-Type", "issues"),
        ("gitea-push", "X-Gitea-Event-Type", "create"),
        ("gitea-pull_request-opened", "X-Gitea-Event-Type", "pull_request_review_approved"),
        ("plane-issue-created", "X-Plane-Event", "cycle"),
        ("plane-issue-created", "X-Plane-Event", "issue_comment"),
        ("plane-issue-created", "X-Plane-Event", "project"),
    ],
)
def test_an_unused_event_type_is_ignored_with_a_reason(name: str, header: str, value: str) -> None:
    headers, body = load(name)
    headers[header] = value
    result = normalize(name, headers, body)
    assert isinstance(result, Ignored)
    assert value in result.reason


def test_a_tag_push_is_ignored() -> None:
    data = _with(payload("gitea-push"), "ref", "refs/tags/v1.0")
    result = normalize("gitea-push", *resigned("gitea-push", data))
    assert result == Ignored("push to 'refs/tags/v1.0' is not a branch")


def test_an_unknown_plane_action_is_ignored() -> None:
    data = _with(payload("plane-issue-created"), "action", "archived")
    result = normalize("plane-issue-created", *resigned("plane-issue-created", data))
    assert isinstance(result, Ignored)


def test_a_pull_request_sync_is_a_pull_request_event() -> None:
    headers, body = load("gitea-pull_request-opened")
    headers["X-Gitea-Event-Type"] = "pull_request_sync"
    result = normalize("gitea-pull_request-opened", headers, body)
    assert isinstance(result, Normalized)
    assert result.subject == subjects.EVENTS_GITEA_PULL_REQUEST


def test_an_unknown_source_is_refused() -> None:
    with pytest.raises(WebhookRejected) as info:
        webhooks.normalize("github", {}, b"{}", secret=SECRET)
    assert info.value.status == 404


# --- fuzzing ------------------------------------------------------------------------------

header_names = st.sampled_from(
    [
        "Content-Type",
        "content-type",
        "X-Gitea-Event-Type",
        "X-Gitea-Event",
        "X-Gitea-Delivery",
        "X-Gitea-Signature",
        "X-Hub-Signature-256",
        "X-Plane-Event",
        "X-Plane-Delivery",
        "X-Plane-Signature",
        "X-Other",
    ]
)
header_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        ["application/json", "push", "status", "pull_request", "issue", "cycle", "abc-123"]
    ),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.sampled_from([HEAD, "refs/heads/main", "acme/widgets", "created", "deleted", "state"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "action",
                    "number",
                    "pull_request",
                    "head",
                    "base",
                    "ref",
                    "sha",
                    "after",
                    "repository",
                    "full_name",
                    "state",
                    "data",
                    "id",
                    "project",
                    "sequence_id",
                    "activity",
                    "field",
                    "new_value",
                    "name",
                ]
            )
            | st.text(max_size=10),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


def _outcome(source: str, headers: dict[str, str], body: bytes) -> Normalized | Ignored | int:
    try:
        return webhooks.normalize(source, headers, body, secret=SECRET)
    except WebhookRejected as err:
        refused = err
    assert refused.status in (400, 401, 415)
    assert refused.reason
    return refused.status


@FUZZ
@given(
    source=st.sampled_from(webhooks.SOURCES),
    headers=st.dictionaries(header_names, header_values, max_size=8),
    body=st.binary(max_size=512),
    signed=st.booleans(),
)
def test_random_headers_and_bodies_raise_nothing_but_webhook_rejected(
    source: str, headers: dict[str, str], body: bytes, signed: bool
) -> None:
    if signed:
        headers["X-Gitea-Signature" if source == "gitea" else "X-Plane-Signature"] = sign(body)
    _outcome(source, headers, body)


@settings(FUZZ, max_examples=MUTATION_EXAMPLES)
@given(
    name=st.sampled_from(WEBHOOKS),
    path_choice=st.integers(min_value=0, max_value=10_000),
    value=json_values,
)
def test_signed_mutations_of_real_payloads_are_normalized_or_refused_with_400(
    name: str, path_choice: int, value: Any
) -> None:
    # Given a real payload with one node replaced by arbitrary JSON, correctly signed
    data = PAYLOADS[name]
    path = PATHS[name][path_choice % len(PATHS[name])]
    mutated = _replace(data, path, value)
    headers, body = resigned(name, mutated)
    # Then it is normalized, ignored or refused with 400 -- never a crash, never 401/415
    outcome = _outcome(source_of(name), headers, body)
    assert outcome == 400 or isinstance(outcome, Normalized | Ignored)
    if isinstance(outcome, Normalized):
        json.loads(msgspec.json.encode(outcome.event))


PAYLOADS = {name: payload(name) for name in WEBHOOKS}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Any:
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, (*prefix, index))


PATHS = {name: list(_paths(data)) for name, data in PAYLOADS.items()}


def _replace(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out
