"""Gitea's REST API (`/api/v1`): wire shapes and a blocking client over `gateways.http`.

Calls that are safe to repeat (every GET, and status posts, whose latest-per-context
result is the same however often they land) are retried on timeouts, connection
errors, 5xx and 429. Calls with a one-time effect (open a pull request, merge,
comment) go through `Http.write`: after an ambiguous failure the client first reads
back whether the effect landed, and sends the call again only when it did not.
"""

from __future__ import annotations

import re
from typing import TypeVar
from urllib.parse import quote

import httpx
import msgspec

from conveyor.errors import ForgeError, HeadMismatch, InvalidField, MergeConflict, RemoteError
from gateways.forge import MAIN
from gateways.http import Http, HttpOptions

SERVICE = "gitea"
"""`RemoteError.service` of every failure raised here."""

PAGE_LIMIT = 50
"""Items per page when listing; Gitea's default maximum page size."""

T = TypeVar("T")

_FULL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


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


# -- the client --------------------------------------------------------------


class GiteaClient:
    """Blocking client of Gitea's REST API; `full` arguments are `owner/name`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        options: HttpOptions | None = None,
    ) -> None:
        self._http = Http(
            SERVICE,
            f"{url.rstrip('/')}/api/v1",
            headers={"Authorization": f"token {token}", "Accept": "application/json"},
            timeout_s=timeout_s,
            retries=retries,
            describe=_status_message,
            options=options,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- repositories and files ---------------------------------------------

    def get_repo(self, full: str) -> GiteaRepo:
        """The repository `full`; `RemoteError` (404) when it does not exist."""
        op = "get_repo"
        resp = self._http.request("GET", _repo(full), op)
        if resp.status_code != 200:
            raise _refused(resp, op)
        return _decode(resp, GiteaRepo, op)

    def _found(
        self, path: str, op: str, params: dict[str, str] | None = None
    ) -> httpx.Response | None:
        """GET `path`: the 200 answer, None on 404, `RemoteError` on anything else."""
        resp = self._http.request("GET", path, op, params=params)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise _refused(resp, op)
        return resp

    def branch_head(self, full: str, branch: str) -> str | None:
        """Sha of `branch`, or None when it does not exist."""
        op = "branch_head"
        resp = self._found(f"{_repo(full)}/branches/{_seg(branch)}", op)
        return None if resp is None else _decode(resp, _Branch, op).commit.id

    def delete_branch(self, full: str, branch: str) -> bool:
        """Delete `branch`; False when it does not exist (a retried delete that landed)."""
        op = "delete_branch"
        resp = self._http.request("DELETE", f"{_repo(full)}/branches/{_seg(branch)}", op)
        if resp.status_code == 404:
            return False
        if resp.status_code not in (200, 204):
            raise _refused(resp, op)
        return True

    def file(self, full: str, ref: str, path: str) -> bytes | None:
        """Raw content of `path` at `ref`, or None when missing."""
        op = "file"
        resp = self._found(f"{_repo(full)}/raw/{_seg(path)}", op, {"ref": ref})
        return None if resp is None else resp.content

    def list_dir(self, full: str, ref: str, path: str) -> list[str]:
        """Entry names of directory `path` at `ref`; empty when missing or not a directory."""
        op = "list_dir"
        rel = path.strip("/")
        where = f"{_repo(full)}/contents/{_seg(rel)}" if rel else f"{_repo(full)}/contents"
        resp = self._found(where, op, {"ref": ref})
        if resp is None:
            return []
        if resp.content.lstrip()[:1] == b"{":
            # A file's metadata, not a listing: `path` is no directory.
            return []
        return sorted(entry.name for entry in _decode(resp, list[_Content], op))

    # -- pull requests ------------------------------------------------------

    def create_pull(self, full: str, head: str, base: str, title: str, body: str) -> GiteaPull:
        """Open a pull request; `RemoteError` 409 when an open one exists for head/base."""
        op = "create_pull"

        def landed() -> GiteaPull | None:
            found = self.pull_by_head(full, base, head)
            return found if found is not None and found.state == "open" else None

        outcome = self._http.write(
            "POST",
            f"{_repo(full)}/pulls",
            op,
            landed,
            json={"head": head, "base": base, "title": title, "body": body},
        )
        if isinstance(outcome, GiteaPull):
            return outcome
        if outcome.status_code not in (200, 201):
            raise _refused(outcome, op)
        return _decode(outcome, GiteaPull, op)

    def pull_by_head(self, full: str, base: str, head: str) -> GiteaPull | None:
        """A pull request of `head` into `base` (any state; Gitea picks one), or None."""
        op = "pull_by_head"
        resp = self._found(f"{_repo(full)}/pulls/{_seg(base)}/{_seg(head)}", op)
        return None if resp is None else _decode(resp, GiteaPull, op)

    def pulls_page(self, full: str, state: str, page: int) -> list[GiteaPull]:
        """One page (1-based, `PAGE_LIMIT` long) of pull requests in `state`."""
        op = "list_pulls"
        resp = self._http.request(
            "GET",
            f"{_repo(full)}/pulls",
            op,
            params={"state": state, "page": page, "limit": PAGE_LIMIT},
        )
        if resp.status_code != 200:
            raise _refused(resp, op)
        return _decode(resp, list[GiteaPull], op)

    def list_pulls(self, full: str, state: str = "all") -> list[GiteaPull]:
        """Every pull request in `state` (`open`, `closed` or `all`), page by page."""
        out: list[GiteaPull] = []
        page = 1
        while True:
            batch = self.pulls_page(full, state, page)
            out.extend(batch)
            if len(batch) < PAGE_LIMIT:
                return out
            page += 1

    def get_pull(self, full: str, number: int) -> GiteaPull | None:
        """Pull request `number`, or None when it does not exist."""
        op = "get_pull"
        resp = self._found(f"{_repo(full)}/pulls/{int(number)}", op)
        return None if resp is None else _decode(resp, GiteaPull, op)

    def merge_pull(self, full: str, number: int, head_commit_id: str, style: str = "merge") -> bool:
        """Merge pull request `number` at `head_commit_id`; False when it was merged before.

        Raises `HeadMismatch` (409 head out of date), `MergeConflict` (other 409) or
        `ForgeError` (404: closed or unknown; 405: not mergeable now).
        """
        op = "merge_pull"

        def landed() -> GiteaPull | None:
            pull = self.get_pull(full, number)
            return pull if pull is not None and pull.merged else None

        outcome = self._http.write(
            "POST",
            f"{_repo(full)}/pulls/{int(number)}/merge",
            op,
            landed,
            json={
                "Do": style,
                "head_commit_id": head_commit_id,
                "MergeTitleField": f"Merge pull request #{int(number)}",
            },
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

    def combined_status(self, full: str, ref: str) -> GiteaCombined:
        """Latest status of each context of `ref`; no statuses when Gitea has none."""
        op = "combined_status"
        statuses: list[GiteaStatus] = []
        first: GiteaCombined | None = None
        page = 1
        while True:
            resp = self._http.request(
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

    def create_status(
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
        resp = self._http.request(
            "POST",
            f"{_repo(full)}/statuses/{_seg(sha)}",
            op,
            json={
                "state": state,
                "context": context,
                "description": description,
                "target_url": target_url,
            },
        )
        if resp.status_code not in (200, 201):
            raise _refused(resp, op)
        return _decode(resp, GiteaStatus, op)

    def comments(self, full: str, index: int) -> list[GiteaComment]:
        """Every comment of issue or pull request `index`."""
        op = "list_comments"
        resp = self._http.request("GET", f"{_repo(full)}/issues/{int(index)}/comments", op)
        if resp.status_code != 200:
            raise _refused(resp, op)
        return _decode(resp, list[GiteaComment], op)

    def comment(self, full: str, index: int, body: str) -> GiteaComment:
        """Comment on issue or pull request `index` (pull requests are issues)."""
        op = "comment"

        def landed() -> GiteaComment | None:
            found = [c for c in self.comments(full, index) if c.body == body]
            return found[-1] if found else None

        outcome = self._http.write(
            "POST", f"{_repo(full)}/issues/{int(index)}/comments", op, landed, json={"body": body}
        )
        if isinstance(outcome, GiteaComment):
            return outcome
        if outcome.status_code not in (200, 201):
            raise _refused(outcome, op)
        return _decode(outcome, GiteaComment, op)


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


def _status_message(resp: httpx.Response) -> str:
    return f"HTTP {resp.status_code}: {_message(resp)}"


def _refused(resp: httpx.Response, op: str) -> RemoteError:
    return RemoteError(SERVICE, op, _status_message(resp), status=resp.status_code)


def _decode(resp: httpx.Response, kind: type[T], op: str) -> T:
    try:
        return msgspec.json.decode(resp.content, type=kind)
    except msgspec.DecodeError as err:
        raise RemoteError(
            SERVICE, op, f"unexpected response body: {err}", status=resp.status_code
        ) from err
