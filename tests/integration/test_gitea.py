"""GiteaForge against the fake Gitea over real HTTP: no mocks, real git underneath."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from conveyor import config as config_mod
from conveyor.clock import FakeClock
from conveyor.config import Config
from conveyor.errors import ForgeError, GitError, HeadMismatch, MergeConflict, RemoteError
from gateways.gitea import GiteaForge, with_token
from gateways.gitea_api import GiteaClient
from gateways.http import HttpOptions, no_jitter
from tests.fakes.gitea import FakeGitea
from tests.harness import wait_until

TOKEN = "s3cret-token"
FULL = "acme/widgets"
REPO = "widgets"
BRANCH = "feature/WID-1-retry"
SECRET = "hook-secret"
PASS = [sys.executable, "-c", "pass"]
FAIL = [sys.executable, "-c", "raise SystemExit(3)"]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "integrations"


class Sleeps:
    """The client's back-off, recorded instead of slept."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make_cfg(fake: FakeGitea, tmp_path: Path, **gitea: Any) -> Config:
    return config_mod.load(
        env={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "forge": {"kind": "gitea", "check_timeout_s": 20.0},
            "gitea": {
                "url": fake.url,
                "token": TOKEN,
                "owner": "acme",
                "timeout_s": 5.0,
                "retries": 2,
                "ci_poll_s": 0.05,
                **gitea,
            },
            "repos": [{"name": REPO, "prefix": "WID"}],
        },
    )


def start_fake(tmp_path: Path, **kwargs: Any) -> FakeGitea:
    fake = FakeGitea(tmp_path / "gitea", TOKEN, **kwargs).start()
    fake.create_repo(FULL, {"README.md": "widgets\n", "docs/adr/0001-use-git.md": "# ADR\n"})
    return fake


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeGitea]:
    server = start_fake(tmp_path, check_command=PASS)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def forge(fake: FakeGitea, tmp_path: Path, sleeps: Sleeps) -> Iterator[GiteaForge]:
    gitea = GiteaForge(make_cfg(fake, tmp_path), http=HttpOptions(sleep=sleeps, jitter=no_jitter))
    try:
        yield gitea
    finally:
        gitea.close()


def open_branch(fake: FakeGitea, branch: str = BRANCH, files: dict[str, str] | None = None) -> str:
    return fake.push_branch(FULL, branch, files or {"src/retry.py": "RETRIES = 3\n"})


# -- reading ---------------------------------------------------------------


def test_reads_branches_files_and_directories_through_the_api(
    fake: FakeGitea, forge: GiteaForge
) -> None:
    sha = open_branch(fake)

    assert forge.branch_head(REPO, BRANCH) == sha
    assert forge.branch_head(REPO, "feature/WID-9-missing") is None
    assert forge.read_file(REPO, sha, "src/retry.py") == b"RETRIES = 3\n"
    assert forge.read_file(REPO, "main", "src/retry.py") is None
    assert forge.list_dir(REPO, BRANCH, "") == ["README.md", "docs", "src"]
    assert forge.list_dir(REPO, sha, "docs/adr") == ["0001-use-git.md"]
    assert forge.list_dir(REPO, sha, "nowhere") == []
    assert forge.list_dir(REPO, sha, "README.md") == []


def test_clone_url_is_the_reported_one_and_http_urls_carry_the_token(
    fake: FakeGitea, forge: GiteaForge
) -> None:
    assert forge.clone_url(REPO) == str(fake.root / "acme" / "widgets.git")
    assert (
        with_token("https://git.example.test/acme/widgets.git", "t/k")
        == "https://t%2Fk:x-oauth-basic@git.example.test/acme/widgets.git"
    )
    assert with_token("git@git.example.test:acme/widgets.git", "tk") == (
        "git@git.example.test:acme/widgets.git"
    )


def test_git_errors_never_show_the_token_of_a_clone_url() -> None:
    url = with_token("https://git.example.test/acme/widgets.git", TOKEN)
    err = GitError(["clone", "--", url, "/tmp/x"], 128, f"fatal: cannot access '{url}'")

    assert TOKEN not in str(err)
    assert TOKEN not in " ".join(err.args_list)
    assert "https://***@git.example.test/acme/widgets.git" in str(err)


# -- pull requests -----------------------------------------------------------


def test_open_pull_twice_opens_one_pull_request(fake: FakeGitea, forge: GiteaForge) -> None:
    sha = open_branch(fake)

    first = forge.open_pull(REPO, BRANCH, "WID-1: retry", "Work item WID-1")
    second = forge.open_pull(REPO, BRANCH, "WID-1: retry", "Work item WID-1")

    assert first.number == second.number
    assert len(fake.effects_of("pr_opened")) == 1
    found = forge.find_pull(REPO, BRANCH)
    assert found is not None
    assert (found.number, found.repo, found.head, found.base) == (
        first.number,
        REPO,
        BRANCH,
        "main",
    )
    assert (found.state, found.merged, found.head_sha) == ("open", False, sha)
    assert found.title == "WID-1: retry"
    assert found.created_at > 0
    assert forge.get_pull(REPO, first.number) == found
    assert forge.find_pull(REPO, "feature/WID-2-other") is None
    with pytest.raises(ForgeError):
        forge.get_pull(REPO, 999)


def test_open_pull_whose_answer_was_lost_is_found_not_opened_twice(
    fake: FakeGitea, forge: GiteaForge
) -> None:
    # Given Gitea creates the pull request but the answer is a 502
    open_branch(fake)
    fake.fail_next("POST", f"/repos/{FULL}/pulls", 502, after=True)

    # When Conveyor opens it
    pull = forge.open_pull(REPO, BRANCH, "WID-1: retry", "")

    # Then it reads the pull request back instead of posting again
    assert pull.state == "open"
    assert len(fake.effects_of("pr_opened")) == 1
    assert fake.requests.count(("POST", f"/repos/{FULL}/pulls")) == 1


def test_open_pull_of_a_missing_branch_is_a_forge_error(forge: GiteaForge) -> None:
    with pytest.raises(ForgeError, match="does not exist"):
        forge.open_pull(REPO, "feature/WID-3-nothing", "WID-3: nothing", "")


def test_find_pull_returns_the_newest_pull_request_after_a_rework(
    fake: FakeGitea, forge: GiteaForge
) -> None:
    # Given a merged pull request, then more commits on the same branch
    sha = open_branch(fake)
    old = forge.open_pull(REPO, BRANCH, "WID-1: retry", "")
    forge.merge_pull(REPO, old.number, expected_head_sha=sha)
    assert forge.open_pull(REPO, BRANCH, "WID-1: retry", "").number == old.number
    open_branch(fake, files={"src/retry.py": "RETRIES = 5\n"})

    # When a pull request is opened again
    new = forge.open_pull(REPO, BRANCH, "WID-1: retry again", "")

    # Then it is a new one, and the branch's pull request is the new one
    assert new.number != old.number
    found = forge.find_pull(REPO, BRANCH)
    assert found is not None
    assert (found.number, found.state) == (new.number, "open")


# -- merging ---------------------------------------------------------------


def test_merge_with_the_right_head_merges_once(fake: FakeGitea, forge: GiteaForge) -> None:
    sha = open_branch(fake)
    pull = forge.open_pull(REPO, BRANCH, "WID-1: retry", "")

    merged = forge.merge_pull(REPO, pull.number, expected_head_sha=sha)
    again = forge.merge_pull(REPO, pull.number, expected_head_sha=sha)

    assert (merged.state, merged.merged, merged.head_sha) == ("closed", True, sha)
    assert merged.merge_commit is not None
    assert merged.merge_commit == forge.branch_head(REPO, "main")
    assert merged.merged_at is not None
    assert again == merged
    assert len(fake.effects_of("pr_merged")) == 1
    assert forge.read_file(REPO, "main", "src/retry.py") == b"RETRIES = 3\n"


def test_merge_answered_already_merged_counts_as_merged(
    fake: FakeGitea, forge: GiteaForge, tmp_path: Path
) -> None:
    sha = open_branch(fake)
    pull = forge.open_pull(REPO, BRANCH, "WID-1: retry", "")
    forge.merge_pull(REPO, pull.number, expected_head_sha=sha)

    client = GiteaClient(fake.url, TOKEN, timeout_s=5.0, retries=0)
    try:
        merged_again = client.merge_pull(FULL, pull.number, sha)
    finally:
        client.close()

    assert merged_again is False
    assert len(fake.effects_of("pr_merged")) == 1


def test_merge_with_a_stale_head_is_a_head_mismatch(fake: FakeGitea, forge: GiteaForge) -> None:
    stale = open_branch(fake)
    pull = forge.open_pull(REPO, BRANCH, "WID-1: retry", "")
    open_branch(fake, files={"src/retry.py": "RETRIES = 4\n"})

    with pytest.raises(HeadMismatch):
        forge.merge_pull(REPO, pull.number, expected_head_sha=stale)
    assert fake.effects_of("pr_merged") == []


def test_merge_that_conflicts_is_a_merge_conflict(fake: FakeGitea, forge: GiteaForge) -> None:
    # Given two branches that change the same line, the first one merged
    first = open_branch(fake, "feature/WID-1-one", {"README.md": "one\n"})
    second = open_branch(fake, "feature/WID-2-two", {"README.md": "two\n"})
    pull_one = forge.open_pull(REPO, "feature/WID-1-one", "WID-1: one", "")
    pull_two = forge.open_pull(REPO, "feature/WID-2-two", "WID-2: two", "")
    forge.merge_pull(REPO, pull_one.number, expected_head_sha=first)

    # When the second one is merged, Then it conflicts and stays open
    with pytest.raises(MergeConflict, match=r"README\.md"):
        forge.merge_pull(REPO, pull_two.number, expected_head_sha=second)
    assert forge.get_pull(REPO, pull_two.number).state == "open"


@pytest.mark.parametrize("after", [True, False], ids=["answer-lost", "refused"])
def test_merge_failing_with_a_5xx_is_read_back_not_merged_twice(
    fake: FakeGitea, forge: GiteaForge, after: bool
) -> None:
    sha = open_branch(fake)
    pull = forge.open_pull(REPO, BRANCH, "WID-1: retry", "")
    merge_path = f"/repos/{FULL}/pulls/{pull.number}/merge"
    fake.fail_next("POST", merge_path, 500, after=after)

    merged = forge.merge_pull(REPO, pull.number, expected_head_sha=sha)

    assert merged.merged
    assert len(fake.effects_of("pr_merged")) == 1
    # Sent again only when the read-back showed the first send did nothing.
    assert fake.requests.count(("POST", merge_path)) == (1 if after else 2)


def test_merge_that_times_out_is_read_back_and_sent_again_only_once(
    fake: FakeGitea, tmp_path: Path
) -> None:
    # Given a merge request that Gitea holds past the client's timeout
    forge = GiteaForge(make_cfg(fake, tmp_path, timeout_s=0.3), http=HttpOptions(sleep=Sleeps()))
    try:
        sha = open_branch(fake)
        pull = forge.open_pull(REPO, BRANCH, "WID-1: retry", "")
        fake.hang_next("POST", f"/repos/{FULL}/pulls/{pull.number}/merge", 0.8)

        # When Conveyor merges
        merged = forge.merge_pull(REPO, pull.number, expected_head_sha=sha)
    finally:
        forge.close()

    # Then the pull request is merged exactly once; the held request finds it merged
    assert merged.merged
    wait_until(
        lambda: fake.requests.count(("POST", f"/repos/{FULL}/pulls/{pull.number}/merge")) == 2,
        deadline_s=5,
        what="the held merge request",
    )
    assert len(fake.effects_of("pr_merged")) == 1


def test_creating_a_second_open_pull_request_is_refused_with_409(fake: FakeGitea) -> None:
    open_branch(fake)

    client = GiteaClient(fake.url, TOKEN, timeout_s=5.0, retries=0)
    try:
        client.create_pull(FULL, BRANCH, "main", "WID-1: retry", "")
        with pytest.raises(RemoteError) as caught:
            client.create_pull(FULL, BRANCH, "main", "WID-1: retry", "")
    finally:
        client.close()

    refused = caught.value
    assert (refused.status, refused.retryable) == (409, False)
    assert "already exists" in refused.reason
    assert len(fake.effects_of("pr_opened")) == 1


# -- statuses and CI -------------------------------------------------------


def test_commit_status_is_the_worst_latest_status_of_each_context(
    fake: FakeGitea, forge: GiteaForge, tmp_path: Path
) -> None:
    sha = forge.branch_head(REPO, "main")
    assert sha is not None
    assert forge.commit_status(REPO, sha) is None

    fake.set_status(FULL, sha, "success", "ci/build")
    fake.set_status(FULL, sha, "pending", "ci/lint")
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert (status.state, status.context, status.sha) == ("pending", "ci/lint", sha)

    fake.set_status(FULL, sha, "failure", "ci/lint", "lint failed")
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert (status.state, status.description) == ("failure", "lint failed")

    fake.set_status(FULL, sha, "warning", "ci/lint")
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert status.state == "success"

    only_build = GiteaForge(make_cfg(fake, tmp_path, status_context="ci/build"))
    try:
        fake.set_status(FULL, sha, "error", "ci/lint")
        build = only_build.commit_status(REPO, sha)
        assert build is not None
        assert (build.state, build.context) == ("success", "ci/build")
        assert forge.commit_status(REPO, sha).state == "error"  # type: ignore[union-attr]
    finally:
        only_build.close()


def test_a_red_status_carries_its_target_url_and_no_log(fake: FakeGitea, forge: GiteaForge) -> None:
    # Gitea's API has no job log for a status: the brief gets its description and URL.
    sha = forge.branch_head(REPO, "main")
    assert sha is not None
    client = GiteaClient(fake.url, TOKEN, timeout_s=5.0, retries=0)
    try:
        client.create_status(
            FULL, sha, "failure", "ci/test", "2 tests failed", "https://ci.test/b/9"
        )
    finally:
        client.close()
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert (status.state, status.description, status.target_url) == (
        "failure",
        "2 tests failed",
        "https://ci.test/b/9",
    )
    assert forge.check_log(REPO, sha) == ""


def test_set_status_posts_one_status(fake: FakeGitea, forge: GiteaForge) -> None:
    sha = forge.branch_head(REPO, "main")
    assert sha is not None

    forge.set_status(REPO, sha, "success", "conveyor/review", "approved")

    assert fake.effects_of("status_set") == [
        {
            "kind": "status_set",
            "repo": FULL,
            "sha": sha,
            "state": "success",
            "context": "conveyor/review",
        }
    ]
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert (status.state, status.context, status.description) == (
        "success",
        "conveyor/review",
        "approved",
    )


def test_await_checks_returns_success_once_the_fake_ci_passed(
    fake: FakeGitea, forge: GiteaForge
) -> None:
    sha = open_branch(fake)

    forge.on_push(REPO, BRANCH, sha)
    status = forge.await_checks(REPO, BRANCH, sha)

    assert status is not None
    assert (status.state, status.sha) == ("success", sha)


def test_await_checks_returns_failure_when_the_fake_ci_fails(tmp_path: Path) -> None:
    fake = start_fake(tmp_path, check_command=FAIL)
    forge = GiteaForge(make_cfg(fake, tmp_path))
    try:
        sha = open_branch(fake)
        status = forge.await_checks(REPO, BRANCH, sha)
        assert status is not None
        assert (status.state, status.description) == ("failure", "check exited 3")
    finally:
        forge.close()
        fake.stop()


def test_await_checks_gives_up_after_the_check_timeout(fake: FakeGitea, tmp_path: Path) -> None:
    # main is never built by the fake CI, so nothing ever reports
    clock = FakeClock()
    forge = GiteaForge(make_cfg(fake, tmp_path, ci_poll_s=2.0), clock=clock)
    try:
        sha = forge.branch_head(REPO, "main")
        assert sha is not None
        assert forge.await_checks(REPO, "main", sha) is None
        assert 20.0 <= clock.monotonic() <= 22.0
    finally:
        forge.close()


def test_comment_is_posted_once_even_when_its_answer_is_lost(
    fake: FakeGitea, forge: GiteaForge
) -> None:
    open_branch(fake)
    pull = forge.open_pull(REPO, BRANCH, "WID-1: retry", "")
    fake.fail_next("POST", f"/repos/{FULL}/issues/{pull.number}/comments", 503, after=True)

    forge.comment(REPO, pull.number, "Deployed to staging.")
    forge.comment(REPO, pull.number, "Deployed.")

    assert [e["number"] for e in fake.effects_of("comment")] == [pull.number, pull.number]


# -- failures ----------------------------------------------------------------


def test_a_get_failing_with_5xx_is_retried_with_backoff(
    fake: FakeGitea, forge: GiteaForge, sleeps: Sleeps
) -> None:
    sha = open_branch(fake)
    fake.fail_next("GET", f"/repos/{FULL}/branches/", 500, count=2)

    assert forge.branch_head(REPO, BRANCH) == sha
    assert sleeps.delays == [0.5, 1.0]


def test_a_get_failing_past_the_retries_is_a_retryable_remote_error(
    fake: FakeGitea, forge: GiteaForge, sleeps: Sleeps
) -> None:
    fake.fail_next("GET", f"/repos/{FULL}/branches/", 503, count=3)

    with pytest.raises(RemoteError) as caught:
        forge.branch_head(REPO, BRANCH)

    assert (caught.value.service, caught.value.status, caught.value.retryable) == (
        "gitea",
        503,
        True,
    )
    assert len(sleeps.delays) == 2


def test_a_request_that_times_out_is_a_retryable_remote_error(
    fake: FakeGitea, tmp_path: Path
) -> None:
    forge = GiteaForge(make_cfg(fake, tmp_path, timeout_s=0.3, retries=0))
    fake.hang_next("GET", f"/repos/{FULL}/branches/", 1.0)
    try:
        with pytest.raises(RemoteError) as caught:
            forge.branch_head(REPO, "main")
        assert caught.value.retryable
        assert caught.value.status is None
        assert "no answer" in caught.value.reason
    finally:
        forge.close()


def test_a_junk_answer_is_a_remote_error_that_is_not_retried(
    fake: FakeGitea, forge: GiteaForge
) -> None:
    fake.junk_next("GET", f"/repos/{FULL}/branches/")

    with pytest.raises(RemoteError) as caught:
        forge.branch_head(REPO, "main")

    assert not caught.value.retryable
    assert "unexpected response body" in caught.value.reason


def test_a_bad_token_is_a_remote_error_with_status_401(fake: FakeGitea, tmp_path: Path) -> None:
    cfg = make_cfg(fake, tmp_path)
    bad = GiteaForge(
        msgspec_replace_token(cfg, "wrong-token"),
    )
    try:
        with pytest.raises(RemoteError) as caught:
            bad.branch_head(REPO, "main")
        assert (caught.value.status, caught.value.retryable) == (401, False)
        assert "wrong-token" not in str(caught.value)
    finally:
        bad.close()


def msgspec_replace_token(cfg: Config, token: str) -> Config:
    return msgspec.structs.replace(cfg, gitea=msgspec.structs.replace(cfg.gitea, token=token))


# -- webhooks ----------------------------------------------------------------


class Receiver:
    """A tiny webhook endpoint recording raw header names and exact bodies."""

    def __init__(self) -> None:
        self.received: list[tuple[list[tuple[str, str]], bytes]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._setup(), self._loop).result(10)
        return self

    async def _setup(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks/gitea", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/webhooks/gitea"

    async def _handle(self, request: web.Request) -> web.Response:
        headers = [(k.decode(), v.decode()) for k, v in request.raw_headers]
        self.received.append((headers, await request.read()))
        return web.Response(status=204)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def events(self) -> list[tuple[dict[str, str], bytes]]:
        return [(dict(headers), body) for headers, body in list(self.received)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hooks = Receiver().start()
    try:
        yield hooks
    finally:
        hooks.stop()


def test_webhooks_arrive_signed_with_gitea_headers(tmp_path: Path, receiver: Receiver) -> None:
    fake = start_fake(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET, check_command=PASS)
    forge = GiteaForge(make_cfg(fake, tmp_path))
    try:
        # Given a push, a pull request and its merge
        sha = open_branch(fake)
        pull = forge.open_pull(REPO, BRANCH, "WID-1: retry", "")
        assert forge.await_checks(REPO, BRANCH, sha).state == "success"  # type: ignore[union-attr]
        forge.merge_pull(REPO, pull.number, expected_head_sha=sha)

        # Then push, opened, two statuses and the merge arrive
        def kinds() -> list[str]:
            out = []
            for headers, body in receiver.events():
                payload = json.loads(body)
                kind = headers["X-Gitea-Event-Type"]
                if kind == "pull_request":
                    kind = f"pull_request:{payload['action']}"
                elif kind == "status":
                    kind = f"status:{payload['state']}"
                out.append(kind)
            return sorted(out)

        expected = sorted(
            [
                "push",
                "pull_request:opened",
                "status:pending",
                "status:success",
                "pull_request:closed",
            ]
        )
        wait_until(lambda: kinds() == expected, deadline_s=10, what="five webhooks")
    finally:
        forge.close()
        fake.stop()

    recorded = json.loads((FIXTURES / "gitea-push.headers.json").read_text())
    deliveries = set()
    for headers, body in receiver.events():
        # Exact header names (and order) as Gitea sends them, Content-Type included.
        names = [name for name in headers if name in recorded]
        assert names == list(recorded)
        assert headers["Content-Type"] == "application/json"
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Gitea-Signature"] == signature
        assert headers["X-Gogs-Signature"] == signature
        assert headers["X-Hub-Signature-256"] == f"sha256={signature}"
        sha1 = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
        assert headers["X-Hub-Signature"] == f"sha1={sha1}"
        assert headers["X-Gitea-Event"] == headers["X-Gitea-Event-Type"]
        assert headers["X-Gitea-Delivery"] == headers["X-GitHub-Delivery"]
        deliveries.add(headers["X-Gitea-Delivery"])
        # The MarshalIndent layout: two-space indent, no trailing newline.
        assert json.dumps(json.loads(body), indent=2, ensure_ascii=False).encode() == body
        payload = json.loads(body)
        assert payload["repository"]["full_name"] == FULL
        if headers["X-Gitea-Event-Type"] == "push":
            assert (payload["ref"], payload["after"]) == (f"refs/heads/{BRANCH}", sha)
        if headers["X-Gitea-Event-Type"] == "status":
            assert (payload["sha"], payload["context"]) == (sha, "ci/build")
        if payload.get("action") == "closed":
            assert payload["pull_request"]["merged"] is True
            assert payload["pull_request"]["merge_commit_sha"]
    assert len(deliveries) == 5


def test_a_drop_rate_of_one_loses_every_webhook(tmp_path: Path, receiver: Receiver) -> None:
    fake = start_fake(
        tmp_path, webhook_url=receiver.url, webhook_secret=SECRET, drop_rate=1.0, check_command=None
    )
    try:
        open_branch(fake)
        # push and one success status were sent, and both dropped
        wait_until(lambda: len(fake.deliveries) >= 2, deadline_s=10, what="two deliveries")
        assert all(d["dropped"] for d in fake.deliveries)
        assert fake.send_hook("push", {"ref": "refs/heads/main"}) is None
    finally:
        fake.stop()
    assert receiver.received == []


def test_send_hook_delivers_a_signed_payload(tmp_path: Path, receiver: Receiver) -> None:
    fake = start_fake(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET)
    try:
        payload = json.loads((FIXTURES / "gitea-status.json").read_text())
        assert fake.send_hook("status", payload) == 204
    finally:
        fake.stop()
    ((headers, body),) = receiver.events()
    assert body == (FIXTURES / "gitea-status.json").read_bytes()
    assert (
        headers["X-Gitea-Signature"] == hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    )
