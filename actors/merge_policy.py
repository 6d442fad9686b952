"""Pure decisions of the merge step: when its candidate goes back to development, and why.

The merge step (`actors/jobs/merge_gate.py`) rebases the branch onto main, has the
rebased head re-tested and runs the repository's pre-merge checks in it. A rebase
conflict, a red check or a failing pre-merge check is not something another attempt
of the merge step can fix: only new work on the branch can. So the step ends done
with the outcome `rework` and why (`SendBack.text`), and its gate sends the task back
to development within the developer retry budget, the developer told what failed:
the conflicted files, the failing check's output. Anything else that stops a merge
(the forge away, a lost lease, a pending re-test) stays a failed attempt the queue
retries. Pure: no I/O, clock or logs.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from actors.gate_policy import GateResult
from actors.task_policy import Task
from bus.messages import JobOutcome
from conveyor.config import Config
from conveyor.pipeline import ON_FAIL_RETRY, OUTCOME_REWORK, ROLE_DEVELOPER, STEP_MERGE

MAX_DETAIL_CHARS = 3500
"""The evidence kept for the developer (an output's tail); the brief around it stays under
`brief_policy.MAX_BRIEF_CHARS`, so nothing of it is cut there."""
RED_STATES = frozenset({"failure", "error"})
"""Commit states that are a verdict on the code; `pending` or no status is not one (yet)."""
MAX_FILES_SHOWN = 50


class SendBack(msgspec.Struct, frozen=True, kw_only=True):
    """Why the merge candidate goes back to development."""

    summary: str
    """One line: the gate's reason, the history's cause, the escalation's text."""
    detail: str = ""
    """The evidence for the developer: the conflicted files, the output's tail."""

    @property
    def text(self) -> str:
        """What the merge job reports (`JobFinished.reason`): the summary, then the detail."""
        return f"{self.summary}\n{self.detail}" if self.detail else self.summary


# --- what the merge step found -------------------------------------------------------------


def conflict(files: Sequence[str]) -> SendBack:
    """Rebasing the branch onto main stopped on conflicts in `files`."""
    shown = list(files[:MAX_FILES_SHOWN])
    more = len(files) - len(shown)
    names = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
    detail = (
        "Conflicted files:\n"
        + "\n".join(f"- {name}" for name in shown)
        + (f"\n- … and {more} more" if more > 0 else "")
        + "\nMain changed these files since the branch left it. Bring main into the branch "
        "(merge or rebase origin/main), resolve the conflicts, keep the tests green, commit."
    )
    return SendBack(summary=f"rebase onto main conflicts in {names}", detail=_cut(detail))


def is_red(state: str | None) -> bool:
    """A commit state that fails the candidate (not one still to come)."""
    return state in RED_STATES


def red_check(
    *,
    state: str,
    head: str,
    rebased: bool,
    description: str = "",
    target_url: str = "",
    log: str = "",
) -> SendBack:
    """The CI of the merge candidate is red: the re-test of the rebased head, or the head's own."""
    what = f"re-test of the rebased head {head[:12]}" if rebased else f"CI of the head {head[:12]}"
    summary = f"{what} is red: {state}" + (f" ({description})" if description else "")
    lines = []
    if target_url:
        lines.append(f"Details: {target_url}")
    if rebased:
        lines.append("The branch passed on its own; rebased onto main it does not.")
    return SendBack(summary=summary, detail=_with_tail("\n".join(lines), "check's", log))


def failed_check(*, command: str, exit_code: int | None, timeout_s: float, output: str) -> SendBack:
    """A pre-merge check exited non-zero, or ran past its timeout (its tree was killed)."""
    if exit_code is None:
        why = f"timed out after {timeout_s:g}s (process tree killed)"
    else:
        why = f"exit code {exit_code}"
    summary = f"pre-merge check `{command}` failed: {why}"
    head = f"The pre-merge check `{command}` must exit 0 on the merge candidate."
    return SendBack(summary=summary, detail=_with_tail(head, "check's", output))


def _with_tail(head: str, whose: str, output: str) -> str:
    tail = output.strip()
    if not tail:
        return _cut(head)
    lead = (head + "\n" if head else "") + f"The {whose} output ends with:\n"
    room = MAX_DETAIL_CHARS - len(lead)
    return lead + (tail if len(tail) <= room else "…" + tail[-(room - 1) :])


def _cut(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


# --- what the StageEngine does with it -----------------------------------------------------


def sends_back(outcome: JobOutcome) -> bool:
    """Whether a job's outcome is a merge step sending the work back (its reason is kept)."""
    return outcome.outcome == OUTCOME_REWORK


def summary(reason: str) -> str:
    """The one-line summary of a send-back's reported text."""
    return reason.split("\n", 1)[0]


def sent_back(task: Task, result: GateResult, cfg: Config) -> tuple[str, GateResult] | None:
    """Where the merge step sent the task back to, and the verdict saying why; None otherwise.

    Only when the step's gate did not pass (a pull request merged after all moves on)
    and could be read (a `wait` is read again later), and only when there is a stage
    to go back to (else the merge step is retried as before).
    """
    if task.step != STEP_MERGE or task.job_outcome != OUTCOME_REWORK:
        return None
    if result.verdict != "retry":
        return None
    target = rework_target(task.stage, cfg)
    if not target:
        return None
    return target, GateResult(verdict="rework", reason=summary(task.job_reason) or result.reason)


def rework_target(stage: str, cfg: Config) -> str:
    """The stage a merge step on `stage` sends work back to ("" when there is none).

    The stage's own `on_fail` when it names a stage; else the last stage before it
    whose role is developer (where the code is written).
    """
    names = [s.name for s in cfg.pipeline.stages]
    if stage not in names:
        return ""
    index = names.index(stage)
    own = cfg.pipeline.stages[index].on_fail
    if own != ON_FAIL_RETRY and own in names[:index]:
        return own
    earlier = [s.name for s in cfg.pipeline.stages[:index] if s.role == ROLE_DEVELOPER]
    return earlier[-1] if earlier else ""
