"""Deleting a done task's branch on each forge: compare-and-delete, idempotent, never main."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.errors import HeadMismatch, InvalidField
from gateways.forge import Forge
from gateways.gitea import GiteaForge
from gateways.http import HttpOptions, no_jitter
from gateways.local_forge import LocalForge
from gateways.local_forge_client import ForgeClient
from gateways.local_forge_server import ForgeServer
from tests.integration.test_gitea import FULL, Sleeps, make_cfg, start_fake
from tests.integration.test_gitea import REPO as GITEA_REPO
from tests.unit.test_local_forge import REPO, effects, make_forge, push

pytestmark = pytest.mark.timeout(60)

BRANCH = "feature/DEMO-1-add-greeting"
TOKEN = "t0ken"


@pytest.fixture(autouse=True)
def no_git_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path_factory.mktemp("home") / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def local(tmp_path: Path) -> LocalForge:
    return make_forge(tmp_path)


@pytest.fixture
def client(local: LocalForge) -> Iterator[ForgeClient]:
    served = ForgeServer(local, TOKEN, host="127.0.0.1", port=0).start()
    remote = ForgeClient(served.url, TOKEN)
    yield remote
    remote.close()
    served.stop()


def deletes_at_its_head_only(forge: Forge, repo: str, head: str, moved: str) -> None:
    """`moved` is the branch's current head; `head` an older one the task knew."""
    with pytest.raises(HeadMismatch):
        forge.delete_branch(repo, BRANCH, expected_sha=head)
    assert forge.branch_head(repo, BRANCH) == moved
    with pytest.raises(InvalidField):
        forge.delete_branch(repo, "main", expected_sha=moved)
    assert forge.delete_branch(repo, BRANCH, expected_sha=moved)
    assert forge.branch_head(repo, BRANCH) is None
    # Again (a Janitor killed before it recorded the first): already gone, no error
    assert not forge.delete_branch(repo, BRANCH, expected_sha=moved)


def test_the_local_forge_deletes_a_branch_only_at_the_head_it_is_told(
    local: LocalForge, client: ForgeClient, tmp_path: Path
) -> None:
    first = push(local, tmp_path, BRANCH, {"a.txt": "a\n"})
    moved = push(local, tmp_path, BRANCH, {"b.txt": "b\n"})
    deletes_at_its_head_only(local, REPO, first, moved)
    assert [e["branch"] for e in effects(local, "branch_deleted")] == [BRANCH]
    # The same through the forge's HTTP API, as a control process elsewhere calls it
    again = push(local, tmp_path, BRANCH, {"c.txt": "c\n"})
    with pytest.raises(HeadMismatch):
        client.delete_branch(REPO, BRANCH, expected_sha=moved)
    assert client.delete_branch(REPO, BRANCH, expected_sha=again)
    assert not client.delete_branch(REPO, BRANCH, expected_sha=again)


def test_gitea_deletes_a_branch_only_at_the_head_it_is_told(tmp_path: Path) -> None:
    fake = start_fake(tmp_path)
    gitea = GiteaForge(make_cfg(fake, tmp_path), http=HttpOptions(sleep=Sleeps(), jitter=no_jitter))
    try:
        first = fake.push_branch(FULL, BRANCH, {"a.txt": "a\n"})
        moved = fake.push_branch(FULL, BRANCH, {"b.txt": "b\n"})
        deletes_at_its_head_only(gitea, GITEA_REPO, first, moved)
        assert [e for e in fake.effects if e["kind"] == "branch_deleted"] == [
            {"kind": "branch_deleted", "repo": FULL, "branch": BRANCH}
        ]
    finally:
        gitea.close()
        fake.stop()
