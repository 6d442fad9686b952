"""Gitea as the forge: the blocking `Forge` of `gateways.forge` over `GiteaClient`.

Actors and job threads call it directly; the REST calls, their retries and the
read-back of ambiguous writes live in `gateways.gitea_api`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from conveyor import validate
from conveyor.clock import Clock, SystemClock
from conveyor.config import Config
from conveyor.errors import ForgeError, HeadMismatch, InvalidField, RemoteError
from conveyor.logs import get_logger
from gateways import git
from gateways.forge import (
    MAIN,
    STATE_RANK,
    CommitStatus,
    Forge,
    PullRequest,
    branch_or_main,
    full_sha,
)
from gateways.gitea_api import PAGE_LIMIT, GiteaClient, GiteaPull, GiteaStatus
from gateways.http import HttpOptions

log = get_logger(__name__)


class GiteaForge:
    """The `Forge` protocol on a Gitea server; Conveyor repo names map via the config.

    `clock` paces `await_checks` and, unless `http` names another, the HTTP
    client's back-off; tests inject both.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Clock | None = None,
        http: HttpOptions | None = None,
    ) -> None:
        self._cfg = cfg
        self._clock: Clock = clock if clock is not None else SystemClock()
        options = http or HttpOptions()
        if options.clock is None:
            options = replace(options, clock=self._clock)
        self._client = GiteaClient(
            cfg.gitea.url,
            cfg.gitea.token,
            timeout_s=cfg.gitea.timeout_s,
            retries=cfg.gitea.retries,
            options=options,
        )
        self._clone_urls: dict[str, str] = {}

    @property
    def client(self) -> GiteaClient:
        """The REST client underneath."""
        return self._client

    def close(self) -> None:
        """Close the HTTP pool."""
        self._client.close()

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
        info = self._client.get_repo(self.full_name(repo))
        if not info.clone_url:
            raise ForgeError(f"{repo}: Gitea reports no clone_url")
        url = with_token(info.clone_url, self._cfg.gitea.token)
        self._clone_urls[repo] = url
        return url

    def branch_head(self, repo: str, branch: str) -> str | None:
        return self._client.branch_head(self.full_name(repo), branch_or_main(branch))

    def delete_branch(self, repo: str, branch: str, *, expected_sha: str) -> bool:
        if branch_or_main(branch) == MAIN:
            raise InvalidField("branch", f"{MAIN} is never deleted")
        full = self.full_name(repo)
        head = self._client.branch_head(full, branch)
        if head is None:
            return False
        if head != expected_sha:
            raise HeadMismatch(f"{repo}: {branch} is at {head}, expected {expected_sha}")
        # Gitea's delete takes no expected head: a push between the read and the delete
        # would go with the branch. A done task's branch has nobody left pushing to it.
        deleted = self._client.delete_branch(full, branch)
        log.info("gitea.branch_deleted", repo=repo, branch=branch, sha=head)
        return deleted

    def read_file(self, repo: str, ref: str, path: str) -> bytes | None:
        return self._client.file(self.full_name(repo), _ref(ref), path)

    def list_dir(self, repo: str, ref: str, path: str) -> list[str]:
        return self._client.list_dir(self.full_name(repo), _ref(ref), path)

    # -- pull requests ------------------------------------------------------

    def find_pull(self, repo: str, branch: str) -> PullRequest | None:
        found = self._find(self.full_name(repo), validate.branch(branch))
        return self._pull(repo, found) if found is not None else None

    def open_pull(self, repo: str, branch: str, title: str, body: str) -> PullRequest:
        validate.branch(branch)
        title = validate.title(title)
        body = validate.description(body, "body")
        full = self.full_name(repo)
        pull = self._open(repo, full, branch, title, body)
        return self._pull(repo, pull)

    def get_pull(self, repo: str, number: int) -> PullRequest:
        pull = self._client.get_pull(self.full_name(repo), number)
        if pull is None:
            raise ForgeError(f"{repo}#{number} does not exist")
        return self._pull(repo, pull)

    def merge_pull(self, repo: str, number: int, *, expected_head_sha: str) -> PullRequest:
        if not git.is_sha(expected_head_sha):
            raise InvalidField("expected_head_sha", "must be a full hex sha")
        full = self.full_name(repo)
        pull = self._merge(repo, full, number, expected_head_sha)
        return self._pull(repo, pull)

    def comment(self, repo: str, number: int, body: str) -> None:
        """Comment on pull request `number`."""
        body = validate.description(body, "body")
        self._client.comment(self.full_name(repo), number, body)
        log.info("gitea.commented", repo=repo, number=number)

    # -- statuses and CI ----------------------------------------------------

    def commit_status(self, repo: str, sha: str) -> CommitStatus | None:
        """Worst latest status over the contexts (only `gitea.status_context` when set).

        Gitea's `warning` counts as `success`: Gitea itself treats it as not failing.
        The state is computed from the statuses, not taken from Gitea's combined
        `state`, which ranks warning below pending.
        """
        combined = self._client.combined_status(self.full_name(repo), full_sha(sha))
        wanted = self._cfg.gitea.status_context
        mapped = [
            _status(sha, s) for s in combined.statuses or [] if not wanted or s.context == wanted
        ]
        if not mapped:
            return None
        return min(mapped, key=lambda s: (STATE_RANK[s.state], -s.updated_at))

    def check_log(self, repo: str, sha: str) -> str:
        # Gitea's API gives a status a description and a target URL, not the log of the
        # job behind it; the brief carries those two (the status holds them).
        return ""

    def set_status(self, repo: str, sha: str, state: str, context: str, description: str) -> None:
        if state not in STATE_RANK:
            raise InvalidField("state", f"must be one of {', '.join(STATE_RANK)}")
        full = self.full_name(repo)
        self._client.create_status(full, full_sha(sha), state, context, description)
        log.info("gitea.status_set", repo=repo, sha=sha, state=state, context=context)

    def on_push(self, repo: str, branch: str, sha: str) -> None:
        """Nothing to do: Gitea's own CI reacts to the push."""

    def await_checks(self, repo: str, branch: str, sha: str) -> CommitStatus | None:
        """Poll the combined status every `gitea.ci_poll_s` until it is final.

        No status yet counts as pending (CI may not have picked the push up), and a
        poll that fails transiently is skipped; after `forge.check_timeout_s` the last
        status seen is returned, None if there was none.
        """
        branch_or_main(branch)
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

    def _find(self, full: str, branch: str) -> GiteaPull | None:
        """The newest pull request of `branch` into main, in any state."""
        candidate = self._client.pull_by_head(full, MAIN, branch)
        if candidate is not None and candidate.state == "open":
            # Gitea allows one open pull request per head and base: the newest one.
            return candidate
        best = candidate
        page = 1
        while True:
            batch = self._client.pulls_page(full, "all", page)
            for pull in batch:
                mine = pull.head.ref == branch and pull.base.ref == MAIN
                if mine and (best is None or pull.number > best.number):
                    best = pull
            # Gitea lists newest first; a page of older numbers cannot hold a newer one.
            older = best is not None and all(p.number < best.number for p in batch)
            if len(batch) < PAGE_LIMIT or older:
                return best
            page += 1

    def _open(self, repo: str, full: str, branch: str, title: str, body: str) -> GiteaPull:
        head = self._client.branch_head(full, branch)
        if head is None:
            raise ForgeError(f"{repo}: branch {branch} does not exist")
        existing = self._find(full, branch)
        # A merged pull request stands for the head it merged; later commits need a new one.
        if existing is not None and (
            existing.state == "open" or (existing.merged and existing.head.sha == head)
        ):
            return existing
        try:
            pull = self._client.create_pull(full, branch, MAIN, title, body)
        except RemoteError as err:
            if err.status == 409:
                found = self._find(full, branch)
                if found is not None and found.state == "open":
                    return found
            if err.status == 422:
                raise ForgeError(f"{repo}: Gitea refused the pull request: {err.reason}") from err
            raise
        log.info("gitea.pr_opened", repo=repo, number=pull.number, branch=branch)
        return pull

    def _merge(self, repo: str, full: str, number: int, expected: str) -> GiteaPull:
        pull = self._client.get_pull(full, number)
        if pull is None:
            raise ForgeError(f"{repo}#{number} does not exist")
        if pull.merged:
            log.info("gitea.merge_skipped", repo=repo, number=number, reason="already merged")
            return pull
        if pull.state != "open":
            raise ForgeError(f"{repo}#{number} is closed without a merge")
        merged_now = self._client.merge_pull(full, number, expected)
        after = self._client.get_pull(full, number)
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
    if state not in STATE_RANK:
        # An unknown state must not pass a gate.
        state = "error"
    return CommitStatus(
        sha=sha,
        state=state,
        context=status.context,
        description=status.description or "",
        updated_at=epoch(status.updated_at) or epoch(status.created_at) or 0.0,
        target_url=status.target_url or "",
    )


def _ref(value: str) -> str:
    if git.is_sha(value):
        return value
    return branch_or_main(value)


if TYPE_CHECKING:

    def _is_a_forge(forge: GiteaForge) -> Forge:
        """Let mypy prove that `GiteaForge` implements every method of `Forge`."""
        return forge
