"""Gitea as the forge: an async REST client and the sync `Forge` on top of it.

`GiteaClient` speaks Gitea's `/api/v1` with httpx. Calls that are safe to repeat
(every GET, and status posts, whose latest-per-context result is the same however
often they land) are retried on timeouts, connection errors, 5xx and 429 with
exponential back-off. Calls with a one-time effect (open a pull request, merge,
comment) are retried only when the request provably never reached Gitea (no
connection, 429); after an ambiguous failure (a timeout or 5xx once the request
was sent) the client first reads back whether the effect landed, and sends the
call again only when it did not.

`GiteaForge` runs the client on a `LoopThread` so actors and job threads can use
it through the blocking `Forge` protocol of `gateways.forge`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import msgspec

from bus.bridge import LoopThread
from conveyor import validate
from conveyor.clock import Clock, SystemClock
from conveyor.config import Config
from conveyor.errors import (
    BusUnavailable,
    ForgeError,
    HeadMismatch,
    InvalidField,
    MergeConflict,
    RemoteError,
)
from conveyor.logs import get_logger
from gateways import git
from gateways.forge import MAIN, CommitStatus, Forge, PullRequest

log = get_logger(__name__)

SERVICE = "gitea"
"""`RemoteError.service` of every failure raised here."""

PAGE_LIMIT = 50
"""Items per page when listing; Gitea's default maximum page size."""

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

_FULL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# Worst first; a combined status is as bad as its worst context.
_STATE_RANK = {"error": 0, "failure": 1, "pending": 2, "success": 3}


def backoff_s(attempt: int, base_s: float = BACKOFF_BASE_S, max_s: float = BACKOFF_MAX_S) -> float:
    """Delay before retry number `attempt` (0-based): doubling from `base_s`, capped."""
    return float(min(max_s, base_s * (2**attempt)))


# -- wire shapes (lenient: unknown fields are ignored) -----------------------


class GiteaRepo(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of a Gitea Repository Conveyor reads."""

    full_name: str
    clone_url: str = ""
    default_branch: str = MAIN


class _BranchCommit(msgspec.Struct, frozen=True):
    id: str


class _Branch(msgspec.Struct, frozen=True):
    name: str
    commit: _BranchCommit


class _Content(msgspec.Struct, frozen=True):
    name: str
    type: str = ""


class PullBranch(msgspec.Struct, frozen=True, kw_only=True):
    """`head` or `base` of a Gitea PullRequest."""

    ref: str
    sha: str = ""


class GiteaPull(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of a Gitea PullRequest Conveyor reads."""

    number: int
    title: str = ""
    body: str | None = ""
    state: str
    merged: bool = False
    merge_commit_sha: str | None = None
    head: PullBranch
    base: PullBranch
    created_at: str | None = None
    merged_at: str | None = None


class GiteaStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A Gitea CommitStatus; its state is under the key `status`."""

    status: str
    context: str = ""
    description: str | None = ""
    target_url: str | None = ""
    created_at: str | None = None
    updated_at: str | None = None


class GiteaCombined(msgspec.Struct, frozen=True, kw_only=True):
    """A Gitea CombinedStatus: the latest status of each context of one commit."""

    state: str = ""
    sha: str = ""
    total_count: int = 0
    statuses: list[GiteaStatus] | None = None


class GiteaComment(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of a Gitea Comment Conveyor reads."""

    id: int
    body: str = ""


class _Transient(Exception):
    """A failure worth another try; `maybe_applied` when the request may have landed."""

    def __init__(self, error: RemoteError, *, maybe_applied: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.maybe_applied = maybe_applied


# -- the client --------------------------------------------------------------


class GiteaClient:
    """Async client of Gitea's REST API; `full` arguments are `owner/name`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if retries < 0:
            raise InvalidField("retries", "must be >= 0")
        self._timeout_s = timeout_s
        self._retries = retries
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=f"{url.rstrip('/')}/api/v1",
            headers={"Authorization": f"token {token}", "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- repositories and files ---------------------------------------------

    async def get_repo(self, full: str) -> GiteaRepo:
        """The repository `full`; `RemoteError` (404) when it does not exist."""
        op = "get_repo"
        resp = await self._request("GET", _repo(full), op)
        if resp.status_code != 200:
            raise _refused(resp, op)
        return _decode(resp, GiteaRepo, op)

    async def _found(
        self, path: str, op: str, params: dict[str, str] | None = None
    ) -> httpx.Response | None:
        """GET `path`: the 200 answer, None on 404, `RemoteError` on anything else."""
        resp = await self._request("GET", path, op, params=params)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise _refused(resp, op)
        return resp

    async def branch_head(self, full: str, branch: str) -> str | None:
        """Sha of `branch`, or None when it does not exist."""
        op = "branch_head"
        resp = await self._found(f"{_repo(full)}/branches/{_seg(branch)}", op)
        return None if resp is None else _decode(resp, _Branch, op).commit.id

    async def file(self, full: str, ref: str, path: str) -> bytes | None:
        """Raw content of `path` at `ref`, or None when missing."""
        op = "file"
        resp = await self._found(f"{_repo(full)}/raw/{_seg(path)}", op, {"ref": ref})
        return None if resp is None else resp.content

    async def list_dir(self, full: str, ref: str, path: str) -> list[str]:
        """Entry names of directory `path` at `ref`; empty when missing or not a directory."""
        op = "list_dir"
        rel = path.strip("/")
        where = f"{_repo(full)}/contents/{_seg(rel)}" if rel else f"{_repo(full)}/contents"
        resp = await self._found(where, op, {"ref": ref})
        if resp is None:
            return []
        if resp.content.lstrip()[:1] == b"{":
            # A file's metadata, not a listing: `path` is no directory.
            return []
        return sorted(entry.name for entry in _decode(resp, list[_Content], op))

    # -- pull requests ------------------------------------------------------

    async def create_pull(
        self, full: str, head: str, base: str, title: str, body: str
    ) -> GiteaPull:
        """Open a pull request; `RemoteError` 409 when an open one exists for head/base."""
        op = "create_pull"

        async def landed() -> GiteaPull | None:
            found = await self.pull_by_head(full, base, head)
            return found if found is not None and found.state == "open" else None

        outcome = await self._mutate(
            "POST",
            f"{_repo(full)}/pulls",
            op,
            {"head": head, "base": base, "title": title, "body": body},
            landed,
        )
        if isinstance(outcome, GiteaPull):
            return outcome
        if outcome.status_code not in (200, 201):
            raise _refused(outcome, op)
        return _decode(outcome, GiteaPull, op)

    async def pull_by_head(self, full: str, base: str, head: str) -> GiteaPull | None:
        """A pull request of `head` into `base` (any state; Gitea picks one), or None."""
        op = "pull_by_head"
        resp = await self._found(f"{_repo(full)}/pulls/{_seg(base)}/{_seg(head)}", op)
        return None if resp is None else _decode(resp, GiteaPull, op)

    async def pulls_page(self, full: str, state: str, page: int) -> list[GiteaPull]:
        """One page (1-based, `PAGE_LIMIT` long) of pull requests in `state`."""
        op = "list_pulls"
        resp = await self._request(
            "GET",
            f"{_repo(full)}/pulls",
            op,
            params={"state": state, "page": page, "limit": PAGE_LIMIT},
        )
        if resp.status_code != 200:
            raise _refused(resp, op)
        return _decode(resp, list[GiteaPull], op)

    async def list_pulls(self, full: str, state: str = "all") -> list[GiteaPull]:
        """Every pull request in `state` (`open`, `closed` or `all`), page by page."""
        out: list[GiteaPull] = []
        page = 1
        while True:
            batch = await self.pulls_page(full, state, page)
            out.extend(batch)
            if len(batch) < PAGE_LIMIT:
                return out
            page += 1

    async def get_pull(self, full: str, number: int) -> GiteaPull | None:
        """Pull request `number`, or None when it does not exist."""
        op = "get_pull"
        resp = await self._found(f"{_repo(full)}/pulls/{int(number)}", op)
        return None if resp is None else _decode(resp, GiteaPull, op)

    async def merge_pull(
        self, full: str, number: int, head_commit_id: str, style: str = "merge"
    ) -> bool:
        """Merge pull request `number` at `head_commit_id`; False when it was merged before.

        Raises `HeadMismatch` (409 head out of date), `MergeConflict` (other 409) or
        `ForgeError` (404: closed or unknown; 405: not mergeable now).
        """
        op = "merge_pull"

        async def landed() -> GiteaPull | None:
            pull = await self.get_pull(full, number)
            return pull if pull is not None and pull.merged else None

        outcome = await self._mutate(
            "POST",
            f"{_repo(full)}/pulls/{int(number)}/merge",
            op,
            {
                "Do": style,
                "head_commit_id": head_commit_id,
                "MergeTitleField": f"Merge pull request #{int(number)}",
            },
            landed,
        )
        if isinstance(outcome, GiteaPull):
            # The first send landed though its answer was lost: merged by this call.
            return True
        status, message = outcome.status_code, _message(outcome)
        where = f"{full}#{number}"
        if status in (200, 204):
            return True
        if status == 405 and "already merged" in message.lower():
            return False
        if status == 409 and "head out of date" in message.lower():
            raise HeadMismatch(f"{where}: head is no longer {head_commit_id}")
        if status == 409:
            raise MergeConflict(f"{where}: cannot merge: {message}")
        if status == 404:
            raise ForgeError(f"{where} is closed or does not exist")
        if status == 405:
            raise ForgeError(f"{where} cannot be merged now: {message}")
        raise _refused(outcome, op)

    # -- statuses and comments ----------------------------------------------

    async def combined_status(self, full: str, ref: str) -> GiteaCombined:
        """Latest status of each context of `ref`; no statuses when Gitea has none."""
        op = "combined_status"
        statuses: list[GiteaStatus] = []
        first: GiteaCombined | None = None
        page = 1
        while True:
            resp = await self._request(
                "GET",
                f"{_repo(full)}/commits/{_seg(ref)}/status",
                op,
                params={"page": page, "limit": PAGE_LIMIT},
            )
            if resp.status_code == 404:
                return GiteaCombined(sha=ref)
            if resp.status_code != 200:
                raise _refused(resp, op)
            if not resp.content.strip():
                # Older Gitea answers 200 with an empty body when nothing was reported.
                break
            combined = _decode(resp, GiteaCombined, op)
            first = first or combined
            batch = combined.statuses or []
            statuses.extend(batch)
            if len(batch) < PAGE_LIMIT or len(statuses) >= combined.total_count:
                break
            page += 1
        if first is None:
            return GiteaCombined(sha=ref, statuses=[])
        return msgspec.structs.replace(first, statuses=statuses)

    async def create_status(
        self,
        full: str,
        sha: str,
        state: str,
        context: str,
        description: str,
        target_url: str = "",
    ) -> GiteaStatus:
        """Post a commit status; repeating it is harmless, so it is retried."""
        op = "create_status"
        resp = await self._request(
            "POST",
            f"{_repo(full)}/statuses/{_seg(sha)}",
            op,
            body={
                "state": state,
                "context": context,
                "description": description,
                "target_url": target_url,
            },
        )
        if resp.status_code not in (200, 201):
            raise _refused(resp, op)
        return _decode(resp, GiteaStatus, op)

    async def comments(self, full: str, index: int) -> list[GiteaComment]:
        """Every comment of issue or pull request `index`."""
        op = "list_comments"
        resp = await self._request("GET", f"{_repo(full)}/issues/{int(index)}/comments", op)
        if resp.status_code != 200:
            raise _refused(resp, op)
        return _decode(resp, list[GiteaComment], op)

    async def comment(self, full: str, index: int, body: str) -> GiteaComment:
        """Comment on issue or pull request `index` (pull requests are issues)."""
        op = "comment"

        async def landed() -> GiteaComment | None:
            found = [c for c in await self.comments(full, index) if c.body == body]
            return found[-1] if found else None

        outcome = await self._mutate(
            "POST", f"{_repo(full)}/issues/{int(index)}/comments", op, {"body": body}, landed
        )
        if isinstance(outcome, GiteaComment):
            return outcome
        if outcome.status_code not in (200, 201):
            raise _refused(outcome, op)
        return _decode(outcome, GiteaComment, op)

    # -- transport ----------------------------------------------------------

    async def _once(
        self, method: str, path: str, op: str, params: dict[str, Any] | None, body: Any
    ) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, params=params, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            error = RemoteError(
                SERVICE, op, f"cannot connect ({type(err).__name__})", retryable=True
            )
            raise _Transient(error, maybe_applied=False) from err
        except httpx.TimeoutException as err:
            error = RemoteError(
                SERVICE, op, f"no answer within {self._timeout_s:g}s", retryable=True
            )
            raise _Transient(error, maybe_applied=True) from err
        except httpx.TransportError as err:
            error = RemoteError(
                SERVICE, op, f"transport failed ({type(err).__name__})", retryable=True
            )
            raise _Transient(error, maybe_applied=True) from err
        if resp.status_code == 429 or resp.status_code >= 500:
            error = RemoteError(
                SERVICE,
                op,
                f"HTTP {resp.status_code}: {_message(resp)}",
                status=resp.status_code,
                retryable=True,
            )
            # A 429 is refused before any work is done; a 5xx may have done some.
            raise _Transient(error, maybe_applied=resp.status_code != 429)
        return resp

    async def _request(
        self,
        method: str,
        path: str,
        op: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        """Send a call that is safe to repeat; transient failures are retried."""
        attempt = 0
        while True:
            try:
                return await self._once(method, path, op, params, body)
            except _Transient as failure:
                if attempt >= self._retries:
                    raise failure.error from failure
                await self._pause(op, attempt, failure.error)
                attempt += 1

    async def _mutate(
        self,
        method: str,
        path: str,
        op: str,
        body: Any,
        landed: Callable[[], Awaitable[T | None]],
    ) -> httpx.Response | T:
        """Send a call with a one-time effect; after an ambiguous failure ask `landed` first.

        Returns the response, or what `landed` found when an earlier send took effect.
        """
        attempt = 0
        while True:
            try:
                return await self._once(method, path, op, None, body)
            except _Transient as failure:
                if failure.maybe_applied:
                    try:
                        found = await landed()
                    except RemoteError:
                        # Cannot tell whether it landed: only the caller may decide to resend.
                        raise failure.error from failure
                    if found is not None:
                        log.info("gitea.effect_found", op=op, reason=failure.error.reason)
                        return found
                if attempt >= self._retries:
                    raise failure.error from failure
                await self._pause(op, attempt, failure.error)
                attempt += 1

    async def _pause(self, op: str, attempt: int, error: RemoteError) -> None:
        delay = backoff_s(attempt)
        log.warning(
            "gitea.retrying",
            op=op,
            attempt=attempt + 1,
            of=self._retries,
            delay_s=delay,
            status=error.status,
            reason=error.reason,
        )
        await self._sleep(delay)


def _repo(full: str) -> str:
    if not _FULL_NAME_RE.fullmatch(full) or ".." in full:
        raise InvalidField("gitea_repo", f"must be owner/name, got {full!r}")
    return f"/repos/{full}"


def _seg(value: str) -> str:
    """Quote a path tail for a URL; `/` stays, as Gitea routes refs and paths with it."""
    if not value or "\0" in value or ".." in value.split("/"):
        raise InvalidField("path", f"not usable in a URL: {value!r}")
    return quote(value, safe="/")


def _message(resp: httpx.Response) -> str:
    """Gitea's error `message`, or the start of the body when it is not Gitea's JSON."""
    try:
        data = msgspec.json.decode(resp.content)
    except msgspec.DecodeError:
        return resp.text[:200].strip() or "(empty body)"
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return resp.text[:200].strip()


def _refused(resp: httpx.Response, op: str) -> RemoteError:
    return RemoteError(
        SERVICE, op, f"HTTP {resp.status_code}: {_message(resp)}", status=resp.status_code
    )


def _decode(resp: httpx.Response, kind: type[T], op: str) -> T:
    try:
        return msgspec.json.decode(resp.content, type=kind)
    except msgspec.DecodeError as err:
        raise RemoteError(
            SERVICE, op, f"unexpected response body: {err}", status=resp.status_code
        ) from err


# -- the forge -------------------------------------------------------------


class GiteaForge:
    """The `Forge` protocol on a Gitea server; Conveyor repo names map via the config.

    Blocking methods run the async client on `loop` (its own `LoopThread` when none
    is given; `close()` stops that one). `sleep` is the back-off between retries and
    `clock` paces `await_checks`; tests inject both.
    """

    def __init__(
        self,
        cfg: Config,
        loop: LoopThread | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock | None = None,
    ) -> None:
        self._cfg = cfg
        self._own_loop = loop is None
        self._loop = loop if loop is not None else LoopThread(name="gitea-forge")
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._client = GiteaClient(
            cfg.gitea.url,
            cfg.gitea.token,
            timeout_s=cfg.gitea.timeout_s,
            retries=cfg.gitea.retries,
            sleep=sleep,
        )
        self._clone_urls: dict[str, str] = {}
        # Every try may wait its timeout and the longest back-off; a merge does a few calls.
        per_call = (cfg.gitea.retries + 1) * (cfg.gitea.timeout_s + BACKOFF_MAX_S)
        self._call_timeout_s = 4 * per_call + 10.0

    @property
    def client(self) -> GiteaClient:
        """The async client, for callers already on the loop."""
        return self._client

    def close(self) -> None:
        """Close the HTTP pool and stop the loop thread if this forge started it."""
        try:
            self._run(self._client.aclose(), "close")
        except RemoteError as err:
            log.warning("gitea.close_failed", reason=err.reason)
        if self._own_loop:
            self._loop.stop()

    def full_name(self, repo: str) -> str:
        """`owner/name` on Gitea of Conveyor repository `repo`."""
        return self._cfg.gitea_repo(self._cfg.repo(repo))

    # -- repositories -------------------------------------------------------

    def clone_url(self, repo: str) -> str:
        """The repository's `clone_url`; an http(s) one carries the token as credentials.

        git needs the credentials to push, and the URL is all a `Forge` hands out. The
        result is a secret: it ends up in the clone's `.git/config` and must not be logged.
        """
        cached = self._clone_urls.get(repo)
        if cached is not None:
            return cached
        info = self._run(self._client.get_repo(self.full_name(repo)), "get_repo")
        if not info.clone_url:
            raise ForgeError(f"{repo}: Gitea reports no clone_url")
        url = with_token(info.clone_url, self._cfg.gitea.token)
        self._clone_urls[repo] = url
        return url

    def branch_head(self, repo: str, branch: str) -> str | None:
        return self._run(self._client.branch_head(self.full_name(repo), _branch(branch)), "branch")

    def read_file(self, repo: str, ref: str, path: str) -> bytes | None:
        return self._run(self._client.file(self.full_name(repo), _ref(ref), path), "file")

    def list_dir(self, repo: str, ref: str, path: str) -> list[str]:
        return self._run(self._client.list_dir(self.full_name(repo), _ref(ref), path), "list_dir")

    # -- pull requests ------------------------------------------------------

    def find_pull(self, repo: str, branch: str) -> PullRequest | None:
        found = self._run(self._find(self.full_name(repo), validate.branch(branch)), "find_pull")
        return self._pull(repo, found) if found is not None else None

    def open_pull(self, repo: str, branch: str, title: str, body: str) -> PullRequest:
        validate.branch(branch)
        title = validate.title(title)
        body = validate.description(body, "body")
        full = self.full_name(repo)
        pull = self._run(self._open(repo, full, branch, title, body), "open_pull")
        return self._pull(repo, pull)

    def get_pull(self, repo: str, number: int) -> PullRequest:
        pull = self._run(self._client.get_pull(self.full_name(repo), number), "get_pull")
        if pull is None:
            raise ForgeError(f"{repo}#{number} does not exist")
        return self._pull(repo, pull)

    def merge_pull(self, repo: str, number: int, *, expected_head_sha: str) -> PullRequest:
        if not git.is_sha(expected_head_sha):
            raise InvalidField("expected_head_sha", "must be a full hex sha")
        full = self.full_name(repo)
        pull = self._run(self._merge(repo, full, number, expected_head_sha), "merge_pull")
        return self._pull(repo, pull)

    def comment(self, repo: str, number: int, body: str) -> None:
        """Comment on pull request `number`."""
        body = validate.description(body, "body")
        self._run(self._client.comment(self.full_name(repo), number, body), "comment")
        log.info("gitea.commented", repo=repo, number=number)

    # -- statuses and CI ----------------------------------------------------

    def commit_status(self, repo: str, sha: str) -> CommitStatus | None:
        """Worst latest status over the contexts (only `gitea.status_context` when set).

        Gitea's `warning` counts as `success`: Gitea itself treats it as not failing.
        The state is computed from the statuses, not taken from Gitea's combined
        `state`, which ranks warning below pending.
        """
        combined = self._run(
            self._client.combined_status(self.full_name(repo), _sha(sha)), "status"
        )
        wanted = self._cfg.gitea.status_context
        mapped = [
            _status(sha, s) for s in combined.statuses or [] if not wanted or s.context == wanted
        ]
        if not mapped:
            return None
        return min(mapped, key=lambda s: (_STATE_RANK[s.state], -s.updated_at))

    def set_status(self, repo: str, sha: str, state: str, context: str, description: str) -> None:
        if state not in _STATE_RANK:
            raise InvalidField("state", f"must be one of {', '.join(_STATE_RANK)}")
        full = self.full_name(repo)
        self._run(
            self._client.create_status(full, _sha(sha), state, context, description), "set_status"
        )
        log.info("gitea.status_set", repo=repo, sha=sha, state=state, context=context)

    def on_push(self, repo: str, branch: str, sha: str) -> None:
        """Nothing to do: Gitea's own CI reacts to the push."""

    def await_checks(self, repo: str, branch: str, sha: str) -> CommitStatus | None:
        """Poll the combined status every `gitea.ci_poll_s` until it is final.

        No status yet counts as pending (CI may not have picked the push up), and a
        poll that fails transiently is skipped; after `forge.check_timeout_s` the last
        status seen is returned, None if there was none.
        """
        _branch(branch)
        deadline = self._clock.monotonic() + self._cfg.forge.check_timeout_s
        status: CommitStatus | None = None
        while True:
            try:
                status = self.commit_status(repo, sha)
            except RemoteError as err:
                if not err.retryable:
                    raise
                log.warning("gitea.poll_failed", repo=repo, sha=sha, reason=err.reason)
            if status is not None and status.state != "pending":
                return status
            if self._clock.monotonic() >= deadline:
                log.info(
                    "gitea.checks_timed_out",
                    repo=repo,
                    sha=sha,
                    state=status.state if status else None,
                )
                return status
            self._clock.sleep(self._cfg.gitea.ci_poll_s)

    # -- internals ----------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], op: str) -> T:
        try:
            return self._loop.call(coro, self._call_timeout_s)
        except BusUnavailable as err:
            raise RemoteError(SERVICE, op, str(err), retryable=True) from err

    async def _find(self, full: str, branch: str) -> GiteaPull | None:
        """The newest pull request of `branch` into main, in any state."""
        candidate = await self._client.pull_by_head(full, MAIN, branch)
        if candidate is not None and candidate.state == "open":
            # Gitea allows one open pull request per head and base: the newest one.
            return candidate
        best = candidate
        page = 1
        while True:
            batch = await self._client.pulls_page(full, "all", page)
            for pull in batch:
                mine = pull.head.ref == branch and pull.base.ref == MAIN
                if mine and (best is None or pull.number > best.number):
                    best = pull
            # Gitea lists newest first; a page of older numbers cannot hold a newer one.
            older = best is not None and all(p.number < best.number for p in batch)
            if len(batch) < PAGE_LIMIT or older:
                return best
            page += 1

    async def _open(self, repo: str, full: str, branch: str, title: str, body: str) -> GiteaPull:
        head = await self._client.branch_head(full, branch)
        if head is None:
            raise ForgeError(f"{repo}: branch {branch} does not exist")
        existing = await self._find(full, branch)
        # A merged pull request stands for the head it merged; later commits need a new one.
        if existing is not None and (
            existing.state == "open" or (existing.merged and existing.head.sha == head)
        ):
            return existing
        try:
            pull = await self._client.create_pull(full, branch, MAIN, title, body)
        except RemoteError as err:
            if err.status == 409:
                found = await self._find(full, branch)
                if found is not None and found.state == "open":
                    return found
            if err.status == 422:
                raise ForgeError(f"{repo}: Gitea refused the pull request: {err.reason}") from err
            raise
        log.info("gitea.pr_opened", repo=repo, number=pull.number, branch=branch)
        return pull

    async def _merge(self, repo: str, full: str, number: int, expected: str) -> GiteaPull:
        pull = await self._client.get_pull(full, number)
        if pull is None:
            raise ForgeError(f"{repo}#{number} does not exist")
        if pull.merged:
            log.info("gitea.merge_skipped", repo=repo, number=number, reason="already merged")
            return pull
        if pull.state != "open":
            raise ForgeError(f"{repo}#{number} is closed without a merge")
        merged_now = await self._client.merge_pull(full, number, expected)
        after = await self._client.get_pull(full, number)
        if after is None or not after.merged:
            raise ForgeError(f"{repo}#{number}: Gitea accepted the merge but reports it unmerged")
        if merged_now:
            log.info("gitea.pr_merged", repo=repo, number=number, sha=after.merge_commit_sha)
        else:
            log.info("gitea.merge_skipped", repo=repo, number=number, reason="already merged")
        return after

    def _pull(self, repo: str, pull: GiteaPull) -> PullRequest:
        return PullRequest(
            number=pull.number,
            repo=repo,
            head=pull.head.ref,
            base=pull.base.ref,
            title=pull.title,
            body=pull.body or "",
            state=pull.state,
            merged=pull.merged,
            head_sha=pull.head.sha,
            merge_commit=pull.merge_commit_sha or None,
            created_at=epoch(pull.created_at) or 0.0,
            merged_at=epoch(pull.merged_at),
        )


def with_token(url: str, token: str) -> str:
    """`url` with `token` as its credentials when it is http(s); other URLs unchanged.

    Gitea takes a token as the basic-auth user name when the password is empty or
    `x-oauth-basic`, so no account name is needed.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not token:
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(token, safe='')}:x-oauth-basic@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def epoch(text: str | None) -> float | None:
    """Epoch seconds of a Gitea timestamp (RFC 3339); None when absent or unparsable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _status(sha: str, status: GiteaStatus) -> CommitStatus:
    state = "success" if status.status == "warning" else status.status
    if state not in _STATE_RANK:
        # An unknown state must not pass a gate.
        state = "error"
    return CommitStatus(
        sha=sha,
        state=state,
        context=status.context,
        description=status.description or "",
        updated_at=epoch(status.updated_at) or epoch(status.created_at) or 0.0,
    )


def _branch(value: str) -> str:
    if value == MAIN:
        return value
    return validate.branch(value)


def _ref(value: str) -> str:
    if git.is_sha(value):
        return value
    return _branch(value)


def _sha(value: str) -> str:
    if not isinstance(value, str) or not git.is_sha(value):
        raise InvalidField("sha", "must be a full lower-case hex sha")
    return value


if TYPE_CHECKING:

    def _is_a_forge(forge: GiteaForge) -> Forge:
        """Let mypy prove that `GiteaForge` implements every method of `Forge`."""
        return forge
