"""A fake Gitea: the real REST API and webhooks over real bare git repositories.

An aiohttp server on 127.0.0.1 (a random port, its own thread) answers the
`/api/v1` routes Conveyor calls, with bodies built from the recorded fixtures so
their shapes stay exact. Repositories are bare git repositories under `root`;
their `clone_url` is the file path, so Conveyor clones and pushes with plain git.

Like Gitea with webhooks and a CI runner, a watcher thread notices every new head
of a non-main branch, sends a signed `push` webhook, then runs `check_command` in
a clean checkout of that commit (a `pending` then `success`/`failure` status, each
followed by a `status` webhook), or posts `success` at once without a command.
Opening and merging pull requests send `pull_request` webhooks. Deliveries are
never retried, and `drop_rate` loses that fraction of them, as a lost webhook.

Tests inject faults per request (`fail_next`, `hang_next`, `junk_next`) and count
side effects in `effects` (`pr_opened`, `pr_merged`, `status_set`, `comment`).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import queue
import random
import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from aiohttp import web

from conveyor.clock import SystemClock, iso
from conveyor.errors import GitError
from conveyor.logs import get_logger
from gateways import git

log = get_logger(__name__)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "integrations"
"""The recorded Gitea payloads the responses and webhooks are shaped after."""

MAIN = "main"
ZERO_SHA = "0" * 40
CI_CONTEXT = "ci/build"
"""Context of the statuses the fake CI posts."""

_IDENTITY = ("Fake Gitea", "gitea@fake.test")
_STATE_PRIORITY = {"error": 0, "failure": 1, "warning": 2, "pending": 3, "success": 4}
_MAX_LIMIT = 50
_CHECK_TIMEOUT_S = 120.0


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


@dataclass
class _Pull:
    number: int
    pull_id: int
    head: str
    base: str
    title: str
    body: str
    head_sha: str
    base_sha: str
    merge_base: str
    created_at: str
    state: str = "open"
    merged: bool = False
    merged_at: str | None = None
    merge_commit_sha: str | None = None
    closed_at: str | None = None
    updated_at: str = ""


@dataclass
class _Repo:
    repo_id: int
    owner: str
    name: str
    bare: Path
    pulls: dict[int, _Pull] = field(default_factory=dict)
    next_index: int = 1
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    heads: dict[str, str] = field(default_factory=dict)
    refs_seen: tuple[tuple[str, int, int, int], ...] = ()

    @property
    def full(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class _Fault:
    method: str
    prefix: str
    kind: str  # "status", "hang" or "junk"
    count: int
    status: int = 500
    after: bool = False
    seconds: float = 0.0


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FakeGitea:
    """A Gitea server for tests; see the module docstring."""

    def __init__(
        self,
        root: Path,
        token: str,
        webhook_url: str = "",
        webhook_secret: str = "",
        drop_rate: float = 0.0,
        check_command: list[str] | None = None,
        *,
        seed: int = 0,
        poll_s: float = 0.05,
    ) -> None:
        self.root = root.resolve()
        self.token = token
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.drop_rate = drop_rate
        self.check_command = list(check_command) if check_command else None
        self.url = ""
        self.effects: list[dict[str, Any]] = []
        """Side effects in order: dicts with `kind` and the repository's `repo`."""
        self.requests: list[tuple[str, str]] = []
        """Every request as (method, path below /api/v1), faulted ones included."""
        self.deliveries: list[dict[str, Any]] = []
        """Every webhook attempt: event, delivery id, dropped, HTTP status or error."""
        self._poll_s = poll_s
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._faults: list[_Fault] = []
        self._ids = iter(range(1000, 10**9))
        self._clock = SystemClock()
        self._stop = threading.Event()
        self._outbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._ci_threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._table = self._routes()
        self._templates = {
            "pr": _load("gitea-pr"),
            "combined": _load("gitea-combined-status"),
            "push": _load("gitea-push"),
            "status": _load("gitea-status"),
            "pull_request": _load("gitea-pull_request-opened"),
        }

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> FakeGitea:
        """Serve on a random port; return self with `url` set."""
        self.root.mkdir(parents=True, exist_ok=True)
        ready = threading.Event()
        failure: list[BaseException] = []
        server = threading.Thread(
            target=self._serve, args=(ready, failure), name="fake-gitea", daemon=True
        )
        server.start()
        if not ready.wait(10.0) or failure:
            raise RuntimeError(f"fake Gitea did not start: {failure!r}")
        self._threads.append(server)
        for target, name in ((self._watch, "fake-gitea-watch"), (self._send, "fake-gitea-hooks")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, watching and delivering; wait for running CI."""
        self._stop.set()
        self._outbox.put(None)
        for thread in list(self._ci_threads):
            thread.join(timeout=_CHECK_TIMEOUT_S)
        loop, runner = self._loop, self._runner
        if loop is not None and runner is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10.0)
            loop.call_soon_threadsafe(loop.stop)
        for thread in self._threads:
            thread.join(timeout=10.0)

    def __enter__(self) -> FakeGitea:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
        except Exception as err:
            failure.append(err)
            ready.set()
            return
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    # -- test controls --------------------------------------------------------

    def create_repo(self, full_name: str, files: Mapping[str, bytes | str] | None = None) -> Path:
        """Create `owner/name` with one commit on main holding `files`; return the bare path."""
        owner, _, name = full_name.partition("/")
        bare = self.root / owner / f"{name}.git"
        git.init_bare(bare, MAIN)
        with self._scratch("create") as work:
            git.run_git(["clone", "--quiet", "--", str(bare), str(work)])
            git.run_git(["symbolic-ref", "HEAD", f"refs/heads/{MAIN}"], work)
            self._write(work, files or {"README.md": f"# {name}\n"})
            self._commit(work, "Initial commit")
            git.run_git(["push", "--quiet", "--no-verify", "origin", MAIN], work)
        with self._lock:
            repo = _Repo(repo_id=next(self._ids), owner=owner, name=name, bare=bare)
            repo.heads = self._refs(bare)
            self._repos[full_name] = repo
        return bare

    def push_branch(
        self,
        full_name: str,
        branch: str,
        files: Mapping[str, bytes | str],
        *,
        base: str = MAIN,
        message: str = "change",
    ) -> str:
        """Commit `files` on `branch` (from its head, or from `base`) and push; return the sha."""
        bare = self._repo(full_name).bare
        with self._scratch("push") as work:
            git.run_git(["clone", "--quiet", "--", str(bare), str(work)])
            start = branch if git.resolve_commit(bare, f"refs/heads/{branch}") else base
            git.run_git(["checkout", "--quiet", "-B", branch, f"origin/{start}"], work)
            self._write(work, files)
            self._commit(work, message)
            git.run_git(
                ["push", "--quiet", "--no-verify", "origin", f"HEAD:refs/heads/{branch}"], work
            )
            return git.head_sha(work)

    def fail_next(
        self, method: str, path_prefix: str, status: int, count: int = 1, *, after: bool = False
    ) -> None:
        """Answer the next `count` matching requests with `status`.

        `path_prefix` is matched below `/api/v1`. With `after`, the request is
        carried out first and only its answer is replaced (a lost response).
        """
        self._add_fault(_Fault(method.upper(), path_prefix, "status", count, status, after))

    def hang_next(self, method: str, path_prefix: str, seconds: float, count: int = 1) -> None:
        """Hold the next matching requests for `seconds`, then carry them out."""
        self._add_fault(_Fault(method.upper(), path_prefix, "hang", count, seconds=seconds))

    def junk_next(self, method: str, path_prefix: str, count: int = 1) -> None:
        """Answer the next matching requests with 200 and an HTML page instead of JSON."""
        self._add_fault(_Fault(method.upper(), path_prefix, "junk", count))

    def effects_of(self, kind: str) -> list[dict[str, Any]]:
        """The recorded side effects of one kind."""
        with self._lock:
            return [e for e in self.effects if e["kind"] == kind]

    def send_hook(self, event_type: str, payload: Mapping[str, Any]) -> int | None:
        """Deliver one webhook now (subject to `drop_rate`); its HTTP status, None if lost."""
        body = json.dumps(payload, indent=2, ensure_ascii=False).encode()
        return self._deliver(event_type, body)

    def set_status(
        self, full_name: str, sha: str, state: str, context: str = CI_CONTEXT, description: str = ""
    ) -> dict[str, Any]:
        """Record a status as a CI runner would (with its webhook)."""
        return self._add_status(self._repo(full_name), sha, state, context, description, "")

    # -- HTTP -----------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        rel = path.removeprefix("/api/v1") if path.startswith("/api/v1/") else path
        with self._lock:
            self.requests.append((method, rel))
        if not path.startswith("/api/v1/"):
            return self._reply(_Reply(404, self._error_body("The target couldn't be found.")))
        auth = request.headers.get("Authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not hmac.compare_digest(
            given.encode(), self.token.encode()
        ):
            why = "token is required" if not auth else "user does not exist [uid: 0, name: ]"
            return self._reply(_Reply(401, self._error_body(why)))
        fault = self._take_fault(method, rel)
        if fault is not None and fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
        if fault is not None and not fault.after and fault.kind in ("status", "junk"):
            return self._reply(self._faulted(fault))
        body = await request.read()
        query = dict(request.query)
        loop = asyncio.get_running_loop()
        # Git work runs off the loop so a hanging request never stalls the others.
        reply = await loop.run_in_executor(None, self._route, method, rel, query, body)
        if fault is not None and fault.after and fault.kind in ("status", "junk"):
            return self._reply(self._faulted(fault))
        return self._reply(reply)

    def _faulted(self, fault: _Fault) -> _Reply:
        if fault.kind == "junk":
            return _Reply(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        return _Reply(fault.status, self._error_body(f"injected HTTP {fault.status}"))

    @staticmethod
    def _reply(reply: _Reply) -> web.Response:
        return web.Response(
            status=reply.status, body=reply.body, headers={"Content-Type": reply.content_type}
        )

    def _error_body(self, message: str) -> bytes:
        return _dump({"message": message, "url": f"{self.url}/api/swagger"})

    def _route(self, method: str, rel: str, query: dict[str, str], body: bytes) -> _Reply:
        for verb, pattern, handler in self._table:
            match = pattern.fullmatch(rel)
            if verb == method and match is not None:
                try:
                    with self._lock:
                        repo = self._repos.get(f"{match['owner']}/{match['name']}")
                        if repo is None:
                            raise _HTTPError(404, "The target couldn't be found.")
                        return handler(repo, match.groupdict(), query, body)
                except _HTTPError as err:
                    return _Reply(err.status, self._error_body(err.message))
        return _Reply(404, self._error_body("The target couldn't be found."))

    def _routes(
        self,
    ) -> list[tuple[str, re.Pattern[str], Callable[..., _Reply]]]:
        repo = r"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)"
        table: list[tuple[str, str, Callable[..., _Reply]]] = [
            ("GET", "", self._get_repo),
            ("GET", r"/branches/(?P<branch>.+)", self._get_branch),
            ("DELETE", r"/branches/(?P<branch>.+)", self._delete_branch),
            ("GET", r"/raw/(?P<path>.+)", self._get_raw),
            ("GET", r"/contents(?:/(?P<path>.*))?", self._get_contents),
            ("GET", r"/pulls", self._list_pulls),
            ("POST", r"/pulls", self._create_pull),
            ("GET", r"/pulls/(?P<index>[0-9]+)", self._get_pull),
            ("POST", r"/pulls/(?P<index>[0-9]+)/merge", self._merge_pull),
            ("GET", r"/pulls/(?P<base>[^/]+)/(?P<head>.+)", self._pull_by_head),
            ("GET", r"/commits/(?P<ref>[^/]+)/status", self._combined_status),
            ("POST", r"/statuses/(?P<sha>[^/]+)", self._create_status),
            ("GET", r"/issues/(?P<index>[0-9]+)/comments", self._list_comments),
            ("POST", r"/issues/(?P<index>[0-9]+)/comments", self._create_comment),
        ]
        return [(verb, re.compile(repo + tail), fn) for verb, tail, fn in table]

    # -- handlers (called under the lock) -------------------------------------

    def _get_repo(self, repo: _Repo, _m: dict[str, str], _q: dict[str, str], _b: bytes) -> _Reply:
        return _Reply(200, _dump(self._repo_json(repo)))

    def _get_branch(self, repo: _Repo, m: dict[str, str], _q: dict[str, str], _b: bytes) -> _Reply:
        sha = self._resolve(repo, m["branch"], branch_only=True)
        if sha is None:
            raise _HTTPError(404, f"branch does not exist [name: {m['branch']}]")
        commit = self._payload_commit(repo, sha)
        return _Reply(
            200,
            _dump(
                {
                    "name": m["branch"],
                    "commit": commit,
                    "protected": False,
                    "required_approvals": 0,
                    "enable_status_check": False,
                    "status_check_contexts": [],
                    "user_can_push": True,
                    "user_can_merge": True,
                    "effective_branch_protection_name": "",
                }
            ),
        )

    def _delete_branch(
        self, repo: _Repo, m: dict[str, str], _q: dict[str, str], _b: bytes
    ) -> _Reply:
        if self._resolve(repo, m["branch"], branch_only=True) is None:
            raise _HTTPError(404, f"branch does not exist [name: {m['branch']}]")
        git.run_git(["update-ref", "-d", f"refs/heads/{m['branch']}"], git_dir=repo.bare)
        self._effect("branch_deleted", repo, branch=m["branch"])
        return _Reply(204, b"")

    def _get_raw(self, repo: _Repo, m: dict[str, str], q: dict[str, str], _b: bytes) -> _Reply:
        sha = self._resolve(repo, q.get("ref", MAIN))
        if sha is None:
            raise _HTTPError(404, "object does not exist")
        spec = f"{sha}:{m['path'].strip('/')}"
        kind = git.run_git_result(["cat-file", "-t", spec], git_dir=repo.bare)
        if not kind.ok or kind.text != "blob":
            raise _HTTPError(404, "object does not exist")
        data = git.run_git_result(["cat-file", "blob", spec], git_dir=repo.bare).stdout
        return _Reply(200, data, "text/plain; charset=utf-8")

    def _get_contents(self, repo: _Repo, m: dict[str, str], q: dict[str, str], _b: bytes) -> _Reply:
        sha = self._resolve(repo, q.get("ref", MAIN))
        if sha is None:
            raise _HTTPError(404, "object does not exist")
        rel = (m.get("path") or "").strip("/")
        spec = f"{sha}:{rel}" if rel else f"{sha}^{{tree}}"
        kind = git.run_git_result(["cat-file", "-t", spec], git_dir=repo.bare)
        if not kind.ok:
            raise _HTTPError(404, "object does not exist")
        if kind.text == "blob":
            parent, _, leaf = rel.rpartition("/")
            return _Reply(200, _dump(self._content(repo, parent, leaf, "file", spec)))
        listing = git.run_git(["ls-tree", "-z", spec], git_dir=repo.bare)
        entries = []
        for line in listing.split("\0"):
            if not line:
                continue
            meta, _, leaf = line.partition("\t")
            kind_name = "dir" if meta.split()[1] == "tree" else "file"
            entries.append(self._content(repo, rel, leaf, kind_name, meta.split()[2]))
        return _Reply(200, _dump(entries))

    def _content(self, repo: _Repo, parent: str, leaf: str, kind: str, sha: str) -> dict[str, Any]:
        path = f"{parent}/{leaf}" if parent else leaf
        api = self._api(repo)
        return {
            "name": leaf,
            "path": path,
            "sha": sha,
            "type": kind,
            "size": 0,
            "url": f"{api}/contents/{path}",
            "html_url": f"{self._html(repo)}/src/branch/{MAIN}/{path}",
            "git_url": f"{api}/git/blobs/{sha}",
            "download_url": f"{self._html(repo)}/raw/branch/{MAIN}/{path}",
            "_links": {},
        }

    def _list_pulls(self, repo: _Repo, _m: dict[str, str], q: dict[str, str], _b: bytes) -> _Reply:
        state = q.get("state", "open")
        page, limit = _paging(q)
        pulls = [
            p
            for p in sorted(repo.pulls.values(), key=lambda p: -p.number)
            if state == "all" or p.state == state
        ]
        chosen = pulls[(page - 1) * limit : page * limit]
        return _Reply(200, _dump([self._pull_json(repo, p) for p in chosen]))

    def _create_pull(self, repo: _Repo, _m: dict[str, str], _q: dict[str, str], b: bytes) -> _Reply:
        form = _form(b)
        head = str(form.get("head", "")).rpartition(":")[2]
        base = str(form.get("base", ""))
        if not head or head == base:
            raise _HTTPError(
                422, "Invalid PullRequest: There are no changes between the head and the base"
            )
        head_sha = self._resolve(repo, head, branch_only=True)
        base_sha = self._resolve(repo, base, branch_only=True)
        if head_sha is None or base_sha is None:
            raise _HTTPError(422, f"GetRefCommitID: branch does not exist [{head or base}]")
        for pull in repo.pulls.values():
            if pull.state == "open" and (pull.head, pull.base) == (head, base):
                raise _HTTPError(
                    409,
                    f"pull request already exists for these targets [id: {pull.pull_id}, "
                    f"issue_id: {pull.number}, head_repo_id: {repo.repo_id}, "
                    f"base_repo_id: {repo.repo_id}, head_branch: {head}, base_branch: {base}]",
                )
        merge_base = git.run_git(["merge-base", head_sha, base_sha], git_dir=repo.bare)
        now = iso(self._clock.now())
        number = repo.next_index
        repo.next_index += 1
        pull = _Pull(
            number=number,
            pull_id=next(self._ids),
            head=head,
            base=base,
            title=str(form.get("title", "")),
            body=str(form.get("body", "")),
            head_sha=head_sha,
            base_sha=base_sha,
            merge_base=merge_base,
            created_at=now,
            updated_at=now,
        )
        repo.pulls[number] = pull
        self._effect("pr_opened", repo, number=number, head=head)
        self._hook_pull(repo, pull, "opened")
        return _Reply(201, _dump(self._pull_json(repo, pull)))

    def _get_pull(self, repo: _Repo, m: dict[str, str], _q: dict[str, str], _b: bytes) -> _Reply:
        pull = repo.pulls.get(int(m["index"]))
        if pull is None:
            raise _HTTPError(404, "The target couldn't be found.")
        return _Reply(200, _dump(self._pull_json(repo, pull)))

    def _pull_by_head(
        self, repo: _Repo, m: dict[str, str], _q: dict[str, str], _b: bytes
    ) -> _Reply:
        head = m["head"].rpartition(":")[2]
        # Gitea returns whichever row the database finds first, not the newest one.
        for number in sorted(repo.pulls):
            pull = repo.pulls[number]
            if (pull.base, pull.head) == (m["base"], head):
                return _Reply(200, _dump(self._pull_json(repo, pull)))
        raise _HTTPError(404, "The target couldn't be found.")

    def _merge_pull(self, repo: _Repo, m: dict[str, str], _q: dict[str, str], b: bytes) -> _Reply:
        form = _form(b)
        pull = repo.pulls.get(int(m["index"]))
        if pull is None:
            raise _HTTPError(404, "The target couldn't be found.")
        if pull.merged:
            raise _HTTPError(405, "PR already merged")
        if pull.state != "open":
            raise _HTTPError(404, "The target couldn't be found.")
        if str(form.get("Do", form.get("do", "merge"))) != "merge":
            raise _HTTPError(405, "Invalid merge style")
        head = self._resolve(repo, pull.head, branch_only=True)
        if head is None:
            raise _HTTPError(405, "Please try again later")
        expected = str(form.get("head_commit_id", ""))
        if expected and expected != head:
            raise _HTTPError(409, "head out of date")
        title = str(
            form.get("MergeTitleField") or f"Merge pull request '{pull.title}' (#{pull.number})"
        )
        base_sha = self._resolve(repo, pull.base, branch_only=True) or ""
        with self._scratch("merge") as work:
            git.run_git(
                ["clone", "--quiet", "--branch", pull.base, "--", str(repo.bare), str(work)]
            )
            merged = git.run_git_result(
                [*git.identity(*_IDENTITY), "merge", "--no-ff", "--no-edit", "-m", title, head],
                work,
            )
            if not merged.ok:
                conflicted = git.run_git_result(["diff", "--name-only", "--diff-filter=U"], work)
                files = conflicted.text.split()
                raise _HTTPError(409, f"Merge Conflict: CONFLICT (content): {', '.join(files)}")
            git.run_git(["push", "--quiet", "--no-verify", "origin", pull.base], work)
            commit = git.head_sha(work)
        repo.heads[pull.base] = commit
        now = iso(self._clock.now())
        pull.state, pull.merged, pull.merged_at, pull.closed_at = "closed", True, now, now
        pull.merge_commit_sha, pull.head_sha, pull.base_sha, pull.updated_at = (
            commit,
            head,
            base_sha,
            now,
        )
        self._effect("pr_merged", repo, number=pull.number, sha=commit)
        self._hook_pull(repo, pull, "closed")
        return _Reply(200, b"")

    def _combined_status(
        self, repo: _Repo, m: dict[str, str], q: dict[str, str], _b: bytes
    ) -> _Reply:
        sha = self._resolve(repo, m["ref"])
        if sha is None:
            raise _HTTPError(404, "object does not exist")
        latest: dict[str, dict[str, Any]] = {}
        for status in repo.statuses.get(sha, []):
            latest[status["context"]] = status
        if not latest:
            # What the older Gitea source does for a commit without statuses.
            return _Reply(200, b"")
        ordered = sorted(latest.values(), key=lambda s: -int(s["id"]))
        page, limit = _paging(q)
        body = copy.deepcopy(self._templates["combined"])
        body.update(
            state=min((s["status"] for s in ordered), key=lambda s: _STATE_PRIORITY.get(s, 0)),
            sha=sha,
            total_count=len(ordered),
            statuses=ordered[(page - 1) * limit : page * limit],
            repository=self._repo_json(repo),
            commit_url=f"{self._api(repo)}/commits/{sha}",
            url=f"{self._api(repo)}/commits/{sha}/status",
        )
        return _Reply(200, _dump(body))

    def _create_status(
        self, repo: _Repo, m: dict[str, str], _q: dict[str, str], b: bytes
    ) -> _Reply:
        form = _form(b)
        sha = m["sha"]
        if self._resolve(repo, sha) != sha:
            raise _HTTPError(404, "object does not exist")
        state = str(form.get("state", ""))
        if state not in _STATE_PRIORITY:
            raise _HTTPError(422, f"[State]: invalid state {state!r}")
        status = self._add_status(
            repo,
            sha,
            state,
            str(form.get("context") or "default"),
            str(form.get("description", "")),
            str(form.get("target_url", "")),
        )
        return _Reply(201, _dump(status))

    def _list_comments(
        self, repo: _Repo, m: dict[str, str], _q: dict[str, str], _b: bytes
    ) -> _Reply:
        if int(m["index"]) not in repo.pulls:
            raise _HTTPError(404, "The target couldn't be found.")
        return _Reply(200, _dump(repo.comments.get(int(m["index"]), [])))

    def _create_comment(
        self, repo: _Repo, m: dict[str, str], _q: dict[str, str], b: bytes
    ) -> _Reply:
        index = int(m["index"])
        if index not in repo.pulls:
            raise _HTTPError(404, "The target couldn't be found.")
        body = str(_form(b).get("body", ""))
        if not body:
            raise _HTTPError(422, "[Body]: Required")
        now = iso(self._clock.now())
        comment_id = next(self._ids)
        comment = {
            "id": comment_id,
            "html_url": f"{self._html(repo)}/pulls/{index}#issuecomment-{comment_id}",
            "pull_request_url": f"{self._html(repo)}/pulls/{index}",
            "issue_url": "",
            "user": self._bot(),
            "original_author": "",
            "original_author_id": 0,
            "body": body,
            "assets": [],
            "created_at": now,
            "updated_at": now,
        }
        repo.comments.setdefault(index, []).append(comment)
        self._effect("comment", repo, number=index, comment_id=comment_id)
        return _Reply(201, _dump(comment))

    # -- statuses, CI and the watcher -----------------------------------------

    def _add_status(
        self,
        repo: _Repo,
        sha: str,
        state: str,
        context: str,
        description: str,
        target_url: str = "",
    ) -> dict[str, Any]:
        now = iso(self._clock.now())
        with self._lock:
            status: dict[str, Any] = copy.deepcopy(self._templates["combined"]["statuses"][0])
            status.update(
                id=next(self._ids),
                status=state,
                target_url=target_url,
                description=description,
                url=f"{self._api(repo)}/statuses/{sha}",
                context=context,
                creator=self._bot(),
                created_at=now,
                updated_at=now,
            )
            repo.statuses.setdefault(sha, []).append(status)
            self._effect("status_set", repo, sha=sha, state=state, context=context)
            hook = copy.deepcopy(self._templates["status"])
            hook.update(
                commit=self._payload_commit(repo, sha),
                context=context,
                created_at=now,
                description=description,
                id=status["id"],
                repository=self._repo_json(repo),
                sender=self._bot(),
                sha=sha,
                state=state,
                target_url=target_url,
                updated_at=now,
            )
            self._queue_hook("status", hook)
        return status

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            with self._lock:
                repos = list(self._repos.values())
            for repo in repos:
                try:
                    self._scan(repo)
                except Exception as err:  # the watcher outlives one bad scan
                    log.warning("fake_gitea.scan_failed", repo=repo.full, error=repr(err))

    def _scan(self, repo: _Repo) -> None:
        # Ref files change on every push; only then is git asked for the heads.
        seen = _ref_files(repo.bare)
        if seen == repo.refs_seen:
            return
        repo.refs_seen = seen
        current = self._refs(repo.bare)
        with self._lock:
            changed = {
                branch: (repo.heads.get(branch, ZERO_SHA), sha)
                for branch, sha in current.items()
                if repo.heads.get(branch) != sha
            }
            repo.heads.update(current)
        for branch, (before, after) in sorted(changed.items()):
            if branch == MAIN:
                continue
            self._hook_push(repo, branch, before, after)
            thread = threading.Thread(
                target=self._run_ci, args=(repo, after), name="fake-gitea-ci", daemon=True
            )
            # Started before it is listed: `stop` joins only threads that have started.
            thread.start()
            self._ci_threads.append(thread)

    def _run_ci(self, repo: _Repo, sha: str) -> None:
        if not self.check_command:
            self._add_status(repo, sha, "success", CI_CONTEXT, "no check configured")
            return
        self._add_status(repo, sha, "pending", CI_CONTEXT, "check running")
        with self._scratch("ci") as work:
            try:
                git.run_git(["clone", "--quiet", "--no-checkout", "--", str(repo.bare), str(work)])
                git.run_git(["checkout", "--quiet", "--detach", sha], work)
                code = subprocess.run(
                    self.check_command,
                    cwd=work,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=_CHECK_TIMEOUT_S,
                    check=False,
                ).returncode
            except (OSError, subprocess.SubprocessError, GitError) as err:
                self._add_status(repo, sha, "error", CI_CONTEXT, f"check did not run: {err}")
                return
        if code == 0:
            self._add_status(repo, sha, "success", CI_CONTEXT, "check passed")
        else:
            self._add_status(repo, sha, "failure", CI_CONTEXT, f"check exited {code}")

    # -- webhooks -------------------------------------------------------------

    def _hook_push(self, repo: _Repo, branch: str, before: str, after: str) -> None:
        span = after if before == ZERO_SHA else f"{before}..{after}"
        listing = git.run_git_result(
            ["log", "-z", "--max-count=20", "--format=%H%x1f%B%x1f%an%x1f%ae%x1f%aI", span],
            git_dir=repo.bare,
        )
        commits: list[dict[str, Any]] = []
        for record in listing.text.split("\0"):
            if not record.strip():
                continue
            sha, message, name, email, when = record.strip("\n").split("\x1f")
            author = {"name": name, "email": email, "username": ""}
            commits.append(
                {
                    "id": sha,
                    "message": message,
                    "url": f"{self._html(repo)}/commit/{sha}",
                    "author": author,
                    "committer": author,
                    "verification": None,
                    "timestamp": when,
                    "added": [],
                    "removed": [],
                    "modified": [],
                }
            )
        with self._lock:
            hook = copy.deepcopy(self._templates["push"])
            hook.update(
                ref=f"refs/heads/{branch}",
                before=before,
                after=after,
                compare_url=f"{self._html(repo)}/compare/{before}...{after}",
                commits=commits,
                total_commits=len(commits),
                head_commit=commits[0] if commits else None,
                repository=self._repo_json(repo),
                pusher=self._bot(),
                sender=self._bot(),
            )
        self._queue_hook("push", hook)

    def _hook_pull(self, repo: _Repo, pull: _Pull, action: str) -> None:
        hook = copy.deepcopy(self._templates["pull_request"])
        hook.update(
            action=action,
            number=pull.number,
            pull_request=self._pull_json(repo, pull),
            repository=self._repo_json(repo),
            sender=self._bot(),
        )
        self._queue_hook("pull_request", hook)

    def _queue_hook(self, event_type: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, indent=2, ensure_ascii=False).encode()
        self._outbox.put((event_type, body))

    def _send(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            self._deliver(*item)

    def _deliver(self, event_type: str, body: bytes) -> int | None:
        delivery = str(uuid.uuid4())
        record: dict[str, Any] = {"event": event_type, "delivery": delivery, "dropped": False}
        with self._lock:
            self.deliveries.append(record)
            dropped = self._rng.random() < self.drop_rate
        if dropped:
            record["dropped"] = True
            return None
        if not self.webhook_url:
            record["error"] = "no webhook_url"
            return None
        try:
            resp = httpx.post(
                self.webhook_url,
                content=body,
                headers=self.hook_headers(event_type, delivery, body),
                timeout=5.0,
            )
        except httpx.HTTPError as err:
            record["error"] = repr(err)
            log.warning("fake_gitea.delivery_failed", event_type=event_type, error=repr(err))
            return None
        record["status"] = resp.status_code
        if resp.status_code >= 300:
            log.warning(
                "fake_gitea.delivery_refused", event_type=event_type, status=resp.status_code
            )
        return resp.status_code

    def hook_headers(self, event_type: str, delivery: str, body: bytes) -> dict[str, str]:
        """Headers Gitea sends with one delivery, in the recorded order."""
        secret = self.webhook_secret.encode()
        sha256 = hmac.new(secret, body, hashlib.sha256).hexdigest() if secret else ""
        sha1 = hmac.new(secret, body, hashlib.sha1).hexdigest() if secret else ""
        return {
            "Content-Type": "application/json",
            "X-Gitea-Delivery": delivery,
            "X-Gitea-Event": event_type,
            "X-Gitea-Event-Type": event_type,
            "X-Gitea-Signature": sha256,
            "X-Gogs-Delivery": delivery,
            "X-Gogs-Event": event_type,
            "X-Gogs-Event-Type": event_type,
            "X-Gogs-Signature": sha256,
            "X-Hub-Signature": f"sha1={sha1}",
            "X-Hub-Signature-256": f"sha256={sha256}",
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Event": event_type,
            "X-GitHub-Event-Type": event_type,
        }

    # -- rendering ------------------------------------------------------------

    def _html(self, repo: _Repo) -> str:
        return f"{self.url}/{repo.full}"

    def _api(self, repo: _Repo) -> str:
        return f"{self.url}/api/v1/repos/{repo.full}"

    def _bot(self) -> dict[str, Any]:
        user: dict[str, Any] = copy.deepcopy(self._templates["combined"]["statuses"][0]["creator"])
        return user

    def _repo_json(self, repo: _Repo) -> dict[str, Any]:
        body: dict[str, Any] = copy.deepcopy(self._templates["pr"]["base"]["repo"])
        owner = body["owner"]
        owner.update(
            id=repo.repo_id + 1_000_000,
            login=repo.owner,
            username=repo.owner,
            full_name=repo.owner,
            email=f"{repo.owner}@fake.test",
            avatar_url=f"{self.url}/avatars/{repo.owner}",
        )
        html = self._html(repo)
        open_pulls = sum(1 for p in repo.pulls.values() if p.state == "open")
        body.update(
            id=repo.repo_id,
            name=repo.name,
            full_name=repo.full,
            size=0,
            languages_url=f"{self._api(repo)}/languages",
            html_url=html,
            url=self._api(repo),
            ssh_url=f"git@127.0.0.1:{repo.full}.git",
            clone_url=str(repo.bare),
            open_issues_count=0,
            open_pr_counter=open_pulls,
        )
        return body

    def _pull_json(self, repo: _Repo, pull: _Pull) -> dict[str, Any]:
        body: dict[str, Any] = copy.deepcopy(self._templates["pr"])
        head_sha = pull.head_sha
        base_sha = pull.base_sha
        if pull.state == "open":
            # An open pull request follows its branches, as Gitea's does.
            head_sha = self._resolve(repo, pull.head, branch_only=True) or head_sha
            base_sha = self._resolve(repo, pull.base, branch_only=True) or base_sha
        repo_json = self._repo_json(repo)
        html = f"{self._html(repo)}/pulls/{pull.number}"
        body.update(
            id=pull.pull_id,
            url=html,
            number=pull.number,
            user=self._bot(),
            title=pull.title,
            body=pull.body,
            state=pull.state,
            comments=len(repo.comments.get(pull.number, [])),
            html_url=html,
            diff_url=f"{html}.diff",
            patch_url=f"{html}.patch",
            mergeable=pull.state == "open",
            merged=pull.merged,
            merged_at=pull.merged_at,
            merge_commit_sha=pull.merge_commit_sha,
            merged_by=self._bot() if pull.merged else None,
            base={
                "label": pull.base,
                "ref": pull.base,
                "sha": base_sha,
                "repo_id": repo.repo_id,
                "repo": repo_json,
            },
            head={
                "label": pull.head,
                "ref": pull.head,
                "sha": head_sha,
                "repo_id": repo.repo_id,
                "repo": repo_json,
            },
            merge_base=pull.merge_base,
            created_at=pull.created_at,
            updated_at=pull.updated_at,
            closed_at=pull.closed_at,
        )
        return body

    def _payload_commit(self, repo: _Repo, sha: str) -> dict[str, Any]:
        shown = git.run_git_result(
            ["show", "-s", "--format=%B%x1f%an%x1f%ae%x1f%aI", sha], git_dir=repo.bare
        )
        parts = shown.text.split("\x1f") if shown.ok else ["", "", "", ""]
        message, name, email, when = [*parts, "", "", "", ""][:4]
        author = {"name": name, "email": email, "username": ""}
        return {
            "id": sha,
            "message": message,
            "url": f"{self._html(repo)}/commit/{sha}",
            "author": author,
            "committer": author,
            "verification": None,
            "timestamp": when,
            "added": [],
            "removed": [],
            "modified": [],
        }

    # -- helpers ----------------------------------------------------------------

    def _repo(self, full_name: str) -> _Repo:
        with self._lock:
            return self._repos[full_name]

    def _resolve(self, repo: _Repo, ref: str, *, branch_only: bool = False) -> str | None:
        if not branch_only and git.is_sha(ref):
            found = git.run_git_result(["cat-file", "-t", ref], git_dir=repo.bare)
            return ref if found.ok and found.text == "commit" else None
        result = git.run_git_result(
            ["rev-parse", "--verify", "--quiet", f"refs/heads/{ref}^{{commit}}"], git_dir=repo.bare
        )
        return result.text if result.ok else None

    @staticmethod
    def _refs(bare: Path) -> dict[str, str]:
        out = git.run_git(
            ["for-each-ref", "--format=%(refname:lstrip=2) %(objectname)", "refs/heads"],
            git_dir=bare,
        )
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def _effect(self, kind: str, repo: _Repo, **fields: Any) -> None:
        with self._lock:
            self.effects.append({"kind": kind, "repo": repo.full, **fields})

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, rel: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.count > 0 and fault.method == method and rel.startswith(fault.prefix):
                    fault.count -= 1
                    return fault
        return None

    def _scratch(self, purpose: str) -> _Scratch:
        return _Scratch(self.root / "tmp", purpose)

    @staticmethod
    def _write(work: Path, files: Mapping[str, bytes | str]) -> None:
        for name, data in files.items():
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.encode() if isinstance(data, str) else data)

    @staticmethod
    def _commit(work: Path, message: str) -> None:
        git.run_git(["add", "--all"], work)
        git.run_git(
            [
                *git.identity(*_IDENTITY),
                "commit",
                "--quiet",
                "--no-verify",
                "--allow-empty",
                "-m",
                message,
            ],
            work,
        )


class _Scratch:
    """A temporary working directory removed on exit."""

    def __init__(self, parent: Path, purpose: str) -> None:
        self._parent = parent
        self._purpose = purpose
        self._path: Path | None = None

    def __enter__(self) -> Path:
        self._parent.mkdir(parents=True, exist_ok=True)
        self._path = Path(tempfile.mkdtemp(prefix=f"{self._purpose}-", dir=self._parent))
        return self._path / "work"

    def __exit__(self, *exc: object) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)


def _ref_files(bare: Path) -> tuple[tuple[str, int, int, int], ...]:
    """Path, inode, mtime and size of every branch ref file and of packed-refs.

    git replaces a ref file by renaming a new one over it, so the inode changes
    even when two updates share an mtime tick.
    """
    found: list[tuple[str, int, int, int]] = []
    candidates = [bare / "packed-refs", *(bare / "refs" / "heads").rglob("*")]
    for path in candidates:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if path.is_file():
            found.append((str(path), info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(sorted(found))


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def _form(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError as err:
        raise _HTTPError(422, f"invalid JSON body: {err}") from err
    if not isinstance(data, dict):
        raise _HTTPError(422, "the body must be a JSON object")
    return data


def _paging(query: Mapping[str, str]) -> tuple[int, int]:
    try:
        page = max(1, int(query.get("page", "1")))
        limit = min(_MAX_LIMIT, max(1, int(query.get("limit", "30"))))
    except ValueError as err:
        raise _HTTPError(422, f"invalid paging: {err}") from err
    return page, limit
