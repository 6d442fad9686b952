"""Routing of normalized events: which task an event is about and what the StageEngine hears."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import intake_policy as ip
from bus.messages import (
    CommitStatusEvent,
    PullRequestEvent,
    Reevaluate,
    Submit,
    TrackerUpdate,
    WorkItemEvent,
)
from conveyor.config import load

PROJECT = "22b6fc9c-1849-45da-b103-52a3e3a6b4c1"
CFG = load(
    env={},
    overrides={
        "gitea": {"owner": "acme"},
        "repos": [
            {"name": "widgets", "prefix": "WID", "plane_project": PROJECT},
            {"name": "tools", "prefix": "TL", "gitea_repo": "ops/tools"},
        ],
    },
)


def item(state_name: str = "In Progress", **changes: object) -> WorkItemEvent:
    fields: dict[str, object] = {
        "delivery_id": "d1",
        "action": "updated",
        "project_id": PROJECT,
        "work_item_id": "775c5716-5302-4617-bb9f-2cd843911268",
        "sequence_id": 42,
        "title": "Add retry to widget sync",
        "state_id": "b1c2",
        "state_name": state_name,
    }
    fields.update(changes)
    return WorkItemEvent(**fields)  # type: ignore[arg-type]


def view(task_id: str, stage: str, *, repo: str = "widgets", head: str = "") -> ip.TaskView:
    return ip.TaskView(
        id=task_id, repo=repo, stage=stage, branch=f"feature/{task_id}-x", head_sha=head
    )


def status(sha: str, state: str = "success", repo: str = "acme/widgets") -> CommitStatusEvent:
    return CommitStatusEvent(delivery_id="g1", repo=repo, sha=sha, state=state, context="ci")


# --- Plane ---------------------------------------------------------------------------------


def test_in_progress_submits_a_task_named_after_prefix_and_sequence_id():
    route = ip.route_work_item(item(), "In Progress", key="plane:d1", cfg=CFG)
    submit, update = route.inputs
    assert submit == Submit(
        repo="widgets",
        title="Add retry to widget sync",
        id="WID-42",
        description="",
        external_id="775c5716-5302-4617-bb9f-2cd843911268",
    )
    assert update == TrackerUpdate(
        id="WID-42", state="in_progress", key="plane:d1", reason="In Progress in Plane"
    )


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Approved", "approved"),
        ("Rejected", "rejected"),
        ("Confirm Deploy", "confirm_deploy"),
        ("Blocked", "blocked"),
        ("Needs Input", "needs_input"),
        ("In Review", "in_review"),
        ("approved", "other"),
        ("Confirm  Deploy", "other"),
        ("Backlog", "other"),
    ],
)
def test_other_states_are_status_only_updates_with_exact_names(name: str, key: str):
    (update,) = ip.route_work_item(item(name), name, key="plane:d9", cfg=CFG).inputs
    assert isinstance(update, TrackerUpdate)
    assert (update.id, update.state, update.key) == ("WID-42", key, "plane:d9")


def test_states_are_named_by_config():
    cfg = load(
        env={"CONVEYOR_PLANE__STATES__APPROVED": "Freigegeben"},
        overrides={"repos": [{"name": "widgets", "prefix": "WID", "plane_project": PROJECT}]},
    )
    (update,) = ip.route_work_item(item(), "Freigegeben", key="k", cfg=cfg).inputs
    assert isinstance(update, TrackerUpdate)
    assert update.state == "approved"


@pytest.mark.parametrize(
    ("event", "state_name", "why"),
    [
        (item(project_id="elsewhere"), "In Progress", "not configured"),
        (item(action="deleted"), "In Progress", "deleted"),
        (item(sequence_id=0), "In Progress", "bad sequence id"),
        (item(sequence_id=10**12), "In Progress", "bad sequence id"),
        (item(), "", "unknown"),
    ],
)
def test_events_that_are_not_ours_route_nowhere(event: WorkItemEvent, state_name: str, why: str):
    route = ip.route_work_item(event, state_name, key="k", cfg=CFG)
    assert route.inputs == ()
    assert why in route.reason


@given(st.text(max_size=400))
def test_any_plane_name_becomes_a_valid_title(name: str):
    title = ip.clean_title(name, "Work item WID-1")
    assert 0 < len(title) <= 200
    assert title.isprintable()
    assert title == title.strip()


# --- Gitea ---------------------------------------------------------------------------------


def test_a_ci_status_reads_the_gate_of_the_task_whose_head_it_is():
    tasks = [view("WID-1", "development", head="aaa"), view("WID-2", "development", head="bbb")]
    route = ip.route_status(status("bbb"), tasks, cfg=CFG)
    assert route.inputs == (Reevaluate(id="WID-2", cause="CI success for bbb"),)


def test_an_unknown_commit_resolves_to_the_single_ci_gated_task_of_the_repository():
    tasks = [
        view("WID-1", "development", head="aaa"),
        view("WID-2", "review", head="ccc"),
        view("TL-1", "development", repo="tools"),
    ]
    route = ip.route_status(status("fff"), tasks, cfg=CFG)
    assert [r.id for r in route.inputs if isinstance(r, Reevaluate)] == ["WID-1"]


@pytest.mark.parametrize("stages", [[], ["development", "development"]])
def test_an_unknown_commit_with_none_or_several_candidates_is_ignored(stages: list[str]):
    tasks = [view(f"WID-{i}", stage) for i, stage in enumerate(stages, start=1)]
    route = ip.route_status(status("fff"), tasks, cfg=CFG)
    assert route.inputs == ()
    assert "ignored" in route.reason


def test_pending_statuses_and_foreign_repositories_route_nowhere():
    tasks = [view("WID-1", "development", head="aaa")]
    assert ip.route_status(status("aaa", "pending"), tasks, cfg=CFG).inputs == ()
    assert ip.route_status(status("aaa", repo="acme/other"), tasks, cfg=CFG).inputs == ()


def test_done_tasks_are_never_resolved():
    tasks = [view("WID-1", "done", head="aaa")]
    assert ip.route_status(status("aaa"), tasks, cfg=CFG).inputs == ()


def test_the_gitea_name_of_a_repository_can_differ_from_its_name():
    tasks = [view("TL-1", "development", repo="tools", head="aaa")]
    route = ip.route_status(status("aaa", repo="ops/tools"), tasks, cfg=CFG)
    assert [r.id for r in route.inputs if isinstance(r, Reevaluate)] == ["TL-1"]


def pull(merged: bool, branch: str = "feature/WID-3-x") -> PullRequestEvent:
    return PullRequestEvent(
        delivery_id="g2",
        repo="acme/widgets",
        number=17,
        action="closed",
        merged=merged,
        head_branch=branch,
        head_sha="aaa",
    )


def test_a_merged_pull_request_reads_the_gate_of_its_branch_task():
    tasks = [view("WID-3", "deploy-staging"), view("WID-4", "deploy-staging")]
    route = ip.route_pull_request(pull(True), tasks, cfg=CFG)
    assert route.inputs == (Reevaluate(id="WID-3", cause="pull request #17 merged"),)


def test_an_unmerged_pull_request_or_an_unknown_branch_routes_nowhere():
    tasks = [view("WID-3", "deploy-staging")]
    assert ip.route_pull_request(pull(False), tasks, cfg=CFG).inputs == ()
    assert ip.route_pull_request(pull(True, "feature/other"), tasks, cfg=CFG).inputs == ()
