"""The local forge reached over HTTP: the `Forge` a process uses when `forge.url` is set.

A launcher (or a control process) on another host than the forge keeps its own
data directory: it clones and pushes through `clone_url` (git smart HTTP, the
token as the URL's basic-auth password, as git sends it after a 401) and asks
the forge's owner for everything else (`gateways.local_forge_api`). The owner
keeps the race-free properties of `LocalForge`: CI in a `--shared` clone of its
own, merges with `git merge-tree --write-tree` and a compare-and-swap of main.

Every call may be repeated (the API's writes are idempotent at the forge), so
transient failures are retried by `gateways.http.Http`; what is still failing
afterwards, or refused, is a `ForgeError` (`HeadMismatch`, `MergeConflict` by kind).
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from conveyor import validate
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ForgeError, InvalidField, RemoteError
from gateways.forge import CommitStatus, PullRequest
from gateways.http import Http, HttpOptions
from gateways.local_forge_api import (
    API_PREFIX,
    CHECK_WAIT_S,
    ERRORS,
    GIT_PREFIX,
    Checks,
    ForgeCall,
)

TIMEOUT_S = CHECK_WAIT_S + 10.0
"""One call's ceiling: above the longest a `checks` call waits on the server."""
RETRIES = 3
CHECK_GRACE_S = 30.0
"""Waited beyond `forge.check_timeout_s` for a check (the forge's own timeout ends it)."""
GIT_USER = "conveyor"
"""The basic-auth user name of clone URLs (the forge reads only the password)."""


class ForgeClient:
    """The `Forge` interface over the local forge's HTTP server at `url`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        check_timeout_s: float = 600.0,
        check_wait_s: float = CHECK_WAIT_S,
        clock: Clock | None = None,
        options: HttpOptions | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidField("forge.url", "must be http(s)://host[:port]")
        self._base = url.rstrip("/")
        self._token = token
        self._check_timeout_s = check_timeout_s
        self._check_wait_s = check_wait_s
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._http = Http(
            "forge",
            self._base,
            timeout_s=TIMEOUT_S,
            retries=RETRIES,
            headers={"Authorization": f"Bearer {token}"} if token else None,
            options=options,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def clone_url(self, repo: str) -> str:
        parts = urlsplit(f"{self._base}{GIT_PREFIX}{validate.repo_name(repo)}.git")
        if not self._token:
            return parts.geturl()
        netloc = f"{GIT_USER}:{quote(self._token, safe='')}@{parts.netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def branch_head(self, repo: str, branch: str) -> str | None:
        return cast("str | None", self._call("branch_head", str | None, repo=repo, branch=branch))

    def delete_branch(self, repo: str, branch: str, *, expected_sha: str) -> bool:
        deleted = self._call(
            "delete_branch", bool, repo=repo, branch=branch, expected_head_sha=expected_sha
        )
        return cast("bool", deleted)

    def read_file(self, repo: str, ref: str, path: str) -> bytes | None:
        return cast(
            "bytes | None", self._call("read_file", bytes | None, repo=repo, ref=ref, path=path)
        )

    def list_dir(self, repo: str, ref: str, path: str) -> list[str]:
        return cast("list[str]", self._call("list_dir", list[str], repo=repo, ref=ref, path=path))

    def find_pull(self, repo: str, branch: str) -> PullRequest | None:
        return cast(
            "PullRequest | None",
            self._call("find_pull", PullRequest | None, repo=repo, branch=branch),
        )

    def open_pull(self, repo: str, branch: str, title: str, body: str) -> PullRequest:
        return cast(
            "PullRequest",
            self._call("open_pull", PullRequest, repo=repo, branch=branch, title=title, body=body),
        )

    def get_pull(self, repo: str, number: int) -> PullRequest:
        return cast("PullRequest", self._call("get_pull", PullRequest, repo=repo, number=number))

    def merge_pull(self, repo: str, number: int, *, expected_head_sha: str) -> PullRequest:
        return cast(
            "PullRequest",
            self._call(
                "merge_pull",
                PullRequest,
                repo=repo,
                number=number,
                expected_head_sha=expected_head_sha,
            ),
        )

    def commit_status(self, repo: str, sha: str) -> CommitStatus | None:
        return cast(
            "CommitStatus | None",
            self._call("commit_status", CommitStatus | None, repo=repo, sha=sha),
        )

    def set_status(self, repo: str, sha: str, state: str, context: str, description: str) -> None:
        self._call(
            "set_status",
            type(None),
            repo=repo,
            sha=sha,
            state=state,
            context=context,
            description=description,
        )

    def check_log(self, repo: str, sha: str) -> str:
        return cast("str", self._call("check_log", str, repo=repo, sha=sha))

    def on_push(self, repo: str, branch: str, sha: str) -> None:
        self.await_checks(repo, branch, sha)

    def await_checks(self, repo: str, branch: str, sha: str) -> CommitStatus | None:
        """Run the check on the forge (or join the one running) and wait for its end.

        Each call waits on the server up to `CHECK_WAIT_S`; the first starts the check,
        the next ones only wait, unless the check died with the forge's process (its
        status left pending), which the forge then runs again.
        """
        deadline = self._clock.monotonic() + self._check_timeout_s + CHECK_GRACE_S
        start = True
        while True:
            checks = cast(
                Checks,
                self._call(
                    "checks",
                    Checks,
                    repo=repo,
                    branch=branch,
                    sha=sha,
                    start=start,
                    wait_s=self._check_wait_s,
                ),
            )
            if not checks.running or self._clock.monotonic() >= deadline:
                return checks.status
            start = False

    def _call(self, op: str, result_type: Any, **fields: Any) -> Any:
        body = msgspec.to_builtins(ForgeCall(**fields))
        try:
            response = self._http.request("POST", f"{API_PREFIX}{op}", op, json=body)
        except RemoteError as err:
            raise ForgeError(f"local forge at {self._base}: {err.reason}") from None
        try:
            data = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            data = None
        if not isinstance(data, dict):
            raise ForgeError(f"forge {op}: HTTP {response.status_code} without a JSON answer")
        if response.status_code == 401:
            raise ForgeError(f"forge {op}: refused (forge.token does not match the forge's)")
        if response.status_code == 400:
            raise InvalidField(op, str(data.get("message", "invalid")))
        if response.status_code != 200:
            cls = ERRORS.get(str(data.get("error")), ForgeError)
            raise cls(str(data.get("message") or f"forge {op}: HTTP {response.status_code}"))
        try:
            return msgspec.convert(data.get("result"), result_type)
        except msgspec.ValidationError as err:
            raise ForgeError(f"forge {op}: unexpected answer: {err}") from None
