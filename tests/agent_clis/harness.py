"""Runs a real agent CLI through its adapter's plan and parser, bounded by a timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from gateways.agents.base import Activity, AgentAdapter, AgentRequest, AgentResult
from tests.fakes.models import FakeModel, Fault

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class Run:
    result: AgentResult
    activities: list[Activity] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False

    def explain(self) -> str:
        out, err = self.stdout[-4000:], self.stderr[-4000:]
        return f"result={self.result}\n--- stdout\n{out}\n--- stderr\n{err}"


def request(binary: str, workdir: Path, run_dir: Path, base_url: str, **kw: object) -> AgentRequest:
    env = {"PATH": f"{Path(binary).parent}:{BASE_PATH}", "LANG": "C.UTF-8"}
    return AgentRequest(
        binary=binary,
        workdir=workdir,
        run_dir=run_dir,
        env=env,
        base_url=base_url,
        api_key="dummy",
        as_root=os.geteuid() == 0,
        **kw,  # type: ignore[arg-type]
    )


def run_agent(adapter: AgentAdapter, req: AgentRequest, timeout_s: float = 60) -> Run:
    """Run the CLI, then feed its stdout and stderr lines to the adapter's parser."""
    plan = adapter.plan(req)
    plan.materialize()
    proc = subprocess.Popen(
        plan.argv,
        cwd=plan.cwd,
        env=plan.env,
        stdin=subprocess.DEVNULL if plan.stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(plan.stdin, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    # The CLI's own children (Codex's native binary, shells it spawned) go with the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    parser = adapter.parser()
    activities: list[Activity] = []
    for line in stdout.splitlines():
        activities += parser.feed(line, "stdout")
    for line in stderr.splitlines():
        activities += parser.feed(line, "stderr")
    result = parser.finish(None if timed_out else proc.returncode)
    return Run(result, activities, stdout, stderr, timed_out)


def run_against_fault(
    adapter: AgentAdapter,
    binary: str,
    fake: FakeModel,
    fault: Fault,
    workdir: Path,
    run_dir: Path,
    **kw: object,
) -> Run:
    """Run the CLI once against a model that answers every call with `fault`."""
    fake.fail_always(fault)
    req = request(binary, workdir, run_dir, fake.url, prompt="Create hello.txt", **kw)
    return run_agent(adapter, req, timeout_s=60)
