"""The built-in scripted agent: `python -m conveyor.demo_agent`.

Launched by Conveyor once per stage, with cwd = the task's git worktree, the
prompt on stdin and the job described by `CONVEYOR_*` environment variables.
It writes the role's artifacts under `docs/work-items/<ID>/` (the developer
also changes code and tests), prints short progress lines, and ends with one
JSON `result` line. It never uses a shell.

Tests steer it through every branch of the pipeline with prompt lines such as
`demo: developer=fail*1 reviewer=request_changes tester=slow:2`; see
`parse_directives`. The prompt is work-item text, so a bad directive is
ignored with a warning, never fatal.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from conveyor.agents.demo_directives import Directive, applies, parse_with_warnings
from conveyor.agents.demo_job import Job, load_job, result_line, say, warn, write_file
from conveyor.agents.demo_roles import ROLE_HANDLERS, partial_artifact
from conveyor.clock import SystemClock
from conveyor.errors import ConveyorError

CRASH_EXIT_CODE = 3
"""Exit code of the `crash` behaviour."""

USAGE_EXIT_CODE = 2
"""Exit code when the environment does not describe a job the agent can do."""


def _hang() -> NoReturn:
    wake = threading.Event()
    while True:
        wake.wait(3600.0)


def _die(job: Job) -> NoReturn:
    relative, text = partial_artifact(job)
    write_file(job.root, relative, text)
    say(f"demo-agent: wrote a partial {relative}; killing myself")
    os.kill(os.getpid(), signal.SIGKILL)
    _hang()


def _read_prompt() -> str:
    if sys.stdin is None:
        return ""
    return sys.stdin.buffer.read().decode(errors="replace")


def run(job: Job, directives: dict[str, Directive]) -> int:
    """Play `job.role` under the directive for it, if any applies; return the exit code."""
    directive = directives.get(job.role)
    behaviour = directive[0] if directive and applies(directive, job.visit) else "ok"
    say(
        f"demo-agent: {job.role} {job.item_id} stage={job.stage or '-'} visit={job.visit} "
        f"attempt={job.attempt} behaviour={behaviour}"
    )
    if behaviour == "crash":
        say("demo-agent: crashing on purpose")
        return CRASH_EXIT_CODE
    if behaviour == "hang":
        say("demo-agent: hanging on purpose until killed")
        _hang()
    if behaviour == "die":
        _die(job)
    if behaviour.startswith("slow:"):
        seconds = float(behaviour.removeprefix("slow:"))
        say(f"demo-agent: working slowly for {seconds:g} s")
        SystemClock().sleep(seconds)
        behaviour = "ok"
    outcome = ROLE_HANDLERS[job.role](job, behaviour)
    result_line(job.role, outcome)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one scripted agent job described by the environment; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m conveyor.demo_agent",
        description="Conveyor's scripted demo agent. Configured by CONVEYOR_* variables; "
        "reads the prompt on stdin.",
    )
    parser.parse_args(argv)
    prompt = _read_prompt()
    directives, warnings = parse_with_warnings(prompt)
    for warning in warnings:
        warn(warning)
    try:
        job = load_job(dict(os.environ), prompt, Path.cwd().resolve())
        return run(job, directives)
    except ConveyorError as err:
        sys.stderr.write(f"demo-agent: error: {err}\n")
        return USAGE_EXIT_CODE


if __name__ == "__main__":
    raise SystemExit(main())
