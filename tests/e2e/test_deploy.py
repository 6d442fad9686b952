"""Conveyor runs a repository's deploy commands itself and proves the verdict.

Each repository here has a `staging_command` and a `deploy_command`: a tiny
script that appends `<stage> <work item>` to a file and exits with a given
code. The finalizer turns that exit code (and the health check) into the
verdict file, `decided_by: conveyor`; the gate reads only that.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.gate_policy import split_front_matter
from conveyor.app.client import Client
from gateways import git
from tests.harness import (
    ALL_STAGES,
    DEMO_CHECK,
    Harness,
    Processes,
    drive,
    stored_jobs,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

ITEM = "DEMO-1"
STAGING_LOG = f"docs/work-items/{ITEM}/15-staging-log.md"
DEPLOY_LOG = f"docs/work-items/{ITEM}/14-deploy-log.md"

SCRIPT = """\
import pathlib, sys

out, stage, item, code = sys.argv[1:5]
name = "15-staging-log.md" if stage == "deploy-staging" else "14-deploy-log.md"
if (pathlib.Path("docs/work-items") / item / name).exists():
    # The previous visit's verdict must be off the branch before a deploy runs.
    with open(out + ".stale", "a") as stale:
        stale.write(f"{stage} {item}\\n")
with open(out, "a") as log:
    log.write(f"{stage} {item}\\n")
print(f"deployed {item} to {stage}")
sys.exit(int(code))
"""


class Deploys:
    """The deploy script and the file it appends one line to per run."""

    def __init__(self, tmp: Path) -> None:
        self.script = tmp / "deploy_script.py"
        self.script.write_text(SCRIPT)
        self.out = tmp / "deploys.txt"

    def command(self, exit_code: int) -> list[str]:
        return [
            "{python}",
            str(self.script),
            str(self.out),
            "{stage}",
            "{work_item}",
            str(exit_code),
        ]

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def stale(self) -> list[str]:
        path = self.out.with_name(self.out.name + ".stale")
        return path.read_text().splitlines() if path.exists() else []


def _repo(deploys: Deploys, *, staging: int = 0, deploy: int = 0, health_url: str = "") -> Any:
    return [
        {
            "name": "demo",
            "prefix": "DEMO",
            "template": "demo",
            "check_command": DEMO_CHECK,
            "staging_command": deploys.command(staging),
            "deploy_command": deploys.command(deploy),
            "health_url": health_url,
        }
    ]


def _front_matter(bare: Path, ref: str, path: str) -> dict[str, Any]:
    text = git.run_git(["show", f"{ref}:{path}"], git_dir=bare)
    data: dict[str, Any] = msgspec.yaml.decode(split_front_matter(text).encode())
    return data


def _commits_touching(bare: Path, ref: str, path: str) -> int:
    out = git.run_git(["log", "--format=%H", ref, "--", path], git_dir=bare)
    return len(out.split())


@pytest.fixture
def deploys(tmp_path: Path) -> Deploys:
    return Deploys(tmp_path)


@pytest.fixture
def unhealthy_url() -> Iterator[str]:
    """A health URL that answers 500 to everything."""

    class _Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"down")

        def log_message(self, *_: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()


def test_conveyor_runs_both_deploy_commands_and_decides_both_verdicts(
    harness_factory: Callable[..., Harness], deploys: Deploys
) -> None:
    # Given a repository whose staging and deploy commands succeed
    harness = harness_factory(repos=_repo(deploys))

    # When a work item goes through the pipeline
    item = harness.submit("Ship it", item_id=ITEM)["task"]["id"]
    task = harness.wait_stage(item, "done")

    # Then each command ran exactly once, in the task's worktree, instead of the agent
    assert deploys.lines() == [f"deploy-staging {item}", f"deploy {item}"]
    assert deploys.stale() == []
    assert harness.stages_of(item) == ALL_STAGES
    # and both verdicts were written by Conveyor, from the exit code
    bare = harness.layout.forge / "repos" / "demo.git"
    staging = _front_matter(bare, task["branch"], STAGING_LOG)
    deploy = _front_matter(bare, task["branch"], DEPLOY_LOG)
    assert staging["staging_status"] == "SUCCESS"
    assert deploy["deploy_status"] == "SUCCESS"
    for verdict in (staging, deploy):
        assert verdict["decided_by"] == "conveyor"
        assert verdict["exit_code"] == 0
        assert verdict["work_item"] == item
        assert verdict["command"][1] == str(deploys.script)
        assert verdict["health"] == "not configured"
    assert "deployed DEMO-1 to deploy" in git.run_git(
        ["show", f"{task['branch']}:{DEPLOY_LOG}"], git_dir=bare
    )
    assert {job.status for job in harness.jobs().values()} == {"done"}


def test_a_failing_deploy_command_goes_back_to_development_until_the_budget_is_spent(
    harness_factory: Callable[..., Harness], deploys: Deploys
) -> None:
    # Given a production deploy command that always fails, and one developer retry
    harness = harness_factory(repos=_repo(deploys, deploy=1), pipeline={"max_developer_retries": 1})

    # When a work item reaches deploy
    item = harness.submit("Broken prod", item_id=ITEM)["task"]["id"]
    task = harness.wait_stage(item, "escalated", deadline_s=120)

    # Then the FAILED verdict sent it back to development once, then escalated it
    stages = harness.stages_of(item)
    assert stages.count("development") == 2
    assert stages.count("deploy") == 2
    back = [e for e in task["history"] if e["old"] == "deploy" and e["new"] == "development"]
    assert len(back) == 1
    assert back[0]["cause"] == "deploy FAILED"
    assert task["escalated"]
    assert "developer retries exhausted" in task["last_reason"]
    # and each visit deployed once: the budget bounds the deploys too
    assert deploys.lines() == [f"deploy-staging {item}", f"deploy {item}"] * 2
    # and no deploy of the second visit ran while the first visit's verdict was on the branch
    assert deploys.stale() == []
    bare = harness.layout.forge / "repos" / "demo.git"
    verdict = _front_matter(bare, task["branch"], DEPLOY_LOG)
    assert verdict["deploy_status"] == "FAILED"
    assert verdict["exit_code"] == 1
    assert verdict["decided_by"] == "conveyor"
    assert "exited with code 1" in verdict["reason"]
    # A FAILED verdict is a finished job (the gate decides), so no job retried a deploy.
    deploy_jobs = [j for j in harness.jobs().values() if j.stage == "deploy"]
    assert {j.attempts for j in deploy_jobs} == {1}


def test_a_deploy_whose_health_url_answers_500_is_failed(
    harness_factory: Callable[..., Harness], deploys: Deploys, unhealthy_url: str
) -> None:
    # Given a staging command that succeeds but a service that answers 500
    harness = harness_factory(
        repos=_repo(deploys, health_url=unhealthy_url),
        deploy={"health_timeout_s": 0.5, "health_interval_s": 0.1},
        pipeline={"max_stage_retries": 1},
    )

    # When the work item reaches deploy-staging
    item = harness.submit("Sick service", item_id=ITEM)["task"]["id"]
    task = harness.wait_stage(item, "escalated", deadline_s=120)

    # Then the verdict is FAILED for the health check, and it never reached deploy
    bare = harness.layout.forge / "repos" / "demo.git"
    verdict = _front_matter(bare, task["branch"], STAGING_LOG)
    assert verdict["staging_status"] == "FAILED"
    assert verdict["exit_code"] == 0
    assert verdict["health_url"] == unhealthy_url
    assert verdict["health"].startswith("HTTP 500")
    assert "health check failed" in verdict["reason"]
    assert "deploy" not in harness.stages_of(item)
    assert task["stage"] == "deploy-staging"
    assert set(deploys.lines()) == {f"deploy-staging {item}"}


EXTRA_TOML = """\
staging_command = {staging}
deploy_command = {deploy}
"""


@pytest.mark.parametrize(
    "faults",
    [
        ("launcher.deploy_started",),
        ("launcher.deploy_verdict",),
        ("launcher.deploy_started", "launcher.deploy_verdict"),
    ],
    ids=["started", "verdict", "started-then-verdict-on-adoption"],
)
def test_a_launcher_killed_during_a_deploy_adopts_it_and_deploys_once(
    faults: tuple[str, ...], tmp_path: Path, nats_url: str, deploys: Deploys
) -> None:
    # Given the Procfile processes, with deploy commands, and a launcher that will die
    extra = EXTRA_TOML.format(
        staging=_toml_list(deploys.command(0)), deploy=_toml_list(deploys.command(0))
    )
    procs = Processes(tmp_path, nats_url, extra_toml=extra)
    procs.start("control", "control")
    procs.start("launcher", "launcher", fault=faults[0])
    client = Client(nats_url)
    try:
        wait_ready(client, procs)
        assert client.command("submit", {"repo": "demo", "title": "Kill me", "id": ITEM})["ok"]

        # When the launcher is killed -9 at each point in turn, and started again
        for index, point in enumerate(faults):

            def _died() -> bool:
                _approve_quietly(client)
                return procs.procs["launcher"].poll() is not None

            wait_until(_died, what=f"launcher to die at {point}", deadline_s=120)
            procs.procs.pop("launcher")
            following = faults[index + 1] if index + 1 < len(faults) else ""
            procs.start("launcher", "launcher", fault=following)

        # Then the item is done, each command ran once and each verdict was committed once
        task = drive(client, ITEM, "done", deadline_s=120)
        assert [e["new"] for e in task["history"]] == ALL_STAGES
        assert deploys.lines() == [f"deploy-staging {ITEM}", f"deploy {ITEM}"]
        bare = procs.data / "forge" / "repos" / "demo.git"
        for path, key in ((STAGING_LOG, "staging_status"), (DEPLOY_LOG, "deploy_status")):
            assert _commits_touching(bare, task["branch"], path) == 1, path
            verdict = _front_matter(bare, task["branch"], path)
            assert verdict[key] == "SUCCESS"
            assert verdict["decided_by"] == "conveyor"
        jobs = [j for j in stored_jobs(client) if j.task_id == ITEM]
        assert {j.status for j in jobs} == {"done"}, [(j.id, j.status, j.error) for j in jobs]
        launcher_log = (tmp_path / "launcher.log").read_text()
        assert launcher_log.count('"fault.injected"') == len(faults)
    except AssertionError:
        print(procs.logs())
        raise
    finally:
        client.close()
        procs.stop_all()


def _toml_list(argv: list[str]) -> str:
    # A JSON array of strings is a TOML array too.
    return json.dumps(argv)


def _approve_quietly(client: Client) -> None:
    with contextlib.suppress(Exception):
        task = client.request(f"conveyor.status.task.{ITEM}")
        if "awaiting approval" in task.get("last_reason", ""):
            client.command("approve", {"id": ITEM})


STALE_SCRIPT = """\
import os, pathlib, signal, sys

out, stage, item, fail_visits, kill_visit, pidfile = sys.argv[1:7]
visit = os.environ["CONVEYOR_VISIT"]
with open(out, "a") as log:
    log.write(f"{stage} {item} {visit}\\n")
if visit == kill_visit:
    # The launcher dies while the deploy runs, and stays dead past the Reaper's grace.
    os.kill(int(pathlib.Path(pidfile).read_text()), signal.SIGKILL)
sys.exit(1 if visit in fail_visits.split(",") else 0)
"""


def test_a_reaped_deploy_reads_no_verdict_rather_than_the_previous_visits(
    tmp_path: Path, nats_url: str
) -> None:
    # Given staging succeeds on visit 1 and production fails on visit 1 (back to
    # development), and the second staging visit kills the launcher mid-deploy
    script = tmp_path / "stale_script.py"
    script.write_text(STALE_SCRIPT)
    out, pidfile = tmp_path / "deploys.txt", tmp_path / "launcher.pid"

    def _command(fail_visits: str, kill_visit: str) -> list[str]:
        argv = [str(script), str(out), "{stage}", "{work_item}", fail_visits, kill_visit]
        return ["{python}", *argv, str(pidfile)]

    extra = EXTRA_TOML.format(
        staging=_toml_list(_command("", "2")), deploy=_toml_list(_command("1", ""))
    ) + ("[reaper]\ninterval_s = 0.5\nfinalize_grace_s = 1.0\nheartbeat_timeout_s = 2.0\n")
    procs = Processes(tmp_path, nats_url, extra_toml=extra)
    procs.start("control", "control")
    pidfile.write_text(str(procs.start("launcher", "launcher").pid))
    client = Client(nats_url)
    try:
        wait_ready(client, procs)
        assert client.command("submit", {"repo": "demo", "title": "Stale", "id": ITEM})["ok"]

        # When the launcher dies during the second staging deploy and the Reaper
        # finishes that job from its exit code (0), with no verdict written
        def _died() -> bool:
            _approve_quietly(client)
            return procs.procs["launcher"].poll() is not None

        wait_until(_died, what="the second staging deploy to kill the launcher", deadline_s=150)
        procs.procs.pop("launcher")
        third = f"{ITEM}.deploy-staging.3.work"
        wait_until(
            lambda: any(j.id == third for j in stored_jobs(client)),
            what="the staging stage to be retried",
        )

        # Then the gate read "missing" and retried the stage instead of passing on the
        # first visit's SUCCESS (which would have merged)
        task = client.request(f"conveyor.status.task.{ITEM}")
        assert task["stage"] == "deploy-staging"
        jobs = {j.id: j for j in stored_jobs(client)}
        assert f"{ITEM}.deploy-staging.2.merge" not in jobs
        assert jobs[f"{ITEM}.deploy-staging.2.work"].status == "done"
        # and once the launcher is back the item completes, deploying staging again
        pidfile.write_text(str(procs.start("launcher", "launcher").pid))
        task = drive(client, ITEM, "done", deadline_s=150)
        assert out.read_text().splitlines() == [
            f"deploy-staging {ITEM} 1",
            f"deploy {ITEM} 1",
            f"deploy-staging {ITEM} 2",
            f"deploy-staging {ITEM} 3",
            f"deploy {ITEM} 2",
        ]
        back = [e for e in task["history"] if (e["old"], e["new"]) == ("deploy", "development")]
        assert len(back) == 1
    except AssertionError:
        print(procs.logs())
        raise
    finally:
        client.close()
        procs.stop_all()
