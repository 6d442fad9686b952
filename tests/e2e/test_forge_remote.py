"""No shared disk: a launcher on another "host" delivers items through the forge's URL.

The forge's host runs `conveyor up --parts control,forge` on its data directory;
the launcher runs with a data directory of its own and `forge.url` + a token
file, in a mount namespace where the forge host's whole directory is an empty
tmpfs (when it may make one: root and `unshare`), so it can reach the bare
repositories, pull requests and CI only through git smart HTTP and the API.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.app.client import Client
from gateways import git
from tests.harness import Processes, drive, wait_ready, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

TOKEN = "e2e-forge-token"
REPOS = ("demo", "other")
"""One item in each: they run at once (one job per repository at a time)."""
OTHER_REPO = """
[[repos]]
name = "other"
prefix = "OTHER"
template = "demo"
check_command = ["{python}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]
"""


def _hiding(path: Path) -> list[str]:
    """An argv prefix that runs a command with `path` hidden under an empty tmpfs."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        return []
    script = 'mount -t tmpfs -o size=1m none "$0" && exec "$@"'
    return [unshare, "--mount", "--propagation", "private", "sh", "-c", script, str(path)]


def _start_launcher(procs: Processes, hide: Path) -> None:
    argv = [sys.executable, "-m", "conveyor.app.cli", "--config", str(procs.config)]
    with (procs.tmp / "launcher.log").open("ab") as log:
        procs.procs["launcher"] = subprocess.Popen(
            [*_hiding(hide), *argv, "up", "--parts", "launcher"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=procs.tmp,
            env={k: v for k, v in os.environ.items() if k != "CONVEYOR_FAULT"},
        )


@pytest.fixture
def hosts(tmp_path: Path, nats_url: str) -> Iterator[tuple[Processes, Path]]:
    forge_root = tmp_path / "forge-host"
    forge_root.mkdir()
    forge_toml = f'{OTHER_REPO}\n[forge]\ntoken = "{TOKEN}"\n'
    forge_host = Processes(forge_root, nats_url, extra_toml=forge_toml)
    launcher_root = tmp_path / "launcher-host"
    launcher_root.mkdir()
    yield forge_host, launcher_root
    forge_host.stop_all()


def test_a_launcher_that_cannot_see_the_forge_delivers_items_through_its_url(
    hosts: tuple[Processes, Path], nats_url: str
) -> None:
    # Given the forge's host serving its forge, and a launcher that knows only its URL
    forge_host, launcher_root = hosts
    forge_host.start("control", "control,forge")
    url_file = forge_host.data / "forge.url"
    url = wait_until(
        lambda: url_file.exists() and url_file.read_text().strip(), what="forge.url", deadline_s=60
    )
    token_file = launcher_root / "forge.token"
    token_file.write_text(TOKEN + "\n")
    remote_toml = f'{OTHER_REPO}\n[forge]\nurl = "{url}"\ntoken_file = "{token_file}"\n'
    launcher = Processes(launcher_root, nats_url, extra_toml=remote_toml)
    hiding = _hiding(forge_host.tmp)
    if hiding:
        seen = subprocess.run([*hiding, "ls", "-A", str(forge_host.tmp)], capture_output=True)
        assert (seen.returncode, seen.stdout) == (0, b""), seen
    _start_launcher(launcher, forge_host.tmp)
    client = Client(nats_url)
    try:
        wait_ready(client, forge_host)

        # When demo items are submitted
        items = {
            repo: client.command("submit", {"repo": repo, "title": f"Remote launcher {repo}"})[
                "task"
            ]["id"]
            for repo in REPOS
        }

        # Then each reaches done, merged once on the forge, through the launcher's own clone
        for item in items.values():
            try:
                drive(client, item, "done", deadline_s=100)
            except AssertionError:
                raise AssertionError(forge_host.logs() + launcher.logs()) from None
    finally:
        client.close()
        launcher.stop_all()
    effects = (forge_host.data / "forge" / "effects.jsonl").read_text()
    assert effects.count('"pr_opened"') == len(REPOS)
    assert effects.count('"pr_merged"') == len(REPOS)
    for repo, item in items.items():
        bare = forge_host.data / "forge" / "repos" / f"{repo}.git"
        merges = git.run_git(["log", "--merges", "--format=%s", "main"], git_dir=bare)
        assert len(merges.splitlines()) == 1
        workspace = launcher.data / "workspaces" / repo
        origin = git.run_git(["config", "--get", "remote.origin.url"], workspace)
        host = url.removeprefix("http://")
        assert origin == f"http://conveyor:{TOKEN}@{host}/git/{repo}.git"
        assert [p.name for p in (launcher.data / "worktrees" / repo).iterdir()] == [item]
    assert not (launcher.data / "forge").exists()
    assert TOKEN not in (launcher.tmp / "launcher.log").read_text()
