"""Inbound webhooks from Gitea and Plane: verify, validate and normalize. Pure, no I/O.

Each parser takes the request headers (any case), the exact body bytes and the
configured secret, and either raises `WebhookRejected` carrying the HTTP status
to answer, returns a `Normalized` event (subject, `Nats-Msg-Id`, message), or
returns None for a delivery that is acknowledged but not used. `normalize`
does the same for either source and says why a delivery was ignored.

The order of checks is part of the contract: content type (415), signature over
the raw bytes (401), delivery id (400), event type (ignored), payload (400). So
nothing about the payload is looked at before its signature is good, and an
unsigned request learns nothing but 401.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import TypeVar

import msgspec

from bus import subjects
from bus.messages import (
    CommitStatusEvent,
    Event,
    PullRequestEvent,
    PushEvent,
    WorkItemEvent,
)
from conveyor import validate
from conveyor.errors import InvalidField, WebhookRejected

GITEA = "gitea"
PLANE = "plane"
SOURCES = (GITEA, PLANE)
"""The webhook senders the gateway accepts, as they appear in paths, subjects and msg ids."""

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
"""A full git object id (SHA-1), lower-case hex as Gitea sends it."""

REPO_FULL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
"""Gitea's `owner/name`: one slash, letters, digits, `-`, `_` and `.`."""

DELIVERY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
"""A delivery id (a uuid from both senders); it becomes part of the `Nats-Msg-Id`."""

ACTION_RE = re.compile(r"^[a-z][a-z_]{0,39}$")
"""A pull request action such as `opened`, `closed` or `label_updated`."""

STATUS_STATES = frozenset({"pending", "success", "error", "failure", "warning"})
"""Commit status states Gitea sends (`warning` comes from the listing API's set)."""

GITEA_PULL_REQUEST_TYPES = frozenset({"pull_request", "pull_request_sync"})
"""`X-Gitea-Event-Type` values that carry a PullRequestPayload Conveyor reads.

Review, label, assignment and comment sub-types carry it too, but never change
a head, a base or the merged flag, so they are ignored.
"""

PLANE_ACTIONS = frozenset({"created", "updated", "deleted"})
PLANE_STATE_FIELDS = frozenset({"state", "state_id"})
"""`activity.field` of a state change: `state_id` from the web UI, `state` from the API."""

BRANCH_PREFIX = "refs/heads/"
MAX_BRANCH = 255
MAX_SHORT_TEXT = 255
_SIGNATURE_RE = re.compile(r"^(?:sha256=)?([0-9a-fA-F]{64})$")
_BAD_REF_CHARS = frozenset(" ~^:?*[\\\x7f")
_CONTROL = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

T = TypeVar("T")


class Normalized(msgspec.Struct, frozen=True, kw_only=True):
    """A verified webhook as the gateway publishes it: where, under which id, and what."""

    source: str
    subject: str
    msg_id: str
    event: Event


class Ignored(msgspec.Struct, frozen=True):
    """A verified webhook Conveyor does not use; answered 202 with `reason`."""

    reason: str


# --- signatures ---------------------------------------------------------------------------


def sign(secret: bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 of `body` keyed with `secret`, as both senders compute it."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str) -> bool:
    """Whether `signature` is the HMAC-SHA256 of `body` under `secret`.

    `signature` is hex with an optional `sha256=` prefix (the `X-Hub-Signature-256`
    form). An empty secret never verifies: an unconfigured source accepts nothing.
    """
    if not secret:
        return False
    match = _SIGNATURE_RE.fullmatch(signature)
    if match is None:
        return False
    # Both sides are ASCII hex here; compare_digest keeps the comparison constant-time.
    return hmac.compare_digest(sign(secret, body), match.group(1).lower())


# --- entry points -------------------------------------------------------------------------


def normalize(
    source: str, headers: Mapping[str, str], body: bytes, *, secret: bytes | str
) -> Normalized | Ignored:
    """Verify and normalize one delivery from `source` (`gitea` or `plane`)."""
    if source == GITEA:
        return _gitea(_lower(headers), body, _secret_bytes(secret))
    if source == PLANE:
        return _plane(_lower(headers), body, _secret_bytes(secret))
    raise WebhookRejected(404, f"unknown webhook source {source[:40]!r}")


def parse_gitea(
    headers: Mapping[str, str], body: bytes, *, secret: bytes | str
) -> Normalized | None:
    """Verify and normalize a Gitea delivery; None if its event type is not used."""
    result = _gitea(_lower(headers), body, _secret_bytes(secret))
    return result if isinstance(result, Normalized) else None


def parse_plane(
    headers: Mapping[str, str], body: bytes, *, secret: bytes | str
) -> Normalized | None:
    """Verify and normalize a Plane delivery; None if its event or action is not used."""
    result = _plane(_lower(headers), body, _secret_bytes(secret))
    return result if isinstance(result, Normalized) else None


# --- gitea --------------------------------------------------------------------------------


class _Repository(msgspec.Struct):
    full_name: str


class _PushPayload(msgspec.Struct):
    ref: str
    after: str
    repository: _Repository
    before: str = ""


class _Head(msgspec.Struct):
    ref: str
    sha: str


class _Base(msgspec.Struct):
    ref: str


class _PullRequest(msgspec.Struct):
    head: _Head
    base: _Base
    merged: bool = False
    merge_commit_sha: str | None = None


class _PullRequestPayload(msgspec.Struct):
    action: str
    number: int
    pull_request: _PullRequest
    repository: _Repository


class _StatusPayload(msgspec.Struct):
    sha: str
    state: str
    repository: _Repository
    context: str = ""
    description: str | None = None
    target_url: str | None = None


def _gitea(headers: dict[str, str], body: bytes, secret: bytes) -> Normalized | Ignored:
    _check_content_type(headers)
    signature = headers.get("x-gitea-signature") or headers.get("x-hub-signature-256", "")
    _check_signature(GITEA, secret, body, signature, "X-Gitea-Signature")
    delivery = _delivery(headers, "x-gitea-delivery", "X-Gitea-Delivery")
    # Event-Type is the raw hook type; Event folds sub-types and is empty for `status` in
    # some versions, so it is only a fallback for senders that omit Event-Type.
    event_type = headers.get("x-gitea-event-type") or headers.get("x-gitea-event", "")
    if not event_type:
        raise WebhookRejected(400, "X-Gitea-Event-Type: missing")
    msg_id = f"{GITEA}:{delivery}"
    if event_type == "push":
        return _gitea_push(body, delivery, msg_id)
    if event_type == "status":
        return _gitea_status(body, delivery, msg_id)
    if event_type in GITEA_PULL_REQUEST_TYPES:
        return _gitea_pull_request(body, delivery, msg_id)
    return Ignored(f"gitea event {event_type[:40]!r} is not used")


def _gitea_push(body: bytes, delivery: str, msg_id: str) -> Normalized | Ignored:
    payload = _decode(body, _PushPayload)
    repo = _repo(payload.repository.full_name, "repository.full_name")
    if not payload.ref.startswith(BRANCH_PREFIX):
        return Ignored(f"push to {payload.ref[:80]!r} is not a branch")
    branch = _branch(payload.ref.removeprefix(BRANCH_PREFIX), "ref")
    event = PushEvent(
        delivery_id=delivery,
        repo=repo,
        branch=branch,
        before=_sha(payload.before, "before") if payload.before else "",
        after=_sha(payload.after, "after"),
    )
    return Normalized(source=GITEA, subject=subjects.EVENTS_GITEA_PUSH, msg_id=msg_id, event=event)


def _gitea_pull_request(body: bytes, delivery: str, msg_id: str) -> Normalized:
    payload = _decode(body, _PullRequestPayload)
    pr = payload.pull_request
    if not ACTION_RE.fullmatch(payload.action):
        raise WebhookRejected(400, "action: must be 1-40 of a-z and _")
    if payload.number < 1:
        raise WebhookRejected(400, "number: must be > 0")
    merge_sha = pr.merge_commit_sha or ""
    event = PullRequestEvent(
        delivery_id=delivery,
        repo=_repo(payload.repository.full_name, "repository.full_name"),
        number=payload.number,
        action=payload.action,
        merged=pr.merged,
        head_branch=_branch(pr.head.ref, "pull_request.head.ref"),
        head_sha=_sha(pr.head.sha, "pull_request.head.sha"),
        base_branch=_branch(pr.base.ref, "pull_request.base.ref"),
        merge_commit_sha=_sha(merge_sha, "pull_request.merge_commit_sha") if merge_sha else "",
    )
    return Normalized(
        source=GITEA, subject=subjects.EVENTS_GITEA_PULL_REQUEST, msg_id=msg_id, event=event
    )


def _gitea_status(body: bytes, delivery: str, msg_id: str) -> Normalized:
    payload = _decode(body, _StatusPayload)
    if payload.state not in STATUS_STATES:
        raise WebhookRejected(400, f"state: must be one of {', '.join(sorted(STATUS_STATES))}")
    event = CommitStatusEvent(
        delivery_id=delivery,
        repo=_repo(payload.repository.full_name, "repository.full_name"),
        sha=_sha(payload.sha, "sha"),
        state=payload.state,
        context=_short_text(payload.context, "context"),
        description=_free_text(payload.description or ""),
        target_url=_short_text(payload.target_url or "", "target_url", limit=2048),
    )
    return Normalized(
        source=GITEA, subject=subjects.EVENTS_GITEA_STATUS, msg_id=msg_id, event=event
    )


# --- plane --------------------------------------------------------------------------------


class _PlaneState(msgspec.Struct):
    id: str
    name: str = ""


class _PlaneActivity(msgspec.Struct):
    field: str | None = None
    # Raw: only a state change's value is read, and other fields carry other types.
    new_value: msgspec.Raw = msgspec.Raw(b"null")


class _PlaneEnvelope(msgspec.Struct):
    action: str
    data: msgspec.Raw
    activity: _PlaneActivity | None = None


class _PlaneDeleted(msgspec.Struct):
    id: str


class _PlaneIssue(msgspec.Struct):
    id: str
    project: str
    sequence_id: int
    name: str
    description_html: str | None = None
    # An object `{id, name, color, group}` in webhooks; the REST API's bare uuid is taken too.
    state: _PlaneState | str | None = None


def _plane(headers: dict[str, str], body: bytes, secret: bytes) -> Normalized | Ignored:
    _check_content_type(headers)
    _check_signature(PLANE, secret, body, headers.get("x-plane-signature", ""), "X-Plane-Signature")
    delivery = _delivery(headers, "x-plane-delivery", "X-Plane-Delivery")
    event_type = headers.get("x-plane-event", "")
    if not event_type:
        raise WebhookRejected(400, "X-Plane-Event: missing")
    if event_type != "issue":
        # Comments, cycles, modules and projects never drive the pipeline.
        return Ignored(f"plane event {event_type[:40]!r} is not used")
    envelope = _decode(body, _PlaneEnvelope)
    if envelope.action not in PLANE_ACTIONS:
        return Ignored(f"plane issue action {envelope.action[:40]!r} is not used")
    msg_id = f"{PLANE}:{delivery}"
    if envelope.action == "deleted":
        deleted = _decode(envelope.data, _PlaneDeleted, at="data")
        event = WorkItemEvent(
            delivery_id=delivery,
            action="deleted",
            project_id="",
            work_item_id=_plane_id(deleted.id, "data.id"),
        )
        return Normalized(
            source=PLANE, subject=subjects.EVENTS_PLANE_WORK_ITEM, msg_id=msg_id, event=event
        )
    issue = _decode(envelope.data, _PlaneIssue, at="data")
    if issue.sequence_id < 1:
        raise WebhookRejected(400, "data.sequence_id: must be > 0")
    state_id, state_name = _plane_state(issue.state)
    activity = envelope.activity or _PlaneActivity()
    field = _short_text(activity.field or "", "activity.field", limit=64)
    if field in PLANE_STATE_FIELDS:
        new_state = _decode(activity.new_value, str, at="activity.new_value")
        if new_state != state_id:
            # The activity names the state this delivery is about; a name read from `data`
            # for another id would be a lie, so the name is left for Intake to resolve.
            state_id, state_name = _plane_id(new_state, "activity.new_value"), ""
    event = WorkItemEvent(
        delivery_id=delivery,
        action=envelope.action,
        project_id=_plane_id(issue.project, "data.project"),
        work_item_id=_plane_id(issue.id, "data.id"),
        sequence_id=issue.sequence_id,
        title=_free_text(issue.name),
        description=_free_text(issue.description_html or ""),
        state_id=state_id,
        state_name=state_name,
        field=field,
    )
    return Normalized(
        source=PLANE, subject=subjects.EVENTS_PLANE_WORK_ITEM, msg_id=msg_id, event=event
    )


def _plane_state(state: _PlaneState | str | None) -> tuple[str, str]:
    if state is None:
        return "", ""
    if isinstance(state, str):
        return (_plane_id(state, "data.state") if state else ""), ""
    return (
        _plane_id(state.id, "data.state.id"),
        _short_text(state.name, "data.state.name", limit=200),
    )


# --- checks -------------------------------------------------------------------------------


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    # HTTP header names are case-insensitive; NATS headers keep whatever case was sent.
    out: dict[str, str] = {}
    for key, value in headers.items():
        out.setdefault(key.lower(), value)
    return out


def _secret_bytes(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _check_content_type(headers: dict[str, str]) -> None:
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise WebhookRejected(415, "Content-Type: must be application/json")


def _check_signature(source: str, secret: bytes, body: bytes, signature: str, name: str) -> None:
    if not secret:
        raise WebhookRejected(401, f"no secret configured for {source}")
    if not signature:
        raise WebhookRejected(401, f"{name}: missing")
    if not verify(secret, body, signature):
        raise WebhookRejected(401, f"{name}: does not match the body")


def _delivery(headers: dict[str, str], key: str, name: str) -> str:
    value = headers.get(key, "")
    if not value:
        raise WebhookRejected(400, f"{name}: missing")
    if not DELIVERY_RE.fullmatch(value):
        raise WebhookRejected(400, f"{name}: must be 1-128 of A-Z a-z 0-9 _ . : -")
    return value


def _decode(data: bytes, kind: type[T], *, at: str = "") -> T:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as err:
        raise WebhookRejected(400, _field_error(str(err), at)) from err
    except msgspec.DecodeError as err:
        raise WebhookRejected(400, f"{at or 'body'}: malformed JSON ({err})") from err


def _field_error(message: str, at: str) -> str:
    """Rewrite msgspec's `... - at `$.a.b`` as `a.b: ...`, a missing field as `a.b.c: missing`."""
    path, problem = validate.msgspec_error(message)
    field = ".".join(part for part in (at, path) if part).replace(".[", "[") or "body"
    return f"{field}: {problem[:1].lower()}{problem[1:]}"


def _sha(value: str, field: str) -> str:
    sha = value.lower()
    if not SHA_RE.fullmatch(sha):
        raise WebhookRejected(400, f"{field}: must be 40 hex digits")
    return sha


def _repo(value: str, field: str) -> str:
    if not REPO_FULL_NAME_RE.fullmatch(value) or any(
        part in (".", "..") for part in value.split("/")
    ):
        raise WebhookRejected(400, f"{field}: must be owner/name")
    return value


def _branch(value: str, field: str) -> str:
    """A branch name by git's ref rules (it may contain `/`), never an option or a path escape."""
    bad = (
        not value
        or len(value) > MAX_BRANCH
        or value.startswith(("-", "/", "."))
        or value.endswith(("/", ".", ".lock"))
        or ".." in value
        or "//" in value
        or "@{" in value
        or "/." in value
        or value == "@"
        or any(ch in _BAD_REF_CHARS or ord(ch) < 0x20 for ch in value)
    )
    if bad:
        raise WebhookRejected(400, f"{field}: must be a valid git branch name")
    return value


def _plane_id(value: str, field: str) -> str:
    return _validated(validate.external_id, value, field)


def _free_text(value: str) -> str:
    """Human text (a title, a description): cleaned and cut, never a reason to refuse.

    Refusing a long or odd description would make the sender retry a legitimate
    delivery forever; Intake cuts and cleans titles again anyway.
    """
    text = "".join(
        " " if unicodedata.category(ch) in _CONTROL and ch not in "\n\t" else ch
        for ch in value[: validate.MAX_DESCRIPTION]
    )
    return text


def _short_text(value: str, field: str, *, limit: int = MAX_SHORT_TEXT) -> str:
    """A machine-read string (a status context, a state name): refused when odd."""
    if len(value) > limit:
        raise WebhookRejected(400, f"{field}: must be at most {limit} characters")
    return _validated(validate.description, value, field)


def _validated(check: Callable[[object, str], str], value: str, field: str) -> str:
    try:
        return check(value, field)
    except InvalidField as err:
        raise WebhookRejected(400, str(err)) from err
