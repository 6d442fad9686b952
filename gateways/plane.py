"""Plane as the tracker: an async REST client and the sync `Tracker` over it.

`PlaneClient` speaks Plane's public API (`/api/v1`, `X-API-Key`). Reads and
PATCHes of a state are idempotent, so they are retried on timeouts, connection
errors, 5xx and 429. A comment POST is not: `PlaneTracker.comment` embeds an
invisible marker `<!-- conveyor:<key> -->` and looks for it before every
attempt, so a replay after a crash (or after a POST whose answer was lost)
never posts twice.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from actors.reconciler_policy import PolledItem
from bus.bridge import LoopThread
from conveyor.clock import Clock, SystemClock
from conveyor.config import PlaneConfig
from conveyor.errors import RemoteError, TrackerError
from conveyor.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

SERVICE = "plane"
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
RATE_LIMIT_MAX_WAIT_S = 60.0
"""Longest wait for a rate-limit window; a longer reset is treated as this."""

Sleep = Callable[[float], Awaitable[None]]
Refs = Callable[[str], tuple[str, str] | None]
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


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0-based)."""
    return float(min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S))


def rate_limit_wait_s(headers: httpx.Headers, attempt: int, now: float) -> float:
    """How long a 429 asks us to wait: `Retry-After`, else `X-RateLimit-Reset`, else back-off.

    `X-RateLimit-Reset` is read as an epoch timestamp when it looks like one, and as
    seconds otherwise; either way the wait is capped.
    """
    for name in ("Retry-After", "X-RateLimit-Reset"):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if value > 1e9:
            value -= now
        return max(0.0, min(value, RATE_LIMIT_MAX_WAIT_S))
    return backoff_s(attempt)


class PlaneClient:
    """Async client of one Plane workspace; one instance per event loop."""

    def __init__(
        self,
        cfg: PlaneConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._cfg = cfg
        self._sleep = sleep
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._http = httpx.AsyncClient(
            base_url=f"{cfg.url.rstrip('/')}/api/v1",
            headers={"X-API-Key": cfg.api_key, "Accept": "application/json"},
            timeout=cfg.timeout_s,
            transport=transport,
        )
        self._states: dict[str, list[PlaneState]] = {}

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def _project(self, project_id: str) -> str:
        workspace = quote(self._cfg.workspace, safe="")
        return f"/workspaces/{workspace}/projects/{quote(project_id, safe='')}"

    def _item(self, project_id: str, item_id: str) -> str:
        return f"{self._project(project_id)}/work-items/{quote(item_id, safe='')}/"

    # --- states ---------------------------------------------------------------------------

    async def states(self, project_id: str) -> list[PlaneState]:
        """Every state of the project (all pages), and refresh the cache with them."""
        found = [
            s
            async for s in self._pages(
                f"{self._project(project_id)}/states/", PlaneState, "list states"
            )
        ]
        self._states[project_id] = found
        return found

    async def _find(
        self, project_id: str, match: Callable[[PlaneState], bool]
    ) -> PlaneState | None:
        cached = self._states.get(project_id)
        if cached is not None:
            found = next((s for s in cached if match(s)), None)
            if found is not None:
                return found
        # Unknown to the cache: the board may have changed since, so read it once more.
        return next((s for s in await self.states(project_id) if match(s)), None)

    async def state_by_name(self, project_id: str, name: str) -> PlaneState:
        """The state called `name`; the cache is reloaded once if the name is unknown."""
        found = await self._find(project_id, lambda s: s.name == name)
        if found is None:
            raise TrackerError(f"plane project {project_id} has no state named {name!r}")
        return found

    async def state_name(self, project_id: str, state_id: str) -> str:
        """The name of state `state_id`; the cache is reloaded once if the id is unknown."""
        found = await self._find(project_id, lambda s: s.id == state_id)
        if found is None:
            raise TrackerError(f"plane project {project_id} has no state with id {state_id!r}")
        return found.name

    # --- work items -----------------------------------------------------------------------

    async def work_items(
        self, project_id: str, *, updated_after: datetime | None = None
    ) -> AsyncIterator[PlaneWorkItem]:
        """Every work item of the project, page by page (optionally only recently updated)."""
        path = f"{self._project(project_id)}/work-items/"
        async for item in self._pages(path, PlaneWorkItem, "list work items"):
            if updated_after is not None and not _after(item.updated_at, updated_after):
                continue
            yield item

    async def work_item(self, project_id: str, item_id: str) -> PlaneWorkItem:
        """One work item."""
        data = await self._send("GET", self._item(project_id, item_id), "get work item", True)
        return _decode(data, PlaneWorkItem, "get work item")

    async def set_state(self, project_id: str, item_id: str, state_id: str) -> PlaneWorkItem:
        """PATCH the work item's state (idempotent, so retried like a read)."""
        data = await self._send(
            "PATCH",
            self._item(project_id, item_id),
            "set state",
            True,
            json={"state": state_id},
        )
        return _decode(data, PlaneWorkItem, "set state")

    async def comment(
        self, project_id: str, item_id: str, comment_html: str, *, external_id: str = ""
    ) -> PlaneComment:
        """POST one comment, once: the caller decides whether a failed POST may be resent."""
        body: dict[str, str] = {"comment_html": comment_html}
        if external_id:
            body.update(external_source="conveyor", external_id=external_id)
        data = await self._send(
            "POST", f"{self._item(project_id, item_id)}comments/", "comment", False, json=body
        )
        return _decode(data, PlaneComment, "comment")

    async def comments(self, project_id: str, item_id: str) -> list[PlaneComment]:
        """Every comment on the work item, oldest first as Plane lists them."""
        path = f"{self._item(project_id, item_id)}comments/"
        return [c async for c in self._pages(path, PlaneComment, "list comments")]

    # --- transport ------------------------------------------------------------------------

    async def _pages(self, path: str, item_type: type[T], op: str) -> AsyncIterator[T]:
        per_page = self._cfg.per_page
        cursor = f"{per_page}:0:0"
        seen = {cursor}
        while True:
            data = await self._send(
                "GET", path, op, True, params={"per_page": per_page, "cursor": cursor}
            )
            page = _decode(data, Page[item_type], op)  # type: ignore[valid-type]
            for item in page.results:
                yield item
            if not page.next_page_results:
                return
            # A server that hands back a cursor it already gave would loop forever.
            if not page.next_cursor or page.next_cursor in seen:
                raise RemoteError(
                    SERVICE, op, f"cursor {page.next_cursor!r} does not advance", retryable=False
                )
            seen.add(page.next_cursor)
            cursor = page.next_cursor

    async def _send(
        self,
        method: str,
        path: str,
        op: str,
        idempotent: bool,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> bytes:
        attempts = 1 + (self._cfg.retries if idempotent else 0)
        for attempt in range(attempts):
            try:
                return await self._once(method, path, op, params=params, json=json)
            except _RetryAfter as wait:
                last = wait.error
                delay = wait.delay_s if wait.delay_s is not None else backoff_s(attempt)
            if attempt + 1 < attempts:
                log.info(
                    "plane.retrying", op=op, attempt=attempt + 1, delay_s=delay, reason=last.reason
                )
                await self._sleep(delay)
        raise last

    async def _once(
        self, method: str, path: str, op: str, *, params: dict[str, Any] | None, json: Any
    ) -> bytes:
        try:
            response = await self._http.request(method, path, params=params, json=json)
        except httpx.TimeoutException as err:
            raise _RetryAfter(
                RemoteError(SERVICE, op, f"timed out ({type(err).__name__})", retryable=True)
            ) from err
        except httpx.TransportError as err:
            raise _RetryAfter(
                RemoteError(SERVICE, op, f"no answer ({type(err).__name__})", retryable=True)
            ) from err
        status = response.status_code
        if status == 429:
            error = RemoteError(SERVICE, op, "rate limited", status=status, retryable=True)
            raise _RetryAfter(error, rate_limit_wait_s(response.headers, 0, self._clock.now()))
        if status >= 500:
            raise _RetryAfter(
                RemoteError(SERVICE, op, f"server error {status}", status=status, retryable=True)
            )
        if status >= 400:
            raise RemoteError(SERVICE, op, _reason(response), status=status, retryable=False)
        return response.content


class _RetryAfter(Exception):
    """Internal: a failure the same request may be sent again after."""

    def __init__(self, error: RemoteError, delay_s: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay_s = delay_s


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


def _after(stamp: str, moment: datetime) -> bool:
    try:
        return datetime.fromisoformat(stamp) > moment
    except ValueError:
        return True  # an unreadable stamp must not hide an item from a poll


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
    """`Tracker` on Plane: sync calls run on an asyncio loop thread.

    `state` values are Plane state names (as in `PlaneStates`). `refs` maps a
    Conveyor work item id to its Plane (project id, work item id).
    """

    def __init__(
        self,
        cfg: PlaneConfig,
        refs: Refs,
        loop: LoopThread | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._cfg = cfg
        self._refs = refs
        self._own_loop = loop is None
        self._loop = loop if loop is not None else LoopThread(name="plane-loop")
        self._sleep = sleep
        self.client = PlaneClient(cfg, sleep=sleep, clock=clock, transport=transport)
        # Every retry may wait out a timeout and a back-off; the bound only catches a stuck loop.
        self._call_timeout_s = (cfg.timeout_s + RATE_LIMIT_MAX_WAIT_S) * (cfg.retries + 2) * 3

    def close(self) -> None:
        """Close the HTTP client, and the loop thread if this tracker made it."""
        try:
            self._loop.call(self.client.aclose(), timeout_s=10.0)
        finally:
            if self._own_loop:
                self._loop.stop()

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self._loop.call(coro, timeout_s=self._call_timeout_s)

    def _ref(self, work_item_id: str) -> tuple[str, str]:
        ref = self._refs(work_item_id)
        if ref is None:
            raise TrackerError(f"{work_item_id}: not linked to a Plane work item")
        return ref

    def comment(self, work_item_id: str, text: str, *, key: str) -> None:
        project_id, item_id = self._ref(work_item_id)
        posted = self._run(self._comment_once(project_id, item_id, text, key))
        if posted:
            log.info("plane.commented", work_item_id=work_item_id, key=key)

    async def _comment_once(self, project_id: str, item_id: str, text: str, key: str) -> bool:
        body = comment_html(text, key)
        attempts = 1 + self._cfg.retries
        for attempt in range(attempts):
            # Looking first is what makes a resend safe: a POST whose answer was lost
            # may have landed, and then its marker is there.
            existing = await self.client.comments(project_id, item_id)
            if any(_has_key(c, key) for c in existing):
                return False
            try:
                await self.client.comment(project_id, item_id, body, external_id=key)
            except RemoteError as err:
                if err.status == 409:
                    return False  # Plane already holds a comment with this external id
                if not err.retryable or attempt + 1 == attempts:
                    raise
                log.info("plane.comment_retrying", attempt=attempt + 1, reason=err.reason)
                await self._sleep(backoff_s(attempt))
                continue
            return True
        return False

    def set_state(self, work_item_id: str, state: str, *, key: str) -> None:
        project_id, item_id = self._ref(work_item_id)
        changed = self._run(self._set_state(project_id, item_id, state))
        if changed:
            log.info("plane.state_set", work_item_id=work_item_id, state=state, key=key)

    async def _set_state(self, project_id: str, item_id: str, state: str) -> bool:
        target = await self.client.state_by_name(project_id, state)
        item = await self.client.work_item(project_id, item_id)
        if item.state == target.id:
            return False
        await self.client.set_state(project_id, item_id, target.id)
        return True

    def comments(self, work_item_id: str) -> list[str]:
        project_id, item_id = self._ref(work_item_id)
        found = self._run(self.client.comments(project_id, item_id))
        return [comment_text(c.comment_html) for c in found]

    def state(self, work_item_id: str) -> str | None:
        project_id, item_id = self._ref(work_item_id)
        return self._run(self._state(project_id, item_id))

    async def _state(self, project_id: str, item_id: str) -> str | None:
        item = await self.client.work_item(project_id, item_id)
        if not item.state:
            return None
        return await self.client.state_name(project_id, item.state)

    def resolve_state(self, project_id: str, state_id: str) -> str | None:
        """The name of a project's state (Intake, for payloads that name only the id)."""
        return self._run(self.client.state_name(project_id, state_id))

    def poll_states(self, project_id: str) -> list[PolledItem]:
        """Every work item of the project with its state name, for the Reconciler."""
        return self._run(self._poll(project_id))

    def poller(self, project_ids: list[str]) -> Callable[[], list[PolledItem]]:
        """A Reconciler `Poll` over several projects."""

        def _poll() -> list[PolledItem]:
            return [item for pid in project_ids for item in self.poll_states(pid)]

        return _poll

    async def _poll(self, project_id: str) -> list[PolledItem]:
        out: list[PolledItem] = []
        async for item in self.client.work_items(project_id):
            name = ""
            if item.state:
                try:
                    name = await self.client.state_name(project_id, item.state)
                except TrackerError:
                    log.warning("plane.unknown_state", project_id=project_id, state_id=item.state)
            out.append(
                PolledItem(
                    project_id=project_id,
                    id=item.id,
                    sequence_id=item.sequence_id,
                    name=item.name,
                    description=comment_text(item.description_html),
                    state_id=item.state or "",
                    state_name=name,
                    updated_at=item.updated_at,
                )
            )
        return out
