"""What the demo agent does in each role: the artifacts it writes, the commands it runs."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conveyor import validate
from conveyor.agents.demo_job import (
    Job,
    artifact,
    front_matter,
    quote,
    say,
    to_yaml,
    write_file,
)
from conveyor.clock import SystemClock, iso
from conveyor.pipeline import (
    ACCEPTANCE_CRITERIA,
    ADR_DIR,
    ANALYSIS_DOCS,
    APPROVED,
    BRD,
    DEPLOY_LOG,
    DEV_NOTES,
    FAILED,
    GATE_DEPLOY,
    GATE_STAGING,
    INFRA_REQUIREMENTS,
    REQUEST_CHANGES,
    REVIEW,
    ROLE_ANALYST,
    ROLE_ARCHITECT,
    ROLE_DEPLOYER,
    ROLE_DEVELOPER,
    ROLE_REVIEWER,
    ROLE_TESTER,
    STAGING_LOG,
    SUCCESS,
    TECH_RISKS,
    TEST_PLAN,
    TEST_REPORT,
    TESTS_FAIL,
    TESTS_PASS,
    TRZ,
)

COMMAND_TIMEOUT_S = 600.0
"""How long the tester's check command and the deployer's deploy command may run."""

_OUTPUT_TAIL_LINES = 60
_PROMPT_EXCERPT_CHARS = 4000


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
    say(f"demo-agent: running {shown}")
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


_MALFORMED = "verdict: [unclosed\n"


def _work_item(prompt: str) -> str:
    """The work item's part of a prompt (it comes last, after the role text and the contract)."""
    _, marker, rest = prompt.rpartition("\n## Work item ")
    return marker.lstrip("\n") + rest if marker else prompt


def _analyst(job: Job, behaviour: str) -> str:
    brd_fields: dict[str, object] = {"type": "brd", "work_item_id": job.item_id, "title": job.title}
    brd_body = (
        f"# BRD: {job.title}\n\n"
        f"## Context\n\n{quote(_work_item(job.prompt)[:_PROMPT_EXCERPT_CHARS]) or '> TBD'}\n\n"
        "## Business goals\n\n- BG-1: deliver the requested feature behind a tested module.\n\n"
        "## Scope\n\n- In: one feature module and its unit test.\n- Out: everything else.\n\n"
        "## Assumptions\n\n- A-1: the existing test suite is green.\n\n"
        "## Risks\n\n- R-1: the change breaks existing tests (mitigated by regression run).\n\n"
        "## Definition of done\n\n- The feature is merged, tested and deployed.\n"
    )
    if behaviour == "fail":
        brd = f"---\ntype: brd\nwork_item_id: {job.item_id}\n{_MALFORMED}---\n\n{brd_body}"
        say(f"demo-agent: writing a malformed {BRD} on purpose")
    else:
        brd = front_matter(brd_fields, brd_body)
    write_file(job.root, artifact(job, BRD), brd)
    write_file(
        job.root,
        artifact(job, TRZ),
        front_matter(
            {"type": "trz", "work_item_id": job.item_id},
            f"# Technical requirements: {job.title}\n\n"
            f"- Touched modules: `features/{job.slug_id}.py`, `tests/test_{job.slug_id}.py`.\n"
            f'- TRZ-1: `features.{job.slug_id}.feature()` returns `"{job.item_id} done"`.\n'
            "- API, database and configuration: no changes.\n",
        ),
    )
    write_file(
        job.root,
        artifact(job, ACCEPTANCE_CRITERIA),
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
                "expected": TESTS_PASS,
            }
        ],
        "regression": True,
    }
    write_file(job.root, artifact(job, TEST_PLAN), to_yaml(plan))
    say(f"demo-agent: wrote {' '.join((*ANALYSIS_DOCS, TEST_PLAN))}")
    return "fail" if behaviour == "fail" else "ok"


def _adr_name(job: Job) -> str:
    return f"{ADR_DIR}/ADR-001-{validate.slug(job.title)}.md"


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
        say("demo-agent: writing a malformed ADR on purpose")
    else:
        adr = front_matter(
            {"type": "adr", "work_item_id": job.item_id, "status": "accepted", "title": job.title},
            adr_body,
        )
    write_file(job.root, artifact(job, _adr_name(job)), adr)
    write_file(
        job.root,
        artifact(job, INFRA_REQUIREMENTS),
        front_matter(
            {"type": "infra-requirements", "work_item_id": job.item_id},
            "# Infrastructure requirements\n\n- IR-1: none beyond the existing test runner.\n",
        ),
    )
    write_file(
        job.root,
        artifact(job, TECH_RISKS),
        front_matter(
            {"type": "tech-risks", "work_item_id": job.item_id},
            "# Technical risks\n\n"
            "| id | probability | impact | mitigation | verification |\n"
            "|---|---|---|---|---|\n"
            "| TR-1 | low | low | unit test | CI run |\n",
        ),
    )
    say(f"demo-agent: wrote {_adr_name(job)} {INFRA_REQUIREMENTS} {TECH_RISKS}")
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
        write_file(job.root, "features/__init__.py", '"""Features delivered by work items."""\n')
        changed.append("features/__init__.py")
    if not (job.root / "tests").exists():
        write_file(job.root, "tests/__init__.py", '"""Tests."""\n')
        changed.append("tests/__init__.py")
    feature_path = f"features/{job.slug_id}.py"
    test_path = f"tests/test_{job.slug_id}.py"
    write_file(job.root, feature_path, _feature_source(job, broken=broken))
    write_file(job.root, test_path, _test_source(job))
    changed += [feature_path, test_path]
    if broken:
        say("demo-agent: wrote a feature that fails its test on purpose")
    rework = "" if job.visit == 1 else f"Rework visit {job.visit}: rewrote the feature.\n\n"
    write_file(
        job.root,
        artifact(job, DEV_NOTES),
        front_matter(
            {"type": "dev-notes", "work_item_id": job.item_id, "visit": job.visit},
            f"# Developer notes: {job.title}\n\n{rework}Changed files:\n\n"
            + "\n".join(f"- `{path}`" for path in changed)
            + "\n",
        ),
    )
    say(f"demo-agent: changed {' '.join(changed)}; wrote {DEV_NOTES}")
    return "fail" if broken else "ok"


def _reviewer(job: Job, behaviour: str) -> str:
    if behaviour == "fail":
        write_file(
            job.root,
            artifact(job, REVIEW),
            f"---\ntype: review\nwork_item_id: {job.item_id}\n{_MALFORMED}---\n\nBroken.\n",
        )
        say("demo-agent: writing a malformed 12-review.md on purpose")
        return "fail"
    changes = behaviour == "request_changes"
    findings: list[str] = []
    if changes:
        findings.append("- P1: the scripted reviewer requests changes on this visit.")
    if not (job.root / "features" / f"{job.slug_id}.py").exists():
        findings.append(f"- P2: `features/{job.slug_id}.py` was not found in the worktree.")
    findings.append("- P3: none.")
    verdict = REQUEST_CHANGES if changes else APPROVED
    write_file(
        job.root,
        artifact(job, REVIEW),
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
    say(f"demo-agent: wrote 12-review.md verdict={verdict}")
    return "request_changes" if changes else "ok"


def _tester(job: Job, behaviour: str) -> str:
    if behaviour == "fail":
        run = CommandRun("none", None, "", "the scripted tester fails this visit", ok=False)
    else:
        run = _run_command(job.check_command, job.root)
    passed = run.ok
    result = TESTS_PASS if passed else TESTS_FAIL
    write_file(
        job.root,
        artifact(job, TEST_REPORT),
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
    say(f"demo-agent: wrote {TEST_REPORT} result={result}")
    return "ok" if passed else "fail"


def _deployer(job: Job, behaviour: str) -> str:
    if behaviour == "fail":
        run = CommandRun("none", None, "", "the scripted deployer fails this visit", ok=False)
    else:
        run = _run_command(job.deploy_command, job.root)
    succeeded = run.ok
    status = SUCCESS if succeeded else FAILED
    now = iso(SystemClock().now())
    body = f"# Deploy log: {job.title}\n\n" + _output_section(run)
    if job.gate == GATE_STAGING:
        name = STAGING_LOG
        fields: dict[str, object] = {
            GATE_STAGING: status,
            "timestamp": now,
            "base_url": "",
            "work_item": job.item_id,
            "command": run.shown,
            "exit_code": run.exit_code,
        }
    else:
        name = DEPLOY_LOG
        fields = {
            GATE_DEPLOY: status,
            "work_item": job.item_id,
            "timestamp": now,
            "command": run.shown,
            "exit_code": run.exit_code,
        }
    write_file(job.root, artifact(job, name), front_matter(fields, body))
    say(f"demo-agent: wrote {name} status={status}")
    return "ok" if succeeded else "fail"


ROLE_HANDLERS: dict[str, Callable[[Job, str], str]] = {
    ROLE_ANALYST: _analyst,
    ROLE_ARCHITECT: _architect,
    ROLE_DEVELOPER: _developer,
    ROLE_REVIEWER: _reviewer,
    ROLE_TESTER: _tester,
    ROLE_DEPLOYER: _deployer,
}


def partial_artifact(job: Job) -> tuple[str, str]:
    """The role's main artifact, cut off mid-write, for the `die` behaviour."""
    if job.role == ROLE_DEVELOPER:
        return f"features/{job.slug_id}.py", "def feature() -> str:\n"
    name = {
        ROLE_ANALYST: BRD,
        ROLE_ARCHITECT: _adr_name(job),
        ROLE_REVIEWER: REVIEW,
        ROLE_TESTER: TEST_REPORT,
        ROLE_DEPLOYER: STAGING_LOG if job.gate == GATE_STAGING else DEPLOY_LOG,
    }[job.role]
    return artifact(job, name), f"---\nwork_item_id: {job.item_id}\nstat"
