"""The local forge over the network: git smart HTTP and the forge's API, one server.

The process running the `forge` part owns the bare repositories (and their pull
requests, statuses and CI); this server is how processes on other hosts reach
them with their own data directories: `/git/<repo>.git/...` is git's smart HTTP
(`gateways.git_http`), `POST /api/forge/<op>` the rest of the `Forge` interface
(`gateways.local_forge_api`), `GET /healthz` an unauthenticated liveness answer.
Everything but `/healthz` needs the token (401 otherwise).

It runs on an event loop thread of its own; the forge's blocking calls run in a
thread pool, and each CI run in a thread of its own, joined by every caller that
asks for the same sha while it runs (`CheckRuns`) and waited for on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from bus.loop import LoopThread
from conveyor.errors import ConfigError, ConveyorError, ForgeError, InvalidField
from conveyor.logs import get_logger
from gateways import git_http
from gateways.local_forge import LocalForge
from gateways.local_forge_api import (
    API_PREFIX,
    CHECK_WAIT_S,
    GIT_PREFIX,
    OPS,
    Checks,
    ForgeCall,
    error_kind,
)

log = get_logger(__name__)

API_WORKERS = 16
"""Forge calls served at once (a `checks` call waits for its check without one)."""
MAX_API_BODY_BYTES = 4 * 1024 * 1024
SHUTDOWN_TIMEOUT_S = 5.0
WAIT_POLL_S = 0.05
"""How often a waiting `checks` call looks whether its check ended."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CheckRuns:
    """The forge's CI: at most one run per (repo, sha) at a time, each in its own thread."""

    def __init__(self, forge: LocalForge) -> None:
        self._forge = forge
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], threading.Event] = {}

    def begin(self, call: ForgeCall) -> threading.Event | None:
        """The run of the sha's check to wait for, started when due; None: nothing runs.

        Due when asked to start, or when the status is missing or pending and no run
        of this process is under way: a pending status nobody runs is a check that
        died with an earlier incarnation of the forge.
        """
        self._forge.require_pushed(call.repo, call.branch, call.sha)
        key = (call.repo, call.sha)
        with self._lock:
            running = self._running.get(key)
            if running is not None:
                return running
            status = self._forge.commit_status(call.repo, call.sha)
            if not call.start and status is not None and status.state != "pending":
                return None
            running = self._running[key] = threading.Event()
            threading.Thread(
                target=self._run, args=(call, running), name="forge-ci", daemon=True
            ).start()
            return running

    def answer(self, call: ForgeCall, running: bool) -> Checks:
        """The sha's combined status now, and whether its check still runs."""
        return Checks(status=self._forge.commit_status(call.repo, call.sha), running=running)

    def _run(self, call: ForgeCall, running: threading.Event) -> None:
        try:
            self._forge.on_push(call.repo, call.branch, call.sha)
        except Exception:
            log.exception("forge_http.check_failed", repo=call.repo, sha=call.sha)
        finally:
            with self._lock:
                self._running.pop((call.repo, call.sha), None)
            running.set()


def _operations(forge: LocalForge) -> dict[str, Callable[[ForgeCall], Any]]:
    def _set_status(c: ForgeCall) -> None:
        forge.set_status(c.repo, c.sha, c.state, c.context, c.description)

    ops: dict[str, Callable[[ForgeCall], Any]] = {
        "branch_head": lambda c: forge.branch_head(c.repo, c.branch),
        "delete_branch": lambda c: forge.delete_branch(
            c.repo, c.branch, expected_sha=c.expected_head_sha
        ),
        "read_file": lambda c: forge.read_file(c.repo, c.ref, c.path),
        "list_dir": lambda c: forge.list_dir(c.repo, c.ref, c.path),
        "find_pull": lambda c: forge.find_pull(c.repo, c.branch),
        "open_pull": lambda c: forge.open_pull(c.repo, c.branch, c.title, c.body),
        "get_pull": lambda c: forge.get_pull(c.repo, c.number),
        "merge_pull": lambda c: forge.merge_pull(
            c.repo, c.number, expected_head_sha=c.expected_head_sha
        ),
        "commit_status": lambda c: forge.commit_status(c.repo, c.sha),
        "set_status": _set_status,
        "check_log": lambda c: forge.check_log(c.repo, c.sha),
    }
    # `checks` waits on the loop, not in a worker (`ForgeServer._checks`).
    if {*ops, "checks"} != set(OPS):
        raise ConveyorError("the forge server's operations differ from its API's")
    return ops


class ForgeServer:
    """Serves a `LocalForge` over HTTP on `host:port` (0: a free port) with `token`."""

    def __init__(self, forge: LocalForge, token: str, *, host: str, port: int) -> None:
        if not token:
            raise ConfigError("forge.token or forge.token_file is required to serve the forge")
        self._forge = forge
        self._token = token
        self._host, self._port = host, port
        self._ops = _operations(forge)
        self._checks_runs = CheckRuns(forge)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=API_WORKERS, thread_name_prefix="forge-api"
        )
        self._loop: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        """`http://host:port` once started (the real port when configured as 0)."""

    def start(self) -> ForgeServer:
        """Listen; returns once the port is bound."""
        self._loop = LoopThread("forge-http")
        try:
            self._loop.call(self._start(), timeout_s=30.0)
        except BaseException:
            self._loop.stop()
            raise
        log.info("forge_http.started", url=self.url, root=str(self._forge.root))
        return self

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._auth], client_max_size=MAX_API_BODY_BYTES)
        app.router.add_route("*", GIT_PREFIX + "{path:.+}", self._git)
        app.router.add_post(API_PREFIX + "{op}", self._api)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self._runner = runner

    def stop(self) -> None:
        """Stop listening; in-flight requests get a moment. Idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            loop.call(self._stop(), timeout_s=SHUTDOWN_TIMEOUT_S + 5.0)
        finally:
            loop.stop()
            self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("forge_http.stopped", url=self.url)

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        if not git_http.authorized(request.headers.get("Authorization"), self._token):
            return git_http.refused(request)
        return await handler(request)

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _git(self, request: web.Request) -> web.StreamResponse:
        root = self._forge.root / "repos"
        return await git_http.serve(request, root, request.match_info["path"])

    async def _api(self, request: web.Request) -> web.Response:
        op = request.match_info["op"]
        if op not in OPS:
            return _error(404, "unknown", f"no forge operation {op!r}")
        try:
            call = msgspec.json.decode(await request.read(), type=ForgeCall)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            return _error(400, "invalid", f"not a forge call: {err}")
        loop = asyncio.get_running_loop()
        try:
            if op == "checks":
                result: Any = await self._checks(call)
            else:
                result = await loop.run_in_executor(self._pool, self._ops[op], call)
        except InvalidField as err:
            return _error(400, "invalid", str(err))
        except ForgeError as err:
            return _error(409, error_kind(err), str(err))
        except ConveyorError as err:
            log.warning("forge_http.call_failed", op=op, repo=call.repo, error=str(err))
            return _error(500, "internal", str(err))
        except Exception:
            log.exception("forge_http.call_crashed", op=op, repo=call.repo)
            return _error(500, "internal", "the forge failed; see its log")
        body = msgspec.json.encode({"result": result})
        return web.Response(body=body, content_type="application/json")

    async def _checks(self, call: ForgeCall) -> Checks:
        """Start or join the sha's check and wait for it a while, holding no worker thread.

        Every launcher waiting on CI holds a `checks` call most of the time; waiting
        on the loop keeps them from starving the pool the other calls run in.
        """
        loop = asyncio.get_running_loop()
        running = await loop.run_in_executor(self._pool, self._checks_runs.begin, call)
        done = running is None or await _waited(running, min(max(call.wait_s, 0.0), CHECK_WAIT_S))
        return await loop.run_in_executor(self._pool, self._checks_runs.answer, call, not done)


async def _waited(event: threading.Event, timeout_s: float) -> bool:
    """Whether `event` (set by another thread) is set within `timeout_s`, polled on the loop."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not event.is_set():
        if loop.time() >= end:
            return False
        await asyncio.sleep(WAIT_POLL_S)
    return True


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": kind, "message": message}, status=status)
