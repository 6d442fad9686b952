"""The pipeline's vocabulary: stage, step, role, gate, artifact and status names, spelled once.

Every module that names one of these imports it from here, so a rename is one
edit and a typo is a mypy error (the `Literal` types) instead of a silent miss.
"""

from __future__ import annotations

from typing import Final, Literal

# --- stages -------------------------------------------------------------------------------

CREATED: Final = "created"
DONE: Final = "done"
CANCELLED: Final = "cancelled"
TERMINAL: Final = frozenset({DONE, CANCELLED})
RESERVED_STAGES: Final = frozenset({CREATED, DONE, CANCELLED})
"""Stage names the pipeline itself uses; a configured stage may not take them."""

# --- steps within a stage ----------------------------------------------------------------

Step = Literal["intake", "work", "merge", "confirm"]
STEP_INTAKE: Final = "intake"
STEP_WORK: Final = "work"
STEP_MERGE: Final = "merge"
STEP_CONFIRM: Final = "confirm"
"""A protected repository's production deploy waits here for Confirm Deploy; no job runs."""

# --- roles ---------------------------------------------------------------------------------

AgentRole = Literal["analyst", "architect", "developer", "reviewer", "tester", "deployer"]
ROLE_ANALYST: Final = "analyst"
ROLE_ARCHITECT: Final = "architect"
ROLE_DEVELOPER: Final = "developer"
ROLE_REVIEWER: Final = "reviewer"
ROLE_TESTER: Final = "tester"
ROLE_DEPLOYER: Final = "deployer"
AGENT_ROLES: Final = (
    ROLE_ANALYST,
    ROLE_ARCHITECT,
    ROLE_DEVELOPER,
    ROLE_REVIEWER,
    ROLE_TESTER,
    ROLE_DEPLOYER,
)
"""Roles an agent plays; each has its command in `[agents.<role>]`."""
ROLE_INTAKE: Final = "intake"
ROLE_MERGE: Final = "merge"
BUILTIN_ROLES: Final = frozenset({ROLE_INTAKE, ROLE_MERGE})
"""Steps Conveyor runs itself (push the new branch; the merge gate): no agent, no pid."""

# --- gates ---------------------------------------------------------------------------------

Gate = Literal[
    "",
    "analysis_complete",
    "architecture_done",
    "ci_green",
    "review_approved",
    "tests_passed",
    "staging_status",
    "deploy_status",
]
GATE_NONE: Final = ""
GATE_ANALYSIS: Final = "analysis_complete"
GATE_ARCHITECTURE: Final = "architecture_done"
GATE_CI_GREEN: Final = "ci_green"
GATE_REVIEW: Final = "review_approved"
GATE_TESTS: Final = "tests_passed"
GATE_STAGING: Final = "staging_status"
GATE_DEPLOY: Final = "deploy_status"
GATES: Final = frozenset(
    {
        GATE_NONE,
        GATE_ANALYSIS,
        GATE_ARCHITECTURE,
        GATE_CI_GREEN,
        GATE_REVIEW,
        GATE_TESTS,
        GATE_STAGING,
        GATE_DEPLOY,
    }
)
DEPLOY_GATES: Final = frozenset({GATE_STAGING, GATE_DEPLOY})
"""Gates whose stage runs the repository's deploy command (staging or production)."""
GATE_BRANCH_EXISTS: Final = "branch_exists"
"""The `created` stage's exit: the branch is on the forge."""
GATE_PR_MERGED: Final = "pr_merged"
"""The merge step's exit on a stage with a merge step."""

ON_FAIL_RETRY: Final = "retry"
"""A stage's `on_fail` that retries the stage itself instead of sending the work back."""

# --- artifacts -----------------------------------------------------------------------------

WORK_ITEMS_DIR: Final = "docs/work-items"
"""Where each work item's artifacts live in its repository: `<dir>/<ID>/<file>`."""
BRD: Final = "01-brd.md"
TRZ: Final = "02-trz.md"
ACCEPTANCE_CRITERIA: Final = "03-acceptance-criteria.md"
ANALYSIS_DOCS: Final = (BRD, TRZ, ACCEPTANCE_CRITERIA)
TEST_PLAN: Final = "04-test-plan.yaml"
ADR_DIR: Final = "06-adr"
INFRA_REQUIREMENTS: Final = "07-infra-requirements.md"
TECH_RISKS: Final = "10-tech-risks.md"
DEV_NOTES: Final = "11-dev-notes.md"
REVIEW: Final = "12-review.md"
TEST_REPORT: Final = "13-test-report.md"
DEPLOY_LOG: Final = "14-deploy-log.md"
STAGING_LOG: Final = "15-staging-log.md"
POST_DEPLOY_LOG: Final = "16-post-deploy-log.md"

# --- verdicts written into artifacts -------------------------------------------------------

DeployStatus = Literal["SUCCESS", "FAILED"]
SUCCESS: Final = "SUCCESS"
FAILED: Final = "FAILED"
"""A staging or production deploy log's `staging_status` / `deploy_status`."""
SUPERSEDED: Final = "SUPERSEDED"
"""A production deploy not run: a newer commit containing it is already deployed (only
Conveyor writes it; not a value agents are told about)."""
UNSTAGED: Final = "UNSTAGED"
"""A production deploy not run: its tree is not the one staging judged (re-stage it)."""
ON_UNSTAGED_RESTAGE: Final = "restage"
ON_UNSTAGED_FAIL: Final = "fail"
ON_UNSTAGED: Final = (ON_UNSTAGED_RESTAGE, ON_UNSTAGED_FAIL)
"""`deploy.on_unstaged_tree`: what a production deploy of an unstaged tree does."""
ReviewVerdict = Literal["APPROVED", "REQUEST_CHANGES"]
APPROVED: Final = "APPROVED"
REQUEST_CHANGES: Final = "REQUEST_CHANGES"
"""The review's `verdict`."""
TestResult = Literal["PASS", "FAIL"]
TESTS_PASS: Final = "PASS"  # noqa: S105 - a test verdict, not a password
TESTS_FAIL: Final = "FAIL"
"""The test report's `result`."""
DECIDED_BY_CONVEYOR: Final = "conveyor"
"""`decided_by` of a verdict Conveyor wrote itself (from the deploy command's exit)."""

# --- tracker states (keys of `[plane.states]`) --------------------------------------------

STATE_IN_PROGRESS: Final = "in_progress"
STATE_APPROVED: Final = "approved"
STATE_REJECTED: Final = "rejected"
STATE_CONFIRM_DEPLOY: Final = "confirm_deploy"
STATE_BLOCKED: Final = "blocked"
STATE_NEEDS_INPUT: Final = "needs_input"
STATE_IN_REVIEW: Final = "in_review"
STATE_DONE: Final = "done"
TRACKER_STATES: Final = (
    STATE_IN_PROGRESS,
    STATE_APPROVED,
    STATE_REJECTED,
    STATE_CONFIRM_DEPLOY,
    STATE_BLOCKED,
    STATE_NEEDS_INPUT,
    STATE_IN_REVIEW,
    STATE_DONE,
)
"""Tracker board states Conveyor knows, by their key in `plane.states`."""
HOLD_STATES: Final = frozenset({STATE_BLOCKED, STATE_NEEDS_INPUT})
"""States in which a human holds the work item."""

# --- job statuses (owned by the QueueWorker) -----------------------------------------------

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_QUEUED: Final = "queued"
JOB_RUNNING: Final = "running"
JOB_DONE: Final = "done"
JOB_FAILED: Final = "failed"
JOB_CANCELLED: Final = "cancelled"
JOB_FINISHED: Final = frozenset({JOB_DONE, JOB_FAILED, JOB_CANCELLED})

# --- run statuses (owned by the Launcher) --------------------------------------------------

RunStatus = Literal["starting", "running", "finished"]
RUN_STARTING: Final = "starting"
RUN_RUNNING: Final = "running"
RUN_FINISHED: Final = "finished"


# --- how an agent run ended (the adapters' parsers and the Launcher decide) ---------------

AgentOutcome = Literal[
    "",
    "success",
    "error",
    "rate_limited",
    "overloaded",
    "auth_refused",
    "context_exceeded",
    "permission_denied",
    "stalled",
    "timed_out",
    "over_budget",
    "rework",
]
OUTCOME_UNKNOWN: Final = ""
"""No outcome was read (the demo agent, an older launcher, a built-in step)."""
OUTCOME_SUCCESS: Final = "success"
OUTCOME_ERROR: Final = "error"
OUTCOME_RATE_LIMITED: Final = "rate_limited"
OUTCOME_OVERLOADED: Final = "overloaded"
OUTCOME_AUTH_REFUSED: Final = "auth_refused"
OUTCOME_CONTEXT_EXCEEDED: Final = "context_exceeded"
OUTCOME_PERMISSION_DENIED: Final = "permission_denied"
OUTCOME_STALLED: Final = "stalled"
OUTCOME_TIMED_OUT: Final = "timed_out"
OUTCOME_OVER_BUDGET: Final = "over_budget"
WAIT_OUTCOMES: Final = frozenset({OUTCOME_RATE_LIMITED, OUTCOME_OVERLOADED})
"""The model API asked us to come back later: wait, do not spend an attempt."""
OUTCOME_REWORK: Final = "rework"
"""The merge step's answer that the work goes back to development (a rebase conflict, a
red re-test, a failing pre-merge check): the job is done, its gate sends the task back."""


def artifact_path(task_id: str, name: str) -> str:
    """Path of an artifact inside the repository."""
    return f"{WORK_ITEMS_DIR}/{task_id}/{name}"
