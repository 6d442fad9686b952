"""The local forge over the network: real git over smart HTTP and the forge's API.

A `ForgeServer` serves a `LocalForge` on a free port; clones, pushes and every
`Forge` call go through `ForgeClient`, from directories that are not the forge's.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.clock import FakeClock
from conveyor.errors import ForgeError, GitError, HeadMismatch, InvalidField, MergeConflict
from gateways import git
from gateways.local_forge import CI_CONTEXT, LocalForge
from gateways.local_forge_client import ForgeClient
from gateways.local_forge_server import ForgeServer

pytestmark = pytest.mark.timeout(60)

REPO = "demo"
TOKEN = "s3cret-t0ken/with:odd@chars"


@pytest.fixture(autouse=True)
def no_git_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No global or system git config (no credential helper), as on a fresh CI machine."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path_factory.mktemp("home") / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def forge(tmp_path: Path) -> LocalForge:
    # CI: red when the tree has a file `red`, a second long when it has one `slow`.
    script = "import pathlib as p,sys,time; time.sleep(p.Path('slow').exists()); "
    check = [sys.executable, "-c", script + "sys.exit(p.Path('red').exists())"]
    local = LocalForge(tmp_path / "owner" / "forge", {REPO: check}, clock=FakeClock())
    local.create_repo(REPO, initial_files={"README.md": b"hello\n"})
    return local


@pytest.fixture
def server(forge: LocalForge) -> Iterator[ForgeServer]:
    served = ForgeServer(forge, TOKEN, host="127.0.0.1", port=0).start()
    yield served
    served.stop()


@pytest.fixture
def client(server: ForgeServer) -> Iterator[ForgeClient]:
    remote = ForgeClient(server.url, TOKEN, check_timeout_s=30.0)
    yield remote
    remote.close()


def work(client: ForgeClient, home: Path, branch: str, files: dict[str, str]) -> tuple[Path, str]:
    """A clone of its own under `home`, `files` committed on `branch` and pushed over HTTP."""
    clone = home / "clone"
    git.ensure_clone(client.clone_url(REPO), clone)
    worktree = home / "wt" / branch.replace("/", "_")
    git.ensure_worktree(clone, worktree, branch)
    for name, text in files.items():
        (worktree / name).write_text(text)
    git.commit_all(worktree, f"change {', '.join(files)}")
    return worktree, git.push_branch(worktree, branch)


def test_a_launcher_elsewhere_pushes_opens_tests_and_merges_through_the_url(
    client: ForgeClient, forge: LocalForge, tmp_path: Path
) -> None:
    # Given a clone made through the URL, in a directory that is not the forge's
    branch = "feature/DEMO-1-greeting"
    _, sha = work(client, tmp_path / "launcher", branch, {"greeting.txt": "hi\n"})

    # When it opens a pull request, has CI run, reads it back and merges
    assert client.branch_head(REPO, branch) == sha == forge.branch_head(REPO, branch)
    pull = client.open_pull(REPO, branch, "DEMO-1: greeting", "body")
    assert client.open_pull(REPO, branch, "DEMO-1: greeting", "body") == pull
    status = client.await_checks(REPO, branch, sha)
    merged = client.merge_pull(REPO, pull.number, expected_head_sha=sha)

    # Then the forge's owner holds all of it, and reads through the API agree
    assert status is not None
    assert (status.state, status.context) == ("success", CI_CONTEXT)
    assert client.commit_status(REPO, sha) == forge.commit_status(REPO, sha)
    assert merged.merged
    assert forge.get_pull(REPO, pull.number).merged
    assert client.read_file(REPO, "main", "greeting.txt") == b"hi\n"
    assert client.read_file(REPO, "main", "missing.txt") is None
    assert "greeting.txt" in client.list_dir(REPO, "main", "")
    assert client.find_pull(REPO, branch) == merged
    client.set_status(REPO, sha, "failure", "other/check", "red elsewhere")
    assert client.commit_status(REPO, sha) == forge.commit_status(REPO, sha)
    assert client.check_log(REPO, sha) == forge.check_log(REPO, sha)


def test_a_push_larger_than_gits_post_buffer_streams_through(
    client: ForgeClient, forge: LocalForge, tmp_path: Path
) -> None:
    # Given a commit of 3 MiB (git sends it chunked, without a Content-Length)
    branch = "feature/DEMO-6-big"
    home = tmp_path / "l"
    git.ensure_clone(client.clone_url(REPO), home / "clone")
    git.ensure_worktree(home / "clone", home / "wt", branch)
    (home / "wt" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    git.commit_all(home / "wt", "big")

    # When it is pushed, and fetched into another clone
    sha = git.push_branch(home / "wt", branch)
    git.ensure_clone(client.clone_url(REPO), tmp_path / "other")

    # Then the forge and the other clone hold it
    assert forge.branch_head(REPO, branch) == sha
    assert git.resolve_commit(tmp_path / "other", f"origin/{branch}") == sha


def test_refusals_cross_the_wire_as_the_same_errors(
    client: ForgeClient, forge: LocalForge, tmp_path: Path
) -> None:
    # Given two branches that change the same line, one merged
    one = "feature/DEMO-1-one"
    two = "feature/DEMO-2-two"
    _, sha_one = work(client, tmp_path / "a", one, {"README.md": "one\n"})
    _, sha_two = work(client, tmp_path / "b", two, {"README.md": "two\n"})
    first = client.open_pull(REPO, one, "one", "")
    second = client.open_pull(REPO, two, "two", "")
    client.merge_pull(REPO, first.number, expected_head_sha=sha_one)

    # Then a conflict, a moved head, an unknown pull request and a bad name are refused
    with pytest.raises(MergeConflict):
        client.merge_pull(REPO, second.number, expected_head_sha=sha_two)
    with pytest.raises(HeadMismatch):
        client.merge_pull(REPO, second.number, expected_head_sha="0" * 40)
    with pytest.raises(ForgeError, match="does not exist"):
        client.get_pull(REPO, 99)
    with pytest.raises(InvalidField):
        client.branch_head("../etc", "main")


def test_a_red_check_is_reported_with_its_log(
    client: ForgeClient, forge: LocalForge, tmp_path: Path
) -> None:
    branch = "feature/DEMO-3-red"
    _, sha = work(client, tmp_path / "l", branch, {"red": "x\n"})
    status = client.await_checks(REPO, branch, sha)
    assert status is not None
    assert status.state == "failure"
    assert client.check_log(REPO, sha) == forge.check_log(REPO, sha)


def test_a_check_outlasting_one_call_is_waited_for_and_run_once_for_every_caller(
    server: ForgeServer, forge: LocalForge, tmp_path: Path
) -> None:
    # Given a check of a second and clients that wait at most 0.2 s per call
    clients = [ForgeClient(server.url, TOKEN, check_wait_s=0.2) for _ in range(3)]
    branch = "feature/DEMO-7-slow"
    _, sha = work(clients[0], tmp_path / "l", branch, {"slow": "s\n"})
    statuses: list[object] = []

    # When three launchers await the same sha's check at once
    threads = [
        threading.Thread(target=lambda c=c: statuses.append(c.await_checks(REPO, branch, sha)))
        for c in clients
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for client in clients:
        client.close()

    # Then each got the final status, and the check ran once
    assert [getattr(s, "state", None) for s in statuses] == ["success"] * 3
    effects = forge.effects_path.read_text().splitlines()
    assert sum('"pending"' in line and sha in line for line in effects) == 1


def test_a_check_left_pending_by_a_dead_forge_runs_again(
    client: ForgeClient, forge: LocalForge, tmp_path: Path
) -> None:
    # Given a sha whose status a forge that died mid-check left pending
    branch = "feature/DEMO-8-orphan"
    _, sha = work(client, tmp_path / "l", branch, {"o.txt": "o\n"})
    forge.set_status(REPO, sha, "pending", CI_CONTEXT, "check running")

    # When a launcher waits for it (post-steps do so for a pending status)
    client.on_push(REPO, branch, sha)

    # Then it ran again and is final
    status = client.commit_status(REPO, sha)
    assert status is not None
    assert status.state == "success"


def test_a_push_without_or_with_a_wrong_token_is_refused_and_changes_nothing(
    server: ForgeServer, client: ForgeClient, forge: LocalForge, tmp_path: Path
) -> None:
    # Given a clone with a commit on main and one on a new branch, made with the token
    worktree, _ = work(client, tmp_path / "l", "feature/DEMO-4-x", {"x.txt": "x\n"})
    main_before = forge.branch_head(REPO, "main")
    refs_before = git.run_git(["for-each-ref"], git_dir=forge.repo_path(REPO))
    objects_before = git.run_git(["count-objects", "-v"], git_dir=forge.repo_path(REPO))
    bare_url = f"{server.url}/git/{REPO}.git"
    wrong_url = bare_url.replace("http://", "http://conveyor:wrong@")

    # When it pushes with no token and with a wrong one, and calls the API so
    for url in (bare_url, wrong_url):
        git.run_git(["remote", "set-url", "origin", url], worktree)
        with pytest.raises(GitError):
            git.run_git(["push", "origin", "HEAD:refs/heads/feature/DEMO-5-evil"], worktree)
        with pytest.raises(GitError):
            git.run_git(["push", "--force", "origin", "HEAD:refs/heads/main"], worktree)
        with pytest.raises(GitError):
            git.run_git(["ls-remote", url], worktree)
    for token in ("", "wrong"):
        intruder = ForgeClient(server.url, token)
        with pytest.raises(ForgeError, match="refused"):
            intruder.open_pull(REPO, "feature/DEMO-4-x", "evil", "")
        intruder.close()
    raw = httpx.get(f"{bare_url}/info/refs?service=git-upload-pack")

    # Then every one is refused (401, a challenge git answers) and nothing changed
    assert raw.status_code == 401
    assert raw.headers["WWW-Authenticate"].startswith("Basic")
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert forge.branch_head(REPO, "main") == main_before
    assert git.run_git(["for-each-ref"], git_dir=forge.repo_path(REPO)) == refs_before
    assert git.run_git(["count-objects", "-v"], git_dir=forge.repo_path(REPO)) == objects_before
    assert forge.find_pull(REPO, "feature/DEMO-4-x") is None


def test_concurrent_pushes_and_merges_over_http_on_one_repository_all_succeed(
    client: ForgeClient, forge: LocalForge, tmp_path: Path
) -> None:
    # Given several launchers' branches, each touching its own file
    count = 6
    failures: list[BaseException] = []
    merged: list[str] = []

    def _deliver(n: int) -> None:
        branch = f"feature/DEMO-{10 + n}-part"
        try:
            home = tmp_path / f"launcher{n}"
            _, sha = work(client, home, branch, {f"part{n}.txt": f"{n}\n"})
            pull = client.open_pull(REPO, branch, f"part {n}", "")
            status = client.await_checks(REPO, branch, sha)
            assert status is not None
            assert status.state == "success"
            result = client.merge_pull(REPO, pull.number, expected_head_sha=sha)
            merged.append(result.merge_commit or "")
        except BaseException as err:  # collected: the assertion below names it
            failures.append(err)

    # When all push, test and merge at once over HTTP
    threads = [threading.Thread(target=_deliver, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)

    # Then no push or merge failed, and main holds every part
    assert failures == []
    assert len(merged) == count
    names = client.list_dir(REPO, "main", "")
    assert {f"part{n}.txt" for n in range(count)} <= set(names)
    effects = forge.effects_path.read_text()
    assert effects.count('"pr_merged"') == count
