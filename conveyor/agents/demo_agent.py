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
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import yaml

from conveyor import validate
from conveyor.clock import SystemClock, iso
from conveyor.errors import ConveyorError, InvalidField

Directive = tuple[str, int | None]
"""A role's scripted behaviour and the last visit it applies to (None: every visit)."""

ROLES = frozenset({"analyst", "architect", "developer", "reviewer", "tester", "deployer"})
"""Roles the demo agent can play (`CONVEYOR_ROLE`)."""

BEHAVIOURS = frozenset({"ok", "fail", "request_changes", "crash", "hang", "die"})
"""Directive behaviours besides `slow:<seconds>`."""

COMMAND_TIMEOUT_S = 600.0
"""How long the tester's check command and the deployer's deploy command may run."""

CRASH_EXIT_CODE = 3
"""Exit code of the `crash` behaviour."""

USAGE_EXIT_CODE = 2
"""Exit code when the environment does not describe a job the agent can do."""

_DIRECTIVE_LINE = re.compile(r"[ \t]*demo:(.*)")
_COUNT = re.compile(r"[0-9]{1,9}", re.ASCII)
_SECONDS = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?", re.ASCII)
_VISIT = re.compile(r"[1-9][0-9]{0,8}", re.ASCII)
_MAX_TOKEN_ECHO = 60
_OUTPUT_TAIL_LINES = 60
_PROMPT_EXCERPT_CHARS = 4000
_YAML_WIDTH = 4096
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class UnsafePath(ConveyorError):
    """A path the agent was about to write leads outside the worktree (a symlink)."""


# --------------------------------------------------------------------------- directives


def _parse(text: str) -> tuple[dict[str, Directive], list[str]]:
    """Return the directives found in `text` and a warning per ignored token."""
    found: dict[str, Directive] = {}
    warnings: list[str] = []
    for line in text.splitlines():
        match = _DIRECTIVE_LINE.fullmatch(line)
        if match is None:
            continue
        for token in match.group(1).split():
            parsed = _parse_token(token)
            if isinstance(parsed, str):
                warnings.append(f"ignoring demo directive {_echo(token)}: {parsed}")
            else:
                role, directive = parsed
                found[role] = directive
    return found, warnings


def _parse_token(token: str) -> tuple[str, Directive] | str:
    """Parse `role=behaviour[*N|*always]`; a string return is why it was refused."""
    role, eq, rest = token.partition("=")
    if not eq:
        return "expected role=behaviour"
    if role not in ROLES:
        return "unknown role"
    behaviour, star, count_text = rest.partition("*")
    count: int | None = 1
    if star:
        if count_text == "always":
            count = None
        elif _COUNT.fullmatch(count_text):
            count = int(count_text)
        else:
            return "count must be a number or 'always'"
    if behaviour.startswith("slow:"):
        if not _SECONDS.fullmatch(behaviour.removeprefix("slow:")):
            return "slow needs seconds, e.g. slow:2 or slow:0.5"
    elif behaviour not in BEHAVIOURS:
        return "unknown behaviour"
    elif behaviour == "request_changes" and role != "reviewer":
        return "request_changes applies to the reviewer only"
    return role, (behaviour, count)


def parse_directives(text: str) -> dict[str, Directive]:
    """Return role -> (behaviour, N or None for always) from the `demo:` lines of `text`.

    A directive line starts (after spaces) with `demo:` followed by
    whitespace-separated `role=behaviour[*N]` tokens. N defaults to 1, `*0`
    never applies and `*always` applies on every visit. A later token for the
    same role wins. Unknown roles, behaviours and malformed tokens are dropped.
    """
    return _parse(text)[0]


def applies(directive: Directive, visit: int) -> bool:
    """Whether `directive` steers the run on 1-based `visit` of the stage."""
    _, last_visit = directive
    return last_visit is None or visit <= last_visit


def _echo(token: str) -> str:
    shown = token if len(token) <= _MAX_TOKEN_ECHO else token[:_MAX_TOKEN_ECHO] + "..."
    return ascii(shown)


# --------------------------------------------------------------------------- job


@dataclass(frozen=True)
class Job:
    """What the launcher asked for, read from the environment and stdin."""

    role: str
    item_id: str
    title: str
    repo: str
    stage: str
    visit: int
    attempt: int
    check_command: list[str] | None
    deploy_command: list[str] | None
    prompt: str
    root: Path

    @property
    def slug_id(self) -> str:
        """The id as a Python module name: `DEMO-1` -> `demo_1`."""
        return self.item_id.lower().replace("-", "_")

    @property
    def item_dir(self) -> tuple[str, ...]:
        """Path parts of the work item's artifact directory, relative to the worktree."""
        return ("docs", "work-items", self.item_id)


def _clean_line(value: str, limit: int = validate.MAX_TITLE) -> str:
    """Make untrusted text a single printable line: no controls, no line breaks."""
    kept = "".join(" " if unicodedata.category(ch) in _DROPPED_CATEGORIES else ch for ch in value)
    return " ".join(kept.split())[:limit].strip()


def _positive_int(env: dict[str, str], name: str) -> int:
    raw = env.get(name, "").strip() or "1"
    if not _VISIT.fullmatch(raw):
        raise InvalidField(name, "must be a positive integer")
    return int(raw)


def _argv(env: dict[str, str], name: str) -> list[str] | None:
    """Decode a JSON array argv; absent, empty or `[]` means no command."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as err:
        raise InvalidField(name, "must be a JSON array of strings") from err
    if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
        raise InvalidField(name, "must be a JSON array of strings")
    if not value:
        return None
    if not value[0] or any("\x00" in arg for arg in value):
        raise InvalidField(name, "must name a program and contain no NUL bytes")
    return value


def load_job(env: dict[str, str], prompt: str, root: Path) -> Job:
    """Validate the launcher's environment; raise `InvalidField` naming the variable."""
    role = env.get("CONVEYOR_ROLE", "")
    if role not in ROLES:
        raise InvalidField("CONVEYOR_ROLE", f"must be one of {', '.join(sorted(ROLES))}")
    item_id = validate.work_item_id(env.get("CONVEYOR_WORK_ITEM"), "CONVEYOR_WORK_ITEM")
    stage = env.get("CONVEYOR_STAGE", "")
    if role == "deployer" and stage not in ("deploy-staging", "deploy"):
        raise InvalidField("CONVEYOR_STAGE", "the deployer runs on deploy-staging or deploy")
    return Job(
        role=role,
        item_id=item_id,
        title=_clean_line(env.get("CONVEYOR_TITLE", "")) or item_id,
        repo=_clean_line(env.get("CONVEYOR_REPO", ""), 64),
        stage=_clean_line(stage, 64),
        visit=_positive_int(env, "CONVEYOR_VISIT"),
        attempt=_positive_int(env, "CONVEYOR_ATTEMPT"),
        check_command=_argv(env, "CONVEYOR_CHECK_COMMAND"),
        deploy_command=_argv(env, "CONVEYOR_DEPLOY_COMMAND"),
        prompt=prompt,
        root=root,
    )


# --------------------------------------------------------------------------- output


def _say(line: str) -> None:
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def _warn(line: str) -> None:
    sys.stderr.write(f"demo-agent: warning: {line}\n")
    sys.stderr.flush()


def _result(role: str, outcome: str) -> None:
    _say(
        json.dumps(
            {
                "type": "result",
                "role": role,
                "outcome": outcome,
                "usage": {"input_tokens": 0, "output_tokens": 0},
                "total_cost_usd": 0.0,
            }
        )
    )


def _yaml(data: object) -> str:
    return yaml.safe_dump(
        data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=_YAML_WIDTH
    )


def front_matter(fields: dict[str, object], body: str) -> str:
    """Render a markdown artifact: YAML front matter between `---` lines, then `body`."""
    return f"---\n{_yaml(fields)}---\n\n{body.rstrip()}\n"


def _ensure_dir(root: Path, parts: tuple[str, ...]) -> Path:
    """Create `root/parts...` one level at a time, refusing any symlink on the way."""
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise UnsafePath(f"{current} is a symlink; refusing to write through it")
        current.mkdir(exist_ok=True)
    return current


def _write(root: Path, relative: str, text: str) -> Path:
    """Atomically write `text` to `root/relative`; a symlink at the target is replaced."""
    *dirs, name = relative.split("/")
    directory = _ensure_dir(root, tuple(dirs))
    target = directory / name
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(text.encode())
    os.replace(tmp, target)
    return target


def _artifact(job: Job, name: str) -> str:
    return "/".join((*job.item_dir, name))


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class CommandRun:
    """Outcome of a check or deploy command."""

    shown: str
    exit_code: int | None
    output: str
    note: str
    ok: bool
    """No command was configured, or the command exited 0."""


def _run_command(argv: list[str] | None, root: Path) -> CommandRun:
    if argv is None:
        return CommandRun("none", None, "", "no command configured", ok=True)
    shown = shlex.join(argv)
    _say(f"demo-agent: running {shown}")
    try:
        done = subprocess.run(
            argv,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        output = err.output.decode(errors="replace") if isinstance(err.output, bytes) else ""
        return CommandRun(shown, None, output, f"timed out after {COMMAND_TIMEOUT_S:g} s", ok=False)
    except OSError as err:
        return CommandRun(shown, None, "", f"could not start: {err.strerror or err}", ok=False)
    output = done.stdout.decode(errors="replace")
    return CommandRun(shown, done.returncode, output, "", ok=done.returncode == 0)


def _output_section(run: CommandRun) -> str:
    lines = run.output.splitlines()[-_OUTPUT_TAIL_LINES:]
    parts = [f"Command: `{run.shown}`", f"Exit code: {run.exit_code}"]
    if run.note:
        parts.append(f"Note: {run.note}")
    if lines:
        parts.append("Output (tail):\n\n~~~~text\n" + "\n".join(lines) + "\n~~~~")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- roles

_MALFORMED = "verdict: [unclosed\n"


def _analyst(job: Job, behaviour: str) -> str:
    brd_fields: dict[str, object] = {"type": "brd", "work_item_id": job.item_id, "title": job.title}
    brd_body = (
        f"# BRD: {job.title}\n\n"
        f"## Context\n\n{_quote(job.prompt[:_PROMPT_EXCERPT_CHARS]) or '> TBD'}\n\n"
        "## Business goals\n\n- BG-1: deliver the requested feature behind a tested module.\n\n"
        "## Scope\n\n- In: one feature module and its unit test.\n- Out: everything else.\n\n"
        "## Assumptions\n\n- A-1: the existing test suite is green.\n\n"
        "## Risks\n\n- R-1: the change breaks existing tests (mitigated by regression run).\n\n"
        "## Definition of done\n\n- The feature is merged, tested and deployed.\n"
    )
    if behaviour == "fail":
        brd = f"---\ntype: brd\nwork_item_id: {job.item_id}\n{_MALFORMED}---\n\n{brd_body}"
        _say("demo-agent: writing a malformed 01-brd.md on purpose")
    else:
        brd = front_matter(brd_fields, brd_body)
    _write(job.root, _artifact(job, "01-brd.md"), brd)
    _write(
        job.root,
        _artifact(job, "02-trz.md"),
        front_matter(
            {"type": "trz", "work_item_id": job.item_id},
            f"# Technical requirements: {job.title}\n\n"
            f"- Touched modules: `features/{job.slug_id}.py`, `tests/test_{job.slug_id}.py`.\n"
            f'- TRZ-1: `features.{job.slug_id}.feature()` returns `"{job.item_id} done"`.\n'
            "- API, database and configuration: no changes.\n",
        ),
    )
    _write(
        job.root,
        _artifact(job, "03-acceptance-criteria.md"),
        front_matter(
            {"type": "acceptance-criteria", "work_item_id": job.item_id},
            f"# Acceptance criteria: {job.title}\n\n"
            f"- AC-1: Given the repository, when `feature()` is called, then it returns "
            f'`"{job.item_id} done"`. PASS/FAIL: the unit test TC-01.\n'
            "- AC-2: The existing test suite still passes. PASS/FAIL: the regression run.\n",
        ),
    )
    plan = {
        "work_item": job.item_id,
        "title": job.title,
        "repo": job.repo,
        "stage": "analysis",
        "tests": [
            {
                "id": "TC-01",
                "type": "unit",
                "description": f"feature() returns '{job.item_id} done'",
                "module": f"features.{job.slug_id}",
                "expected": "PASS",
            }
        ],
        "regression": True,
    }
    _write(job.root, _artifact(job, "04-test-plan.yaml"), _yaml(plan))
    _say("demo-agent: wrote 01-brd.md 02-trz.md 03-acceptance-criteria.md 04-test-plan.yaml")
    return "fail" if behaviour == "fail" else "ok"


def _adr_name(job: Job) -> str:
    return f"06-adr/ADR-001-{validate.slug(job.title)}.md"


def _architect(job: Job, behaviour: str) -> str:
    adr_body = (
        f"# ADR-001: {job.title}\n\n"
        "## Context\n\nThe work item needs one self-contained feature.\n\n"
        f"## Decision\n\nAdd `features/{job.slug_id}.py` with a pure `feature()` function and "
        "cover it with a unit test discovered by the existing test command.\n\n"
        "## Consequences\n\nNo new dependencies, no infrastructure or data changes.\n"
    )
    if behaviour == "fail":
        adr = f"---\ntype: adr\nwork_item_id: {job.item_id}\n{_MALFORMED}---\n\n{adr_body}"
        _say("demo-agent: writing a malformed ADR on purpose")
    else:
        adr = front_matter(
            {"type": "adr", "work_item_id": job.item_id, "status": "accepted", "title": job.title},
            adr_body,
        )
    _write(job.root, _artifact(job, _adr_name(job)), adr)
    _write(
        job.root,
        _artifact(job, "07-infra-requirements.md"),
        front_matter(
            {"type": "infra-requirements", "work_item_id": job.item_id},
            "# Infrastructure requirements\n\n- IR-1: none beyond the existing test runner.\n",
        ),
    )
    _write(
        job.root,
        _artifact(job, "10-tech-risks.md"),
        front_matter(
            {"type": "tech-risks", "work_item_id": job.item_id},
            "# Technical risks\n\n"
            "| id | probability | impact | mitigation | verification |\n"
            "|---|---|---|---|---|\n"
            "| TR-1 | low | low | unit test | CI run |\n",
        ),
    )
    _say(f"demo-agent: wrote {_adr_name(job)} 07-infra-requirements.md 10-tech-risks.md")
    return "fail" if behaviour == "fail" else "ok"


def _feature_source(job: Job, *, broken: bool) -> str:
    # Only the validated id (A-Z, 0-9, one hyphen) reaches generated code; the title never does.
    returned = f"{job.item_id} not done" if broken else f"{job.item_id} done"
    return (
        f'"""Feature delivered for {job.item_id}."""\n\n\n'
        "def feature() -> str:\n"
        f'    """Return the delivery marker of {job.item_id}."""\n'
        f'    return "{returned}"\n'
    )


def _test_source(job: Job) -> str:
    class_name = job.item_id.replace("-", "") + "FeatureTest"
    return (
        f'"""Tests of the {job.item_id} feature."""\n\n'
        "import unittest\n\n"
        f"from features.{job.slug_id} import feature\n\n\n"
        f"class {class_name}(unittest.TestCase):\n"
        "    def test_feature_reports_done(self) -> None:\n"
        f'        self.assertEqual(feature(), "{job.item_id} done")\n\n\n'
        'if __name__ == "__main__":\n'
        "    unittest.main()\n"
    )


def _developer(job: Job, behaviour: str) -> str:
    broken = behaviour == "fail"
    changed: list[str] = []
    if not (job.root / "features" / "__init__.py").exists():
        _write(job.root, "features/__init__.py", '"""Features delivered by work items."""\n')
        changed.append("features/__init__.py")
    if not (job.root / "tests").exists():
        _write(job.root, "tests/__init__.py", '"""Tests."""\n')
        changed.append("tests/__init__.py")
    feature_path = f"features/{job.slug_id}.py"
    test_path = f"tests/test_{job.slug_id}.py"
    _write(job.root, feature_path, _feature_source(job, broken=broken))
    _write(job.root, test_path, _test_source(job))
    changed += [feature_path, test_path]
    if broken:
        _say("demo-agent: wrote a feature that fails its test on purpose")
    rework = "" if job.visit == 1 else f"Rework visit {job.visit}: rewrote the feature.\n\n"
    _write(
        job.root,
        _artifact(job, "11-dev-notes.md"),
        front_matter(
            {"type": "dev-notes", "work_item_id": job.item_id, "visit": job.visit},
            f"# Developer notes: {job.title}\n\n{rework}Changed files:\n\n"
            + "\n".join(f"- `{path}`" for path in changed)
            + "\n",
        ),
    )
    _say(f"demo-agent: changed {' '.join(changed)}; wrote 11-dev-notes.md")
    return "fail" if broken else "ok"


def _reviewer(job: Job, behaviour: str) -> str:
    if behaviour == "fail":
        _write(
            job.root,
            _artifact(job, "12-review.md"),
            f"---\ntype: review\nwork_item_id: {job.item_id}\n{_MALFORMED}---\n\nBroken.\n",
        )
        _say("demo-agent: writing a malformed 12-review.md on purpose")
        return "fail"
    changes = behaviour == "request_changes"
    findings: list[str] = []
    if changes:
        findings.append("- P1: the scripted reviewer requests changes on this visit.")
    if not (job.root / "features" / f"{job.slug_id}.py").exists():
        findings.append(f"- P2: `features/{job.slug_id}.py` was not found in the worktree.")
    findings.append("- P3: none.")
    verdict = "REQUEST_CHANGES" if changes else "APPROVED"
    _write(
        job.root,
        _artifact(job, "12-review.md"),
        front_matter(
            {
                "type": "review",
                "work_item_id": job.item_id,
                "verdict": verdict,
                "version": job.visit,
            },
            f"# Review v{job.visit}: {job.title}\n\n## Findings\n\n" + "\n".join(findings) + "\n",
        ),
    )
    _say(f"demo-agent: wrote 12-review.md verdict={verdict}")
    return "request_changes" if changes else "ok"


def _tester(job: Job, behaviour: str) -> str:
    if behaviour == "fail":
        run = CommandRun("none", None, "", "the scripted tester fails this visit", ok=False)
    else:
        run = _run_command(job.check_command, job.root)
    passed = run.ok
    result = "PASS" if passed else "FAIL"
    _write(
        job.root,
        _artifact(job, "13-test-report.md"),
        front_matter(
            {
                "type": "test-report",
                "work_item_id": job.item_id,
                "result": result,
                "command": run.shown,
                "exit_code": run.exit_code,
            },
            f"# Test report: {job.title}\n\n"
            "| test | expected | actual |\n|---|---|---|\n"
            f"| TC-01 | PASS | {result} |\n\n" + _output_section(run),
        ),
    )
    _say(f"demo-agent: wrote 13-test-report.md result={result}")
    return "ok" if passed else "fail"


def _deployer(job: Job, behaviour: str) -> str:
    if behaviour == "fail":
        run = CommandRun("none", None, "", "the scripted deployer fails this visit", ok=False)
    else:
        run = _run_command(job.deploy_command, job.root)
    succeeded = run.ok
    status = "SUCCESS" if succeeded else "FAILED"
    now = iso(SystemClock().now())
    body = f"# Deploy log: {job.title}\n\n" + _output_section(run)
    if job.stage == "deploy-staging":
        name = "15-staging-log.md"
        fields: dict[str, object] = {
            "staging_status": status,
            "timestamp": now,
            "base_url": "",
            "work_item": job.item_id,
            "command": run.shown,
            "exit_code": run.exit_code,
        }
    else:
        name = "14-deploy-log.md"
        fields = {
            "deploy_status": status,
            "work_item": job.item_id,
            "timestamp": now,
            "command": run.shown,
            "exit_code": run.exit_code,
        }
    _write(job.root, _artifact(job, name), front_matter(fields, body))
    _say(f"demo-agent: wrote {name} status={status}")
    return "ok" if succeeded else "fail"


_ROLE_HANDLERS: dict[str, Callable[[Job, str], str]] = {
    "analyst": _analyst,
    "architect": _architect,
    "developer": _developer,
    "reviewer": _reviewer,
    "tester": _tester,
    "deployer": _deployer,
}


def _partial(job: Job) -> tuple[str, str]:
    """The role's main artifact, cut off mid-write, for the `die` behaviour."""
    if job.role == "developer":
        return f"features/{job.slug_id}.py", "def feature() -> str:\n"
    name = {
        "analyst": "01-brd.md",
        "architect": _adr_name(job),
        "reviewer": "12-review.md",
        "tester": "13-test-report.md",
        "deployer": "15-staging-log.md" if job.stage == "deploy-staging" else "14-deploy-log.md",
    }[job.role]
    return _artifact(job, name), f"---\nwork_item_id: {job.item_id}\nstat"


def _hang() -> NoReturn:
    wake = threading.Event()
    while True:
        wake.wait(3600.0)


def _die(job: Job) -> NoReturn:
    relative, text = _partial(job)
    _write(job.root, relative, text)
    _say(f"demo-agent: wrote a partial {relative}; killing myself")
    os.kill(os.getpid(), signal.SIGKILL)
    _hang()


# --------------------------------------------------------------------------- entry point


def _read_prompt() -> str:
    if sys.stdin is None:
        return ""
    return sys.stdin.buffer.read().decode(errors="replace")


def run(job: Job, directives: dict[str, Directive]) -> int:
    """Play `job.role` under the directive for it, if any applies; return the exit code."""
    directive = directives.get(job.role)
    behaviour = directive[0] if directive and applies(directive, job.visit) else "ok"
    _say(
        f"demo-agent: {job.role} {job.item_id} stage={job.stage or '-'} visit={job.visit} "
        f"attempt={job.attempt} behaviour={behaviour}"
    )
    if behaviour == "crash":
        _say("demo-agent: crashing on purpose")
        return CRASH_EXIT_CODE
    if behaviour == "hang":
        _say("demo-agent: hanging on purpose until killed")
        _hang()
    if behaviour == "die":
        _die(job)
    if behaviour.startswith("slow:"):
        seconds = float(behaviour.removeprefix("slow:"))
        _say(f"demo-agent: working slowly for {seconds:g} s")
        SystemClock().sleep(seconds)
        behaviour = "ok"
    outcome = _ROLE_HANDLERS[job.role](job, behaviour)
    _result(job.role, outcome)
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
    directives, warnings = _parse(prompt)
    for warning in warnings:
        _warn(warning)
    try:
        job = load_job(dict(os.environ), prompt, Path.cwd().resolve())
        return run(job, directives)
    except ConveyorError as err:
        sys.stderr.write(f"demo-agent: error: {err}\n")
        return USAGE_EXIT_CODE


if __name__ == "__main__":
    raise SystemExit(main())
