"""Task summaries keep the status row's shape; the engine's index finds live tasks only."""

from __future__ import annotations

import msgspec

from actors.stage_policy import Task
from actors.task_summary import FindTasks, TaskIndex, summarize

ROW_KEYS = [
    "id",
    "repo",
    "title",
    "stage",
    "step",
    "job_id",
    "job_status",
    "escalated",
    "approved",
    "developer_retries",
    "branch",
    "reason",
    "updated_at",
    "head_sha",
    "hold",
    "tracker_state",
    "external_id",
    "cost_usd",
]


def _task(task_id: str = "DEMO-1", **changes: object) -> Task:
    task = Task(id=task_id, repo="demo", title="x", branch=f"feature/{task_id}-x", stage="develop")
    return msgspec.structs.replace(task, **changes)


def test_summary_encodes_as_the_status_row_in_its_key_order() -> None:
    task = _task(last_reason="why", head_sha="abc", cost_usd=1.5, updated_at=3.0)
    row = msgspec.json.decode(msgspec.json.encode(summarize(task)))
    assert list(row) == ROW_KEYS
    assert row["reason"] == "why"
    assert row["head_sha"] == "abc"


def test_index_finds_by_branch_commit_and_stage_within_the_repo() -> None:
    index = TaskIndex()
    index.put(_task("DEMO-1", head_sha="aaa"))
    index.put(_task("DEMO-2", stage="review"))
    assert index.find(FindTasks(repo="demo", branch="feature/DEMO-1-x")) == {"DEMO-1"}
    assert index.find(FindTasks(repo="demo", commit="aaa")) == {"DEMO-1"}
    assert index.find(FindTasks(repo="demo", stages=("review",))) == {"DEMO-2"}
    assert index.find(FindTasks(repo="demo", commit="aaa", stages=("review",))) == {
        "DEMO-1",
        "DEMO-2",
    }
    assert index.find(FindTasks(repo="other", branch="feature/DEMO-1-x")) == set()
    assert index.find(FindTasks(repo="demo")) == set()


def test_index_follows_a_task_and_forgets_it_once_terminal() -> None:
    index = TaskIndex()
    index.put(_task("DEMO-1", head_sha="aaa"))
    index.put(_task("DEMO-1", head_sha="bbb", stage="review"))
    assert index.find(FindTasks(repo="demo", commit="aaa")) == set()
    assert index.find(FindTasks(repo="demo", commit="bbb")) == {"DEMO-1"}
    assert index.find(FindTasks(repo="demo", stages=("develop",))) == set()
    index.put(_task("DEMO-1", head_sha="bbb", stage="done"))
    assert index.find(FindTasks(repo="demo", commit="bbb", stages=("done",))) == set()


def test_index_knows_the_tasks_whose_job_ended_and_follows_them() -> None:
    index = TaskIndex()
    index.put(_task("DEMO-1", job_status="queued"))
    index.put(_task("DEMO-2", job_status="running"))
    index.put(_task("DEMO-3", job_status="done"))
    index.put(_task("DEMO-4", job_status="failed"))
    assert index.job_ended() == {"DEMO-3", "DEMO-4"}
    index.put(_task("DEMO-3", job_status="queued"))  # its next stage's job
    index.put(_task("DEMO-1", job_status="done"))
    index.put(_task("DEMO-4", job_status="failed", stage="cancelled"))
    assert index.job_ended() == {"DEMO-1"}
    # The set given out is the caller's own: the index is not changed through it.
    index.job_ended().clear()
    assert index.job_ended() == {"DEMO-1"}
