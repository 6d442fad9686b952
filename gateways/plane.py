"""Plane as the tracker: a blocking REST client and the `Tracker` over it.

`PlaneClient` speaks Plane's public API (`/api/v1`, `X-API-Key`) through
`gateways.http`. Reads and PATCHes of a state are idempotent, so they are
retried on timeouts, connection errors, 5xx and 429. A comment POST is not:
`PlaneTracker.comment` embeds an invisible marker `<!-- conveyor:<key> -->` and
looks for it before the first send and before any resend, so a replay after a
crash (or after a POST whose answer was lost) never posts twice.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from bus.messages import PolledItem
from conveyor import retry
from conveyor.config import PlaneConfig
from conveyor.errors import RemoteError, TrackerError
from conveyor.logs import get_logger
from gateways.http import (
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    RETRY_AFTER_MAX_S,
    Http,
    HttpOptions,
)

log = get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

SERVICE = "plane"

Refs = Callable[[str], tuple[str, str] | None]
PlanePoll = Callable[[float | None, Collection[tuple[str, str]]], list[PolledItem]]
"""Work items updated after a UNIX time (None: all), plus (project, item) pairs by id."""
"""Maps a Conveyor work item id to (Plane project id, Plane work item id), or None."""


class PlaneState(msgspec.Struct, frozen=True, kw_only=True):
    """A board state of one project."""

    id: str
    name: str
    group: str = ""
    color: str = ""


class PlaneWorkItem(msgspec.Struct, frozen=True, kw_only=True):
    """A work item as `/work-items/` returns it (`state` is the state's id)."""

    id: str
    name: str
    sequence_id: int = 0
    state: str | None = None
    project: str = ""
    description_html: str = ""
    updated_at: str = ""


class PlaneComment(msgspec.Struct, frozen=True, kw_only=True):
    """One comment on a work item."""

    id: str
    comment_html: str = ""
    external_id: str | None = None
    external_source: str | None = None
    created_at: str = ""


class Page(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """Plane's cursor-paginated envelope; only what paging needs is decoded."""

    results: list[T]
    next_cursor: str = ""
    next_page_results: bool = False


def rate_limit_wait_s(headers: httpx.Headers, attempt: int, now: float) -> float:
    """How long a 429 asks us to wait: `Retry-After`, else `X-RateLimit-Reset`, else back-off.

    `X-RateLimit-Reset` is read as an epoch timestamp when it looks like one, and as
    seconds otherwise; either way the wait is capped.
    """
    hint = _reset_hint(headers, now)
    if hint is None:
        return retry.backoff_s(BACKOFF_BASE_S, BACKOFF_MAX_S, attempt)
    return min(hint, RETRY_AFTER_MAX_S)


def _reset_hint(headers: httpx.Headers, now: float) -> float | None:
    after = retry.retry_after_s(headers.get("Retry-After"), now)
    if after is not None:
        return after
    try:
        value = float(headers.get("X-RateLimit-Reset", ""))
    except ValueError:
        return None
    return max(0.0, value - now if value > 1e9 else value)


class PlaneClient:
    """Blocking client of one Plane workspace."""

    def __init__(
        self,
        cfg: PlaneConfig,
        *,
        http: HttpOptions | None = None,
    ) -> None:
        self._cfg = cfg
        self._http = Http(
            SERVICE,
            f"{cfg.url.rstrip('/')}/api/v1",
            headers={"X-API-Key": cfg.api_key, "Accept": "application/json"},
            timeout_s=cfg.timeout_s,
            retries=cfg.retries,
            describe=_reason,
            wait_hint=lambda response, now: _reset_hint(response.headers, now),
            options=http,
        )
        self._states: dict[str, list[PlaneState]] = {}

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _project(self, project_id: str) -> str:
        workspace = quote(self._cfg.workspace, safe="")
        return f"/workspaces/{workspace}/projects/{quote(project_id, safe='')}"

    def _item(self, project_id: str, item_id: str) -> str:
        return f"{self._project(project_id)}/work-items/{quote(item_id, safe='')}/"

    # --- states ---------------------------------------------------------------------------

    def states(self, project_id: str) -> list[PlaneState]:
        """Every state of the project (all pages), and refresh the cache with them."""
        found = [
            s
            for s in self._pages(f"{self._project(project_id)}/states/", PlaneState, "list states")
        ]
        self._states[project_id] = found
        return found

    def _find(self, project_id: str, match: Callable[[PlaneState], bool]) -> PlaneState | None:
        cached = self._states.get(project_id)
        if cached is not None:
            found = next((s for s in cached if match(s)), None)
            if found is not None:
                return found
        # Unknown to the cache: the board may have changed since, so read it once more.
        return next((s for s in self.states(project_id) if match(s)), None)

    def state_by_name(self, project_id: str, name: str) -> PlaneState:
        """The state called `name`; the cache is reloaded once if the name is unknown."""
        found = self._find(project_id, lambda s: s.name == name)
        if found is None:
            raise TrackerError(f"plane project {project_id} has no state named {name!r}")
        return found

    def state_name(self, project_id: str, state_id: str) -> str:
        """The name of state `state_id`; the cache is reloaded once if the id is unknown."""
        found = self._find(project_id, lambda s: s.id == state_id)
        if found is None:
            raise TrackerError(f"plane project {project_id} has no state with id {state_id!r}")
        return found.name

    # --- work items -----------------------------------------------------------------------

    def work_items(
        self, project_id: str, *, updated_after: datetime | None = None
    ) -> Iterator[PlaneWorkItem]:
        """Every work item of the project, page by page (or only those updated after).

        With `updated_after` the list is asked newest first (`order_by=-updated_at`)
        and the read ends with the first page that reaches back to that moment, so a
        poll costs what moved, not the whole project. A page out of that order (a
        server that ignored it) makes the read go through every page instead.
        """
        path = f"{self._project(project_id)}/work-items/"
        if updated_after is None:
            yield from self._pages(path, PlaneWorkItem, "list work items")
            return
        ordered, previous = True, None
        extra = {"order_by": "-updated_at"}
        for page in self._page_lists(path, PlaneWorkItem, "list work items", extra):
            reached = False
            for item in page:
                stamp = _parse(item.updated_at)
                if stamp is not None and previous is not None and stamp > previous:
                    ordered = False
                previous = stamp if stamp is not None else previous
                if stamp is None or stamp > updated_after:
                    yield item
                else:
                    reached = True
            if reached and ordered:
                return

    def work_item(self, project_id: str, item_id: str) -> PlaneWorkItem:
        """One work item."""
        data = self._send("GET", self._item(project_id, item_id), "get work item", True)
        return _decode(data, PlaneWorkItem, "get work item")

    def set_state(self, project_id: str, item_id: str, state_id: str) -> PlaneWorkItem:
        """PATCH the work item's state (idempotent, so retried like a read)."""
        data = self._send(
            "PATCH",
            self._item(project_id, item_id),
            "set state",
            True,
            json={"state": state_id},
        )
        return _decode(data, PlaneWorkItem, "set state")

    def comment(
        self,
        project_id: str,
        item_id: str,
        comment_html: str,
        *,
        external_id: str = "",
        landed: Callable[[], PlaneComment | None] | None = None,
    ) -> PlaneComment:
        """POST one comment; resent after an ambiguous failure only when `landed` finds none.

        Without `landed` it is sent once and the caller decides whether a failure
        may be sent again.
        """
        op = "comment"
        body: dict[str, str] = {"comment_html": comment_html}
        if external_id:
            body.update(external_source="conveyor", external_id=external_id)
        path = f"{self._item(project_id, item_id)}comments/"
        if landed is None:
            return _decode(self._send("POST", path, op, False, json=body), PlaneComment, op)
        outcome = self._http.write("POST", path, op, landed, json=body)
        if isinstance(outcome, PlaneComment):
            return outcome
        return _decode(_checked(outcome, op), PlaneComment, op)

    def comments(self, project_id: str, item_id: str) -> list[PlaneComment]:
        """Every comment on the work item, oldest first as Plane lists them."""
        path = f"{self._item(project_id, item_id)}comments/"
        return [c for c in self._pages(path, PlaneComment, "list comments")]

    # --- transport ------------------------------------------------------------------------

    def _pages(self, path: str, item_type: type[T], op: str) -> Iterator[T]:
        for page in self._page_lists(path, item_type, op, {}):
            yield from page

    def _page_lists(
        self, path: str, item_type: type[T], op: str, extra: dict[str, str]
    ) -> Iterator[list[T]]:
        per_page = self._cfg.per_page
        cursor = f"{per_page}:0:0"
        seen = {cursor}
        while True:
            data = self._send(
                "GET", path, op, True, params={**extra, "per_page": per_page, "cursor": cursor}
            )
            page = _decode(data, Page[item_type], op)  # type: ignore[valid-type]
            yield page.results
            if not page.next_page_results:
                return
            # A server that hands back a cursor it already gave would loop forever.
            if not page.next_cursor or page.next_cursor in seen:
                raise RemoteError(
                    SERVICE, op, f"cursor {page.next_cursor!r} does not advance", retryable=False
                )
            seen.add(page.next_cursor)
            cursor = page.next_cursor

    def _send(
        self,
        method: str,
        path: str,
        op: str,
        idempotent: bool,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> bytes:
        response = self._http.request(
            method, path, op, params=params, json=json, idempotent=idempotent
        )
        return _checked(response, op)


def _checked(response: httpx.Response, op: str) -> bytes:
    """The body of a successful answer; a refusal is a `RemoteError` that resending cannot fix."""
    if response.status_code >= 400:
        raise RemoteError(
            SERVICE, op, _reason(response), status=response.status_code, retryable=False
        )
    return response.content


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if isinstance(body.get(key), str):
                return f"HTTP {response.status_code}: {body[key][:200]}"
    return f"HTTP {response.status_code}: {str(body)[:200]}"


def _decode(data: bytes, kind: type[R], op: str) -> R:
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise RemoteError(SERVICE, op, f"unexpected answer: {err}", retryable=False) from err


def _parse(stamp: str) -> datetime | None:
    """Plane's `updated_at` (None when unreadable: such an item is never left out)."""
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


# --- comments as HTML ---------------------------------------------------------------------

_MARKER = re.compile(r"<!-- conveyor:(\S+) -->")
_TAG = re.compile(r"<[^>]*>")


def marker(key: str) -> str:
    """The invisible HTML comment that ties a comment to its idempotency key."""
    # Quoting keeps `>` and spaces out, so the key can never close the HTML comment early.
    return f"<!-- conveyor:{quote(key, safe=':@/+')} -->"


def comment_html(text: str, key: str) -> str:
    """A comment body: the text HTML-escaped in a paragraph, then the key's marker."""
    return f"<p>{html.escape(text)}</p>{marker(key)}"


def comment_text(body: str) -> str:
    """The plain text of a comment body (marker and tags removed)."""
    return html.unescape(_TAG.sub("", _MARKER.sub("", body))).strip()


def _has_key(comment: PlaneComment, key: str) -> bool:
    return marker(key) in comment.comment_html or (
        comment.external_source == "conveyor" and comment.external_id == key
    )


# --- the sync Tracker ---------------------------------------------------------------------


class PlaneTracker:
    """`Tracker` on Plane, called from actor and job threads.

    `state` values are Plane state names (as in `PlaneStates`). `refs` maps a
    Conveyor work item id to its Plane (project id, work item id).
    """

    def __init__(
        self,
        cfg: PlaneConfig,
        refs: Refs,
        *,
        http: HttpOptions | None = None,
    ) -> None:
        self._cfg = cfg
        self._refs = refs
        self.client = PlaneClient(cfg, http=http)

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def _ref(self, work_item_id: str) -> tuple[str, str]:
        ref = self._refs(work_item_id)
        if ref is None:
            raise TrackerError(f"{work_item_id}: not linked to a Plane work item")
        return ref

    def comment(self, work_item_id: str, text: str, *, key: str) -> None:
        project_id, item_id = self._ref(work_item_id)
        posted = self._comment_once(project_id, item_id, text, key)
        if posted:
            log.info("plane.commented", work_item_id=work_item_id, key=key)

    def _comment_once(self, project_id: str, item_id: str, text: str, key: str) -> bool:
        def landed() -> PlaneComment | None:
            # A POST whose answer was lost may have landed, and then its marker is there.
            found = self.client.comments(project_id, item_id)
            return next((c for c in found if _has_key(c, key)), None)

        if landed() is not None:
            return False
        try:
            self.client.comment(
                project_id, item_id, comment_html(text, key), external_id=key, landed=landed
            )
        except RemoteError as err:
            if err.status == 409:
                return False  # Plane already holds a comment with this external id
            raise
        return True

    def set_state(self, work_item_id: str, state: str, *, key: str) -> None:
        project_id, item_id = self._ref(work_item_id)
        changed = self._set_state(project_id, item_id, state)
        if changed:
            log.info("plane.state_set", work_item_id=work_item_id, state=state, key=key)

    def _set_state(self, project_id: str, item_id: str, state: str) -> bool:
        target = self.client.state_by_name(project_id, state)
        item = self.client.work_item(project_id, item_id)
        if item.state == target.id:
            return False
        self.client.set_state(project_id, item_id, target.id)
        return True

    def comments(self, work_item_id: str) -> list[str]:
        project_id, item_id = self._ref(work_item_id)
        found = self.client.comments(project_id, item_id)
        return [comment_text(c.comment_html) for c in found]

    def state(self, work_item_id: str) -> str | None:
        project_id, item_id = self._ref(work_item_id)
        return self._state(project_id, item_id)

    def _state(self, project_id: str, item_id: str) -> str | None:
        item = self.client.work_item(project_id, item_id)
        if not item.state:
            return None
        return self.client.state_name(project_id, item.state)

    def resolve_state(self, project_id: str, state_id: str) -> str | None:
        """The name of a project's state (Intake, for payloads that name only the id)."""
        return self.client.state_name(project_id, state_id)

    def poll_states(
        self, project_id: str, *, updated_after: float | None = None
    ) -> list[PolledItem]:
        """The project's work items (all, or updated after a UNIX time) with state names."""
        after = None if updated_after is None else datetime.fromtimestamp(updated_after, UTC)
        return [
            self._polled(project_id, item)
            for item in self.client.work_items(project_id, updated_after=after)
        ]

    def poller(self, project_ids: list[str]) -> PlanePoll:
        """A Reconciler `Poll` over several projects.

        `since` (None: everything) bounds each project's list; `also` are
        (project, work item) pairs read one by one when the list left them out.
        """

        def _poll(since: float | None, also: Collection[tuple[str, str]]) -> list[PolledItem]:
            found = [
                item for pid in project_ids for item in self.poll_states(pid, updated_after=since)
            ]
            seen = {item.id for item in found}
            for pid, item_id in also:
                if item_id not in seen and pid in project_ids:
                    found.append(self._polled(pid, self.client.work_item(pid, item_id)))
            return found

        return _poll

    def _polled(self, project_id: str, item: PlaneWorkItem) -> PolledItem:
        name = ""
        if item.state:
            try:
                name = self.client.state_name(project_id, item.state)
            except TrackerError:
                log.warning("plane.unknown_state", project_id=project_id, state_id=item.state)
        return PolledItem(
            project_id=project_id,
            id=item.id,
            sequence_id=item.sequence_id,
            name=item.name,
            description=comment_text(item.description_html),
            state_id=item.state or "",
            state_name=name,
            updated_at=item.updated_at,
        )
