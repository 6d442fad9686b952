"""A fake Plane: the public REST API Conveyor calls, and the webhooks Plane sends.

Shapes come from the recorded fixtures in tests/fixtures/integrations (copied
byte-exact from the integration reference; its README, sections 2 and 4). A
human's board move (`move`) and an API PATCH both change the state and send a
signed `issue` `updated` webhook, with `activity.field` `state_id` (web UI) or
`state` (API), as Plane does.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import math
import random
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from conveyor.clock import SystemClock

T = TypeVar("T")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "integrations"


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_bytes())


STATES_PAGE = _fixture("plane-states-list.json")
ISSUES_PAGE = _fixture("plane-issues-page.json")
ISSUE_UPDATED = _fixture("plane-issue-updated.json")
ISSUE_CREATED = _fixture("plane-issue-created.json")
WEBHOOK_HEADERS = _fixture("plane-issue-updated.headers.json")

FIXTURE_PROJECT = STATES_PAGE["results"][0]["project"]
WORKSPACE_ID = STATES_PAGE["results"][0]["workspace"]
HUMAN = ISSUE_UPDATED["activity"]["actor"]
BOT = {
    **HUMAN,
    "id": "0b0e3f9a-6c1d-4a7e-9f2b-5d8c7e6a4b3c",
    "first_name": "Conveyor",
    "last_name": "",
    "email": "conveyor@example.test",
    "display_name": "conveyor",
}

CONVEYOR_STATES = (
    ("Approved", "started"),
    ("Rejected", "started"),
    ("Confirm Deploy", "started"),
    ("Blocked", "started"),
    ("Needs Input", "started"),
)
"""Board states a Conveyor project adds to Plane's defaults (see docs/plane.md)."""


class ServerThread:
    """An aiohttp app on 127.0.0.1 (random port) served from its own loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=type(self).__name__, daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        ready.set()
        self.loop.run_forever()

    async def _serve(self) -> None:
        # A short shutdown timeout: a hung handler must not hold stop() for a minute.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        await self.on_started()

    async def on_started(self) -> None:
        """Hook for background tasks that need the running loop."""

    async def on_stopping(self) -> None:
        """Hook to end background tasks."""

    def call(self, fn: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Run `fn` on the server's loop (every mutation of fake state happens there)."""

        async def _wrap() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(_wrap(), self.loop).result(timeout_s)

    def stop(self) -> None:
        if self._thread is None:
            return

        async def _shutdown() -> None:
            await self.on_stopping()
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(_shutdown(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self: Any) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Fault:
    """One injected misbehaviour for the next `count` matching requests."""

    def __init__(
        self,
        kind: str,
        method: str,
        path_prefix: str,
        count: int,
        *,
        status: int = 500,
        after_store: bool = False,
        seconds: float = 3600.0,
        body: bytes = b"",
    ) -> None:
        self.kind = kind
        self.method = method.upper()
        self.path_prefix = path_prefix
        self.count = count
        self.status = status
        self.after_store = after_store
        self.seconds = seconds
        self.body = body

    def matches(self, request: web.Request) -> bool:
        # A prefix that is not absolute matches anywhere in the path: "/comments/".
        path = request.path
        hit = path.startswith(self.path_prefix) or (
            not self.path_prefix.startswith("/api/") and self.path_prefix in path
        )
        return self.count > 0 and self.method in (request.method, "*") and hit


def _page(request: web.Request, rows: list[dict[str, Any]]) -> web.Response:
    """Plane's OffsetPaginator: `per_page`, `cursor` = "<per_page>:<page>:<is_prev>"."""
    try:
        per_page = int(request.query.get("per_page", "100"))
        cursor = request.query.get("cursor", f"{per_page}:0:0")
        value_s, page_s, prev_s = cursor.split(":")
        value, page, is_prev = int(value_s), int(page_s), int(prev_s)
        if not 0 < per_page <= 1000 or value <= 0 or page < 0 or is_prev not in (0, 1):
            raise ValueError(cursor)
    except ValueError:
        return web.json_response({"error": "Invalid cursor parameter."}, status=400)
    start = page * value
    results = rows[start : start + per_page]
    total = len(rows)
    body = {
        "grouped_by": None,
        "sub_grouped_by": None,
        "total_count": total,
        "next_cursor": f"{per_page}:{page + 1}:0",
        "prev_cursor": f"{per_page}:{page - 1}:1",
        "next_page_results": start + per_page < total,
        "prev_page_results": page > 0,
        "count": len(results),
        "total_pages": max(1, math.ceil(total / per_page)),
        "total_results": total,
        "extra_stats": None,
        "results": results,
    }
    return web.json_response(body, dumps=json.dumps)


def _now_iso() -> str:
    return datetime.fromtimestamp(SystemClock().now(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakePlane(ServerThread):
    """Plane's REST API for one workspace, its webhooks, and fault injection."""

    def __init__(
        self,
        api_key: str,
        workspace: str,
        webhook_url: str = "",
        webhook_secret: str = "",
        drop_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.workspace = workspace
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.drop_rate = drop_rate
        self._rng = random.Random(seed)
        self.states: dict[str, list[dict[str, Any]]] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.item_order: dict[str, list[str]] = {}
        self.comments: dict[str, list[dict[str, Any]]] = {}
        self.effects: list[dict[str, Any]] = []
        """What API callers changed: `state_set` (every PATCH with a state) and `comment`."""
        self.deliveries: list[dict[str, Any]] = []
        """Every webhook attempt: delivery id, event, action, field, dropped, status."""
        self.requests: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.rate_limit: int | None = None
        """Requests allowed per `rate_window_s`; None: unlimited."""
        self.rate_window_s = 60.0
        self.stuck_cursor = False
        self.ignore_order = False
        """Work-item lists ignore `order_by` (an older server): creation order."""
        """Work-item lists hand back the cursor they were given (a broken server)."""
        self._window_start = 0.0
        self._window_count = 0
        self._clock = SystemClock()
        self._outbox: asyncio.Queue[dict[str, Any]] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.add_project(FIXTURE_PROJECT)

    # --- set-up and human actions (any thread) ---------------------------------------------

    def add_project(self, project_id: str, *, extra_states: bool = True) -> list[dict[str, Any]]:
        """A project with the fixture's states (and Conveyor's board states)."""

        def _add() -> list[dict[str, Any]]:
            states = []
            for template in STATES_PAGE["results"]:
                state = copy.deepcopy(template)
                state["project"] = project_id
                state["workspace"] = WORKSPACE_ID
                if project_id != FIXTURE_PROJECT:
                    state["id"] = str(
                        uuid.uuid5(uuid.NAMESPACE_URL, f"{project_id}/{state['name']}")
                    )
                states.append(state)
            self.states[project_id] = states
            self.item_order.setdefault(project_id, [])
            if extra_states:
                for name, group in CONVEYOR_STATES:
                    self._add_state(project_id, name, group)
            return copy.deepcopy(states)

        return self.call(_add) if self.port else _add()

    def add_state(self, project_id: str, name: str, group: str = "started") -> dict[str, Any]:
        """A new board state (what an admin adds in project settings)."""
        return self.call(lambda: copy.deepcopy(self._add_state(project_id, name, group)))

    def _add_state(self, project_id: str, name: str, group: str) -> dict[str, Any]:
        states = self.states[project_id]
        base = copy.deepcopy(STATES_PAGE["results"][0])
        base.update(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{project_id}/{name}")),
            name=name,
            slug=name.lower().replace(" ", "-"),
            group=group,
            sequence=float(15000 + 10000 * len(states)),
            project=project_id,
            workspace=WORKSPACE_ID,
        )
        states.append(base)
        return base

    def state_id(self, project_id: str, name: str) -> str:
        return next(s["id"] for s in self.states[project_id] if s["name"] == name)

    def create_item(
        self,
        project_id: str,
        name: str,
        description: str = "",
        state_name: str = "Backlog",
    ) -> dict[str, Any]:
        """A new work item (as a human creates it); sends `issue` `created`."""

        def _create() -> dict[str, Any]:
            item = copy.deepcopy(ISSUES_PAGE["results"][1])
            now = _now_iso()
            order = self.item_order[project_id]
            item.update(
                id=str(uuid.uuid4()),
                name=name,
                description_html=f"<p>{description}</p>" if description else "<p></p>",
                sequence_id=len(order) + 1,
                state=self.state_id(project_id, state_name),
                project=project_id,
                workspace=WORKSPACE_ID,
                created_at=now,
                updated_at=now,
            )
            self.items[item["id"]] = item
            order.append(item["id"])
            self.comments[item["id"]] = []
            self._webhook("created", item, None)
            return copy.deepcopy(item)

        return self.call(_create)

    def move(self, item_id: str, state_name: str) -> None:
        """A human drags the work item to `state_name` on the board (web UI)."""

        def _move() -> None:
            item = self.items[item_id]
            self._change_state(item, self.state_id(item["project"], state_name), "state_id", HUMAN)

        self.call(_move)

    def edit(self, item_id: str, field: str, value: Any) -> None:
        """A human edits another field (the priority, the description): Plane sends `updated`
        with that field in `activity` and the card's current, unchanged state in `data`."""

        def _edit() -> None:
            item = self.items[item_id]
            old = item.get(field)
            item[field] = value
            item["updated_at"] = _now_iso()
            change = {"field": field, "new_value": value, "old_value": old, "actor": HUMAN}
            self._webhook("updated", item, change)

        self.call(_edit)

    def item(self, item_id: str) -> dict[str, Any]:
        return self.call(lambda: copy.deepcopy(self.items[item_id]))

    def state_of(self, item_id: str) -> str:
        def _name() -> str:
            item = self.items[item_id]
            return next(s["name"] for s in self.states[item["project"]] if s["id"] == item["state"])

        return self.call(_name)

    # --- fault injection (any thread) ------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_prefix: str,
        status: int = 500,
        count: int = 1,
        *,
        after_store: bool = False,
    ) -> None:
        """Answer `status` to the next `count` matching requests.

        With `after_store` the request is carried out first and only its answer is
        lost: the caller sees a failure for something that happened.
        """
        fault = Fault("fail", method, path_prefix, count, status=status, after_store=after_store)
        self.call(lambda: self.faults.append(fault))

    def hang_next(self, method: str, path_prefix: str, count: int = 1, seconds: float = 3600.0):
        """Never answer (until `seconds` or stop) the next `count` matching requests."""
        fault = Fault("hang", method, path_prefix, count, seconds=seconds)
        self.call(lambda: self.faults.append(fault))

    def junk_next(
        self, method: str, path_prefix: str, count: int = 1, body: bytes = b"<html>oops</html>"
    ) -> None:
        """Answer 200 with `body` (not the JSON the API promises)."""
        fault = Fault("junk", method, path_prefix, count, status=200, body=body)
        self.call(lambda: self.faults.append(fault))

    def reset_rate_window(self) -> None:
        """Start a fresh rate-limit window now (as if the reset time had passed)."""

        def _reset() -> None:
            self._window_start, self._window_count = self._clock.now(), 0

        self.call(_reset)

    # --- the server ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        base = "/api/v1/workspaces/{slug}/projects/{pid}"
        for kind in ("work-items", "issues"):
            app.router.add_get(f"{base}/{kind}/", self._list_items)
            app.router.add_get(f"{base}/{kind}/{{iid}}/", self._get_item)
            app.router.add_patch(f"{base}/{kind}/{{iid}}/", self._patch_item)
            app.router.add_get(f"{base}/{kind}/{{iid}}/comments/", self._list_comments)
            app.router.add_post(f"{base}/{kind}/{{iid}}/comments/", self._post_comment)
        app.router.add_get(f"{base}/states/", self._list_states)
        return app

    async def on_started(self) -> None:
        self._outbox = asyncio.Queue()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._sender = asyncio.ensure_future(self._send_webhooks())

    async def on_stopping(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("X-API-Key") != self.api_key:
            return web.json_response({"detail": "Invalid API key"}, status=401)
        limited = self._rate_limited()
        if limited is not None:
            return limited
        if request.match_info.get("slug", self.workspace) != self.workspace:
            return web.json_response({"error": "Workspace not found"}, status=404)
        fault = next((f for f in self.faults if f.matches(request)), None)
        if fault is None:
            return await handler(request)
        fault.count -= 1
        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            return web.json_response({"error": "hung"}, status=504)
        if fault.kind == "junk":
            return web.Response(body=fault.body, status=200, content_type="text/html")
        if fault.after_store:
            await handler(request)
        return web.json_response({"error": f"injected {fault.status}"}, status=fault.status)

    def _rate_limited(self) -> web.Response | None:
        if self.rate_limit is None:
            return None
        now = self._clock.now()
        if now - self._window_start >= self.rate_window_s:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        reset = int(self._window_start + self.rate_window_s)
        if self._window_count <= self.rate_limit:
            return None
        return web.json_response(
            {"detail": "Request was throttled."},
            status=429,
            headers={
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset),
            },
        )

    def _project(self, request: web.Request) -> str | None:
        pid = request.match_info["pid"]
        return pid if pid in self.states else None

    def _find(self, request: web.Request) -> dict[str, Any] | None:
        pid = self._project(request)
        item = self.items.get(request.match_info["iid"])
        return item if pid is not None and item is not None and item["project"] == pid else None

    async def _list_states(self, request: web.Request) -> web.Response:
        pid = self._project(request)
        if pid is None:
            return web.json_response({"error": "Project not found"}, status=404)
        return _page(request, self.states[pid])

    async def _list_items(self, request: web.Request) -> web.Response:
        pid = self._project(request)
        if pid is None:
            return web.json_response({"error": "Project not found"}, status=404)
        rows = [self.items[i] for i in self.item_order[pid]]
        if request.query.get("order_by") == "-updated_at" and not self.ignore_order:
            rows.sort(key=lambda row: str(row["updated_at"]), reverse=True)
        response = _page(request, rows)
        if self.stuck_cursor and response.status == 200:
            body = json.loads(response.body)  # type: ignore[arg-type]
            body["next_cursor"] = request.query.get("cursor", f"{request.query['per_page']}:0:0")
            body["next_page_results"] = True
            return web.json_response(body)
        return response

    async def _get_item(self, request: web.Request) -> web.Response:
        item = self._find(request)
        if item is None:
            return web.json_response({"error": "Issue not found"}, status=404)
        return web.json_response(item)

    async def _patch_item(self, request: web.Request) -> web.Response:
        item = self._find(request)
        if item is None:
            return web.json_response({"error": "Issue not found"}, status=404)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "JSON parse error"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "expected an object"}, status=400)
        if "state" in body:
            states = {s["id"]: s for s in self.states[item["project"]]}
            if body["state"] not in states:
                return web.json_response(
                    {"state": [f'Invalid pk "{body["state"]}" - object does not exist.']},
                    status=400,
                )
            self.effects.append(
                {
                    "kind": "state_set",
                    "work_item_id": item["id"],
                    "state_id": body["state"],
                    "state_name": states[body["state"]]["name"],
                }
            )
            self._change_state(item, body["state"], "state", BOT)
        if isinstance(body.get("name"), str):
            item["name"] = body["name"]
            item["updated_at"] = _now_iso()
        return web.json_response(item)

    async def _list_comments(self, request: web.Request) -> web.Response:
        item = self._find(request)
        if item is None:
            return web.json_response({"error": "Issue not found"}, status=404)
        return _page(request, self.comments[item["id"]])

    async def _post_comment(self, request: web.Request) -> web.Response:
        item = self._find(request)
        if item is None:
            return web.json_response({"error": "Issue not found"}, status=404)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "JSON parse error"}, status=400)
        html = body.get("comment_html") if isinstance(body, dict) else None
        if not isinstance(html, str) or not html:
            return web.json_response({"comment_html": ["This field is required."]}, status=400)
        ext_id, ext_source = body.get("external_id"), body.get("external_source")
        existing = self.comments[item["id"]]
        if (
            ext_id
            and ext_source
            and any(
                c["external_id"] == ext_id and c["external_source"] == ext_source for c in existing
            )
        ):
            return web.json_response(
                {
                    "error": "Issue Comment with the same external id and external source "
                    "already exists",
                    "id": next(c["id"] for c in existing if c["external_id"] == ext_id),
                },
                status=409,
            )
        now = _now_iso()
        comment = {
            "id": str(uuid.uuid4()),
            "created_at": now,
            "updated_at": now,
            "comment_html": html,
            "comment_stripped": "",
            "attachments": [],
            "access": body.get("access", "INTERNAL"),
            "external_source": ext_source,
            "external_id": ext_id,
            "actor": BOT["id"],
            "issue": item["id"],
            "project": item["project"],
            "workspace": WORKSPACE_ID,
        }
        existing.append(comment)
        self.effects.append(
            {
                "kind": "comment",
                "work_item_id": item["id"],
                "comment_id": comment["id"],
                "html": html,
            }
        )
        return web.json_response(comment, status=201)

    # --- webhooks --------------------------------------------------------------------------

    def _change_state(
        self, item: dict[str, Any], state_id: str, field: str, actor: dict[str, Any]
    ) -> None:
        old = item["state"]
        if old == state_id:
            return  # Plane records no activity, and sends nothing, for an unchanged field
        item["state"] = state_id
        item["updated_at"] = _now_iso()
        item["updated_by"] = actor["id"]
        self._webhook(
            "updated",
            item,
            {"field": field, "new_value": state_id, "old_value": old, "actor": actor},
        )

    def _expanded(self, item: dict[str, Any]) -> dict[str, Any]:
        """IssueExpandSerializer: `state` is an object, relations expanded."""
        data = copy.deepcopy(ISSUE_UPDATED["data"])
        for key in data:
            if key in item and key not in ("state", "assignees", "labels"):
                data[key] = item[key]
        state = next(s for s in self.states[item["project"]] if s["id"] == item["state"])
        data["state"] = {k: state[k] for k in ("id", "name", "color", "group")}
        data["assignees"] = []
        data["labels"] = []
        return data

    def _webhook(self, action: str, item: dict[str, Any], change: dict[str, Any] | None) -> None:
        template = ISSUE_CREATED if action == "created" else ISSUE_UPDATED
        activity = copy.deepcopy(template["activity"])
        if change is not None:
            activity.update(change)
        payload = {
            "event": "issue",
            "action": action,
            "webhook_id": template["webhook_id"],
            "workspace_id": WORKSPACE_ID,
            "data": self._expanded(item),
            "activity": activity,
        }
        if self._outbox is not None:
            self._outbox.put_nowait(payload)

    def sign(self, body: bytes) -> str:
        return hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()

    async def _send_webhooks(self) -> None:
        assert self._outbox is not None
        assert self._session is not None
        while True:
            payload = await self._outbox.get()
            body = json.dumps(payload).encode()
            headers = dict(WEBHOOK_HEADERS)
            headers["X-Plane-Delivery"] = str(uuid.uuid4())
            if self.webhook_secret:
                headers["X-Plane-Signature"] = self.sign(body)
            else:
                headers.pop("X-Plane-Signature", None)
            record: dict[str, Any] = {
                "delivery": headers["X-Plane-Delivery"],
                "action": payload["action"],
                "field": payload["activity"]["field"],
                "work_item_id": payload["data"]["id"],
                "dropped": False,
                "status": None,
            }
            self.deliveries.append(record)
            if not self.webhook_url:
                continue
            if self.drop_rate and self._rng.random() < self.drop_rate:
                record["dropped"] = True
                continue
            try:
                async with self._session.post(self.webhook_url, data=body, headers=headers) as r:
                    record["status"] = r.status
            except (aiohttp.ClientError, TimeoutError) as err:
                record["status"] = repr(err)
