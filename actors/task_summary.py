"""What other actors learn of a task: a typed summary, the asks for it, and the engine's index.

The StageEngine answers `AllTasks` and `FindTasks` with `TaskSummary` values.
Its field order is the status row's: the status service encodes summaries as
the rows `conveyor.status.tasks` has always returned.
"""

from __future__ import annotations

import msgspec

from actors.task_policy import JOB_ENDED, Task


class TaskSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A task as other actors and the status tables see it (no history, no outbox)."""

    id: str
    repo: str
    title: str
    stage: str
    step: str
    job_id: str
    job_status: str
    escalated: bool
    approved: bool
    developer_retries: int
    branch: str
    reason: str
    updated_at: float
    head_sha: str
    hold: str
    tracker_state: str
    external_id: str
    cost_usd: float


def summarize(task: Task) -> TaskSummary:
    """The summary of `task`."""
    return TaskSummary(
        id=task.id,
        repo=task.repo,
        title=task.title,
        stage=task.stage,
        step=task.step,
        job_id=task.job_id,
        job_status=task.job_status,
        escalated=task.escalated,
        approved=task.approved,
        developer_retries=task.developer_retries,
        branch=task.branch,
        reason=task.last_reason,
        updated_at=task.updated_at,
        head_sha=task.head_sha,
        hold=task.hold,
        tracker_state=task.tracker_state,
        external_id=task.external_id,
        cost_usd=task.cost_usd,
    )


class AllTasks(msgspec.Struct, frozen=True, kw_only=True):
    """Another actor -> StageEngine (ask): the summary of every hot task, oldest first.

    Hot: not settled (settled = done or cancelled with nothing left to publish); settled
    tasks are out of memory and answer by id (`GetTask`, `GetTasks`).
    `job_ended`: only the live tasks whose job ended (done or failed), i.e. those at a
    gate; a backlog of queued or running tasks then costs the asker nothing.
    """

    job_ended: bool = False


class GetTasks(msgspec.Struct, frozen=True):
    """Another actor -> StageEngine (ask): status rows by id of those of `task_ids` that exist.

    Settled tasks answer too (from their kept rows), without a pass over all tasks.
    """

    task_ids: tuple[str, ...]


class GetTask(msgspec.Struct, frozen=True):
    """Another part -> StageEngine (ask): one task's summary, or None when it is unknown."""

    task_id: str


class FindTasks(msgspec.Struct, frozen=True, kw_only=True):
    """Another actor -> StageEngine (ask): live tasks of `repo` that match any filter given.

    A task matches when it is on `branch`, its branch head is `commit`, or its
    stage is one of `stages`; the answer is their summaries, oldest first.
    """

    repo: str
    branch: str = ""
    commit: str = ""
    stages: tuple[str, ...] = ()


IndexKey = tuple[str, str, str]
"""(what, repo, value): what is `branch`, `commit`, `stage`, or `job` (repo and value empty:
the task's job ended)."""
JOB_ENDED_KEY: IndexKey = ("job", "", "")


class TaskIndex:
    """Ids of live (not done, not cancelled) tasks by branch, branch head and stage."""

    def __init__(self) -> None:
        self._ids: dict[IndexKey, set[str]] = {}
        self._keys: dict[str, tuple[IndexKey, ...]] = {}

    def put(self, task: Task) -> None:
        """Index `task` as it is now, forgetting where it was indexed before."""
        for key in self._keys.pop(task.id, ()):
            ids = self._ids[key]
            ids.discard(task.id)
            if not ids:
                del self._ids[key]
        keys = _keys(task)
        for key in keys:
            self._ids.setdefault(key, set()).add(task.id)
        if keys:
            self._keys[task.id] = keys

    def find(self, query: FindTasks) -> set[str]:
        """Ids of the live tasks matching `query`."""
        wanted: list[IndexKey] = [("stage", query.repo, stage) for stage in query.stages]
        if query.branch:
            wanted.append(("branch", query.repo, query.branch))
        if query.commit:
            wanted.append(("commit", query.repo, query.commit))
        found: set[str] = set()
        for key in wanted:
            found |= self._ids.get(key, set())
        return found

    def job_ended(self) -> set[str]:
        """Ids of the live tasks whose job ended (done or failed): those at a gate."""
        return set(self._ids.get(JOB_ENDED_KEY, ()))


def _keys(task: Task) -> tuple[IndexKey, ...]:
    if task.terminal:
        return ()
    keys: list[IndexKey] = [("stage", task.repo, task.stage)]
    if task.branch:
        keys.append(("branch", task.repo, task.branch))
    if task.head_sha:
        keys.append(("commit", task.repo, task.head_sha))
    if task.job_status in JOB_ENDED:
        keys.append(JOB_ENDED_KEY)
    return tuple(keys)
