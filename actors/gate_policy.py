"""Pure gate decisions: artifact schemas, front matter, and what each gate requires.

`GATE_CONTRACTS` states every gate's requirements as data (the files it reads, the
front-matter keys it needs, the values that pass), so agent instructions can be
generated from the same definitions the gates are evaluated with. Nothing here does
I/O: the StageEngine reads the inputs from the forge and passes them in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import msgspec

from conveyor.config import Config
from conveyor.pipeline import (
    ADR_DIR,
    ANALYSIS_DOCS,
    APPROVED,
    DECIDED_BY_CONVEYOR,
    DEPLOY_LOG,
    GATE_ANALYSIS,
    GATE_ARCHITECTURE,
    GATE_BRANCH_EXISTS,
    GATE_CI_GREEN,
    GATE_DEPLOY,
    GATE_NONE,
    GATE_PR_MERGED,
    GATE_REVIEW,
    GATE_STAGING,
    GATE_TESTS,
    REVIEW,
    STAGING_LOG,
    STEP_INTAKE,
    STEP_MERGE,
    SUCCESS,
    SUPERSEDED,
    TEST_PLAN,
    TEST_REPORT,
    TESTS_PASS,
    UNSTAGED,
    DeployStatus,
    ReviewVerdict,
    TestResult,
    artifact_path,
)

Verdict = Literal["pass", "wait", "retry", "rework"]


class GateResult(msgspec.Struct, frozen=True, kw_only=True):
    """A gate's answer: pass, wait (for a human or CI), retry the stage, or rework."""

    verdict: Verdict
    reason: str
    back_to: str = ""
    """For a rework: the gate of the earlier stage the work goes back to instead of the
    stage's `on_fail` (a production tree staging never judged goes back to staging)."""


class GateInputs(msgspec.Struct, frozen=True, kw_only=True):
    """What the gate may look at, read from the forge at the branch head."""

    files: dict[str, str | None] = msgspec.field(default_factory=dict)
    adr_files: dict[str, str] = msgspec.field(default_factory=dict)
    branch_head: str | None = None
    ci_state: str | None = None
    ci_description: str = ""
    ci_target_url: str = ""
    ci_log: str = ""
    """The tail of the red check's output, when the forge keeps it (read only on red)."""
    pr_merged: bool | None = None
    visit_base: str = ""
    """The branch head when the visit started (the task's); the CI gate needs a newer head."""
    error: str = ""


class GateSubject(Protocol):
    """The parts of a task a gate looks at (the StageEngine's `Task` has them)."""

    @property
    def id(self) -> str: ...

    @property
    def branch(self) -> str: ...

    @property
    def job_id(self) -> str: ...

    @property
    def stage(self) -> str: ...

    @property
    def step(self) -> str: ...


# --- artifact schemas ----------------------------------------------------------------------


class _FrontMatter(msgspec.Struct, kw_only=True):
    work_item_id: str | None = None
    work_item: str | None = None


class DocFM(_FrontMatter, kw_only=True):
    """Front matter of an analysis or architecture document."""

    type: str


class TestPlan(msgspec.Struct, kw_only=True):
    """`04-test-plan.yaml`."""

    work_item: str
    tests: list[dict[str, object]]


class ReviewFM(_FrontMatter, kw_only=True):
    """Front matter of `12-review.md`."""

    verdict: ReviewVerdict
    version: int = 1


class TestReportFM(_FrontMatter, kw_only=True):
    """Front matter of `13-test-report.md`."""

    result: TestResult


class _VerdictFM(_FrontMatter, kw_only=True):
    job_id: str | None = None
    decided_by: str | None = None
    deployed_by: str | None = None
    """The reference's name of `decided_by` (`14-deploy-log.md`); either one counts."""
    reason: str = ""

    @property
    def by_conveyor(self) -> bool:
        """Whether Conveyor wrote this verdict itself (under either key's name)."""
        return DECIDED_BY_CONVEYOR in (self.decided_by, self.deployed_by)


class StagingFM(_VerdictFM, kw_only=True):
    """Front matter of `15-staging-log.md`."""

    staging_status: DeployStatus


class DeployFM(_VerdictFM, kw_only=True):
    """Front matter of `14-deploy-log.md`."""

    deploy_status: DeployStatus


# --- front matter --------------------------------------------------------------------------


class FrontMatterError(ValueError):
    """An artifact has no front matter or it does not decode into its schema."""


def split_front_matter(text: str) -> str:
    """Return the YAML between the leading `---` fences of a markdown artifact."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise FrontMatterError("no front matter (the file must start with ---)")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            return "\n".join(lines[1:i])
    raise FrontMatterError("front matter is not closed with ---")


T = TypeVar("T")
FM = TypeVar("FM", bound="_FrontMatter")


def parse_front_matter(text: str, schema: type[T]) -> T:
    """Decode an artifact's front matter into `schema`; raise FrontMatterError with the path."""
    yaml_text = split_front_matter(text)
    try:
        return msgspec.yaml.decode(yaml_text.encode(), type=schema)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise FrontMatterError(f"front matter invalid: {err}") from err


# --- contracts -----------------------------------------------------------------------------

IDENTITY_KEYS = ("work_item_id", "work_item")
"""Front-matter keys naming the work item; when present they must name the task's."""


@dataclass(frozen=True)
class ArtifactRule:
    """One artifact a gate reads: its schema and, for a verdict, the key and passing values."""

    name: str
    """File name under the work item's directory (for `any_in_dir`, the directory)."""
    schema: type[msgspec.Struct]
    key: str = ""
    """The front-matter key holding the verdict; empty when the file only has to be valid."""
    passing: tuple[str, ...] = ()
    """Values of `key` that pass the gate; any other allowed value sends the work back."""
    whole_yaml: bool = False
    """The whole file is YAML (the test plan), not markdown with front matter."""
    any_in_dir: bool = False
    """One valid `.md` file in the directory is enough (the ADRs)."""

    @property
    def required(self) -> tuple[str, ...]:
        """Keys the artifact must have, read from its schema."""
        return tuple(f.encode_name for f in msgspec.structs.fields(self.schema) if f.required)


@dataclass(frozen=True)
class GateContract:
    """What a gate requires: the artifacts it reads and the other inputs it looks at."""

    gate: str
    artifacts: tuple[ArtifactRule, ...] = ()
    looks_at: str = ""
    """What else decides the gate, in words (the branch, CI, the pull request)."""


_REVIEW_RULE = ArtifactRule(REVIEW, ReviewFM, key="verdict", passing=(APPROVED,))
_TESTS_RULE = ArtifactRule(TEST_REPORT, TestReportFM, key="result", passing=(TESTS_PASS,))
_STAGING_RULE = ArtifactRule(STAGING_LOG, StagingFM, key=GATE_STAGING, passing=(SUCCESS,))
_DEPLOY_RULE = ArtifactRule(DEPLOY_LOG, DeployFM, key=GATE_DEPLOY, passing=(SUCCESS,))

GATE_CONTRACTS: dict[str, GateContract] = {
    contract.gate: contract
    for contract in (
        GateContract(gate=GATE_NONE, looks_at="nothing: the stage passes when its job ends"),
        GateContract(gate=GATE_BRANCH_EXISTS, looks_at="the task's branch on the forge"),
        GateContract(gate=GATE_PR_MERGED, looks_at="the stage's pull request is merged"),
        GateContract(
            gate=GATE_ANALYSIS,
            artifacts=(
                *(ArtifactRule(name, DocFM) for name in ANALYSIS_DOCS),
                ArtifactRule(TEST_PLAN, TestPlan, whole_yaml=True),
            ),
        ),
        GateContract(
            gate=GATE_ARCHITECTURE, artifacts=(ArtifactRule(ADR_DIR, DocFM, any_in_dir=True),)
        ),
        GateContract(
            gate=GATE_CI_GREEN,
            looks_at="a new commit on the branch from this visit, and its CI status",
        ),
        GateContract(gate=GATE_REVIEW, artifacts=(_REVIEW_RULE,)),
        GateContract(gate=GATE_TESTS, artifacts=(_TESTS_RULE,)),
        GateContract(gate=GATE_STAGING, artifacts=(_STAGING_RULE,)),
        GateContract(gate=GATE_DEPLOY, artifacts=(_DEPLOY_RULE,)),
    )
}
"""Every gate's requirements, keyed by gate name; the evaluation below reads the same rules."""

GATE_FILES: dict[str, tuple[str, ...]] = {
    contract.gate: tuple(rule.name for rule in contract.artifacts if not rule.any_in_dir)
    for contract in GATE_CONTRACTS.values()
    if any(not rule.any_in_dir for rule in contract.artifacts)
}
"""Artifacts each gate reads (file names under the work item's directory)."""


# --- which gate ----------------------------------------------------------------------------


def gate_for(task: GateSubject, cfg: Config) -> str:
    """The gate that decides the task's current step."""
    if task.step == STEP_INTAKE:
        return GATE_BRANCH_EXISTS
    if task.step == STEP_MERGE:
        return GATE_PR_MERGED
    stage = cfg.stage(task.stage)
    return stage.gate if stage else GATE_NONE


# --- evaluation ---------------------------------------------------------------------------


def _current_verdict(fm: _VerdictFM, task: GateSubject, name: str) -> None:
    """Refuse a verdict Conveyor wrote for another job than the task's current one.

    An adopted run of a superseded visit can finish late and write its verdict; it
    must not decide the visit that replaced it.
    """
    if fm.by_conveyor and fm.job_id and fm.job_id != task.job_id:
        raise FrontMatterError(f"{name}: verdict of job {fm.job_id}, not of {task.job_id}")


def _read(inputs: GateInputs, task_id: str, name: str) -> str:
    text = inputs.files.get(artifact_path(task_id, name))
    if text is None:
        raise FrontMatterError("missing")
    return text


def _check_id(fm: _FrontMatter, task_id: str) -> None:
    found = fm.work_item_id or fm.work_item
    if found is not None and found != task_id:
        raise FrontMatterError(f"belongs to {found!r}, not {task_id!r}")


def _doc(inputs: GateInputs, task_id: str, name: str, schema: type[FM]) -> FM:
    try:
        fm = parse_front_matter(_read(inputs, task_id, name), schema)
        _check_id(fm, task_id)
    except FrontMatterError as err:
        raise FrontMatterError(f"{name}: {err}") from err
    return fm


def _passes(rule: ArtifactRule, fm: msgspec.Struct) -> bool:
    return str(getattr(fm, rule.key)) in rule.passing


def evaluate_gate(gate: str, task: GateSubject, inputs: GateInputs) -> GateResult:
    """Decide a gate from its inputs alone; malformed input is a verdict, never an exception."""
    if inputs.error:
        return GateResult(verdict="wait", reason=f"gate inputs unavailable: {inputs.error}")
    evaluate = _EVALUATORS.get(gate)
    if evaluate is None:
        return GateResult(verdict="retry", reason=f"unknown gate {gate!r}")
    try:
        return evaluate(task, inputs)
    except FrontMatterError as err:
        return GateResult(verdict="retry", reason=str(err))


def _no_gate(task: GateSubject, inputs: GateInputs) -> GateResult:
    return GateResult(verdict="pass", reason="stage has no gate")


def _branch_exists(task: GateSubject, inputs: GateInputs) -> GateResult:
    if inputs.branch_head:
        return GateResult(verdict="pass", reason=f"branch {task.branch} exists")
    return GateResult(verdict="retry", reason=f"branch {task.branch} missing on forge")


def _pr_merged(task: GateSubject, inputs: GateInputs) -> GateResult:
    if inputs.pr_merged:
        return GateResult(verdict="pass", reason="pull request merged")
    return GateResult(verdict="retry", reason="pull request not merged")


def _analysis_complete(task: GateSubject, inputs: GateInputs) -> GateResult:
    tid = task.id
    for name in ANALYSIS_DOCS:
        _doc(inputs, tid, name, DocFM)
    try:
        plan = msgspec.yaml.decode(_read(inputs, tid, TEST_PLAN).encode(), type=TestPlan)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise FrontMatterError(f"{TEST_PLAN}: invalid: {err}") from err
    except FrontMatterError as err:
        raise FrontMatterError(f"{TEST_PLAN}: {err}") from err
    if plan.work_item != tid:
        raise FrontMatterError(f"{TEST_PLAN}: belongs to {plan.work_item!r}")
    if not plan.tests:
        raise FrontMatterError(f"{TEST_PLAN}: lists no tests")
    return GateResult(verdict="pass", reason="analysis complete")


def _architecture_done(task: GateSubject, inputs: GateInputs) -> GateResult:
    problems = []
    for name, text in sorted(inputs.adr_files.items()):
        try:
            fm = parse_front_matter(text, DocFM)
            _check_id(fm, task.id)
        except FrontMatterError as err:
            problems.append(f"{ADR_DIR}/{name}: {err}")
            continue
        return GateResult(verdict="pass", reason=f"ADR {name} present")
    detail = "; ".join(problems) if problems else "no ADR"
    return GateResult(verdict="retry", reason=f"{ADR_DIR}: {detail}")


def _ci_green(task: GateSubject, inputs: GateInputs) -> GateResult:
    if inputs.visit_base and inputs.branch_head == inputs.visit_base:
        # CI green at an older head says nothing about this visit's work: there is none.
        return GateResult(
            verdict="retry",
            reason=f"branch head did not move during this visit (still {inputs.visit_base[:12]})",
        )
    state = inputs.ci_state
    if state == "success":
        return GateResult(verdict="pass", reason="CI green for branch head")
    if state in ("failure", "error"):
        return GateResult(verdict="retry", reason=f"CI {state} for branch head")
    return GateResult(verdict="wait", reason=f"CI {state or 'not reported'} for head")


def _review_approved(task: GateSubject, inputs: GateInputs) -> GateResult:
    review = _doc(inputs, task.id, REVIEW, ReviewFM)
    if _passes(_REVIEW_RULE, review):
        return GateResult(verdict="pass", reason=f"review v{review.version} approved")
    return GateResult(verdict="rework", reason=f"review v{review.version} requests changes")


def _tests_passed(task: GateSubject, inputs: GateInputs) -> GateResult:
    report = _doc(inputs, task.id, TEST_REPORT, TestReportFM)
    if _passes(_TESTS_RULE, report):
        return GateResult(verdict="pass", reason="test report PASS")
    return GateResult(verdict="rework", reason="test report FAIL")


class _AnyStatusFM(_VerdictFM, kw_only=True):
    """A production log read for the statuses only Conveyor writes (not in the contract)."""

    deploy_status: str = ""


def _decided_without_running(
    inputs: GateInputs, task: GateSubject, rule: ArtifactRule, label: str
) -> GateResult | None:
    """The gate of a production deploy Conveyor did not run: superseded, or to re-stage.

    Only Conveyor's own verdict counts: an agent cannot skip a deploy by writing it.
    """
    if rule.schema is not DeployFM:
        return None
    try:
        log = _doc(inputs, task.id, rule.name, _AnyStatusFM)
    except FrontMatterError:
        return None
    if not log.by_conveyor or log.deploy_status not in (SUPERSEDED, UNSTAGED):
        return None
    _current_verdict(log, task, rule.name)
    why = f"{label} {log.deploy_status}: {log.reason}"
    if log.deploy_status == SUPERSEDED:
        return GateResult(verdict="pass", reason=why)
    return GateResult(verdict="rework", reason=why, back_to=GATE_STAGING)


def _deploy_verdict(
    rule: ArtifactRule, schema: type[_VerdictFM], label: str
) -> Callable[[GateSubject, GateInputs], GateResult]:
    """The gate of a deploy stage: its log's current verdict, SUCCESS or back to rework."""

    def _evaluate(task: GateSubject, inputs: GateInputs) -> GateResult:
        decided = _decided_without_running(inputs, task, rule, label)
        if decided is not None:
            return decided
        log = _doc(inputs, task.id, rule.name, schema)
        _current_verdict(log, task, rule.name)
        if _passes(rule, log):
            return GateResult(verdict="pass", reason=f"{label} SUCCESS")
        return GateResult(verdict="rework", reason=f"{label} FAILED")

    return _evaluate


_EVALUATORS: dict[str, Callable[[GateSubject, GateInputs], GateResult]] = {
    GATE_NONE: _no_gate,
    GATE_BRANCH_EXISTS: _branch_exists,
    GATE_PR_MERGED: _pr_merged,
    GATE_ANALYSIS: _analysis_complete,
    GATE_ARCHITECTURE: _architecture_done,
    GATE_CI_GREEN: _ci_green,
    GATE_REVIEW: _review_approved,
    GATE_TESTS: _tests_passed,
    GATE_STAGING: _deploy_verdict(_STAGING_RULE, StagingFM, "staging"),
    GATE_DEPLOY: _deploy_verdict(_DEPLOY_RULE, DeployFM, "deploy"),
}
