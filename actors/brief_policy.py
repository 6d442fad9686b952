"""Rework briefs: what the next run of a role is told about why its work came back.

Every backward step (a rework or a retry) writes one, from the inputs its gate was
decided on: the review's findings, the failing test cases, the red check, the merge
step's error, the failed deploy's log tail, or which artifact and key were wrong.
Pure: no I/O, clock or logs.
"""

from __future__ import annotations

import re

import msgspec

from actors.gate_policy import GateInputs, GateResult
from actors.task_policy import Brief, Task
from conveyor.pipeline import (
    DEPLOY_LOG,
    GATE_CI_GREEN,
    GATE_DEPLOY,
    GATE_REVIEW,
    GATE_STAGING,
    GATE_TESTS,
    JOB_FAILED,
    OUTCOME_OVER_BUDGET,
    OUTCOME_STALLED,
    REVIEW,
    STAGING_LOG,
    STEP_MERGE,
    TEST_REPORT,
    artifact_path,
)

MAX_BRIEF_CHARS = 4096
"""A brief's text is cut to this many characters (its tail for logs, its head otherwise)."""
MAX_BRIEFS = 20
"""Briefs a task keeps; older ones are dropped."""

KIND_REVIEW = "review"
KIND_TESTS = "tests"
KIND_CI = "ci"
KIND_NO_WORK = "no_work"
KIND_MERGE = "merge"
KIND_DEPLOY = "deploy"
KIND_GATE = "gate"
KIND_STALLED = "stalled"
KIND_OVER_BUDGET = "over_budget"

_SILENT_FOR = re.compile(r"no output for ([0-9.]+)s")

_FAILING = re.compile(r"\bFAIL(ED|ING|URE)?\b|\berror\b", re.IGNORECASE)
_LOG_FILES = {GATE_STAGING: STAGING_LOG, GATE_DEPLOY: DEPLOY_LOG}


def for_gate(
    gate: str, task: Task, inputs: GateInputs, result: GateResult, *, now: float
) -> Brief | None:
    """The brief a failed gate leaves for the stage's next run; None when it passed or waits."""
    if result.verdict in ("pass", "wait"):
        return None
    kind, text = _evidence(gate, task, inputs, result)
    head = inputs.branch_head or task.head_sha
    return Brief(kind=kind, stage=task.stage, head=head, text=text, at=now)


def noted(
    task: Task, gate: str, inputs: GateInputs | None, result: GateResult, *, now: float
) -> tuple[Task, str]:
    """The task with the brief its failed gate leaves stored, and the brief's text ("" if none)."""
    brief = for_gate(gate, task, inputs, result, now=now) if inputs is not None else None
    return remember(task, brief) if brief is not None else (task, "")


def remember(task: Task, brief: Brief) -> tuple[Task, str]:
    """Store `brief` with the task, once per kind, stage and head (counted), and render it."""
    kept = list(task.briefs)
    for index, old in enumerate(kept):
        if (old.kind, old.stage, old.head) == (brief.kind, brief.stage, brief.head):
            brief = msgspec.structs.replace(brief, count=old.count + 1)
            del kept[index]
            break
    stored = msgspec.structs.replace(task, briefs=[*kept, brief][-MAX_BRIEFS:])
    return stored, render(brief)


def render(brief: Brief) -> str:
    """The brief as the agent's prompt carries it."""
    seen = f", seen {brief.count} times" if brief.count > 1 else ""
    at = f" at {brief.head[:12]}" if brief.head else ""
    return f"Sent back by the {brief.stage} gate ({brief.kind}{at}{seen}):\n{brief.text}"


def _evidence(gate: str, task: Task, inputs: GateInputs, result: GateResult) -> tuple[str, str]:
    if task.step == STEP_MERGE:
        return KIND_MERGE, _head(f"The merge step failed: {task.job_reason or result.reason}")
    if task.job_status == JOB_FAILED and task.job_outcome in KILLED:
        return _killed(task)
    if gate == GATE_CI_GREEN and inputs.visit_base and inputs.branch_head == inputs.visit_base:
        return KIND_NO_WORK, _head(
            f"You produced nothing: the visit committed no change to the branch. {result.reason}"
        )
    if gate == GATE_CI_GREEN and inputs.ci_state in ("failure", "error"):
        return KIND_CI, _red_check(inputs)
    if result.verdict == "rework":
        if gate == GATE_REVIEW:
            return KIND_REVIEW, _head(_body(_file(inputs, task, REVIEW)) or result.reason)
        if gate == GATE_TESTS:
            return KIND_TESTS, _head(_failing(_body(_file(inputs, task, TEST_REPORT))))
        if gate in _LOG_FILES:
            return KIND_DEPLOY, _tail(_body(_file(inputs, task, _LOG_FILES[gate])))
    return KIND_GATE, _head(result.reason)


def _red_check(inputs: GateInputs) -> str:
    """The red check's state, context and description, its URL, then its output's tail.

    The head goes first and the log's tail last, so cutting the brief to size keeps
    both what failed and the end of the output, where the failure is.
    """
    detail = inputs.ci_description or "no description"
    head = f"CI {inputs.ci_state} at {inputs.branch_head}: {detail}"
    if inputs.ci_target_url:
        head += f"\nDetails: {inputs.ci_target_url}"
    log = inputs.ci_log.strip()
    if not log:
        return _head(head)
    half = MAX_BRIEF_CHARS // 2
    if len(head) > half:
        head = head[: half - 1] + "…"
    head += "\nThe check's output ends with:\n"
    room = MAX_BRIEF_CHARS - len(head)
    return head + (log if len(log) <= room else "…" + log[-(room - 1) :])


def _killed(task: Task) -> tuple[str, str]:
    return killed(task.job_outcome, task.job_reason)


def killed(outcome: str, reason: str) -> tuple[str, str]:
    """Why Conveyor killed a run (it fell silent, or crossed a spending ceiling): kind, text."""
    if outcome == OUTCOME_STALLED:
        silent = _SILENT_FOR.search(reason)
        after = f" after {silent.group(1)} s without output" if silent else " without output"
        return KIND_STALLED, _head(
            f"Your last run was killed{after} ({reason}). Work in smaller steps, "
            "commit as you go and keep printing progress; do not wait on anything interactive."
        )
    return KIND_OVER_BUDGET, _head(
        f"Your last run was killed for crossing a spending ceiling: {reason}. "
        "Do the least work that meets the stage's contract: read only the files you need "
        "and keep the change small."
    )


KILLED = frozenset({OUTCOME_STALLED, OUTCOME_OVER_BUDGET})
"""Outcomes of runs Conveyor killed; their retries are told why."""


def _file(inputs: GateInputs, task: Task, name: str) -> str:
    return inputs.files.get(artifact_path(task.id, name)) or ""


def _body(text: str) -> str:
    """What follows a markdown artifact's front matter (all of it when there is none)."""
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":
        for index, line in enumerate(lines[1:], start=1):
            if line.strip() in ("---", "..."):
                return "\n".join(lines[index + 1 :]).strip()
    return text.strip()


def _failing(body: str) -> str:
    """The failing cases first, then the report itself."""
    failing = [line for line in body.splitlines() if _FAILING.search(line)]
    if not failing:
        return body
    return "Failing cases:\n" + "\n".join(failing) + "\n\nReport:\n" + body


def _head(text: str) -> str:
    return text if len(text) <= MAX_BRIEF_CHARS else text[: MAX_BRIEF_CHARS - 1] + "…"


def _tail(text: str) -> str:
    return text if len(text) <= MAX_BRIEF_CHARS else "…" + text[-(MAX_BRIEF_CHARS - 1) :]


def retry_brief(outcome: str, reason: str, attempt: int) -> str:
    """What the next attempt of a job Conveyor killed (stalled, over budget) is told; "" else."""
    if outcome not in KILLED:
        return ""
    kind, text = killed(outcome, reason)
    return f"Retried after a killed run ({kind}, attempt {attempt}):\n{text}"
