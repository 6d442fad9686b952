"""Which commit a deploy ships, whether it may, and the verdict it leaves for the gates."""

from __future__ import annotations

import msgspec
import pytest

from actors import deploy_policy as dp
from actors import gate_policy as gp
from actors import janitor_policy
from actors import launcher_policy as lp
from actors import queue_policy as qp
from actors import stage_policy as sp
from actors import task_policy as tp
from bus.effects import effect_key
from bus.messages import DeployCommits, JobOutcome, JobRequested
from conveyor import pipeline as pl
from conveyor.config import Config, RepoConfig, load
from conveyor.errors import ConfigError

CFG = load(env={})
TID = "DEMO-1"
M1, M2, M3 = "1" * 40, "2" * 40, "3" * 40
TREE, OTHER_TREE = "a" * 40, "b" * 40

# --- may it ship? --------------------------------------------------------------------------


def found(**changes: object) -> dp.Found:
    base = dp.Found(sha=M2, tree=TREE, staged_sha=M1, staged_tree=TREE)
    return msgspec.structs.replace(base, **changes)


@pytest.mark.parametrize(
    "case",
    [
        found(),
        found(last=M1, last_is_ancestor=True),
        found(last=M2),
        found(staged_sha="", staged_tree=""),
    ],
    ids=["first-deploy", "forward", "same-commit-again", "nothing-staged"],
)
def test_a_commit_that_moves_production_forward_on_the_staged_tree_is_deployed(case: dp.Found):
    for mode in pl.ON_UNSTAGED:
        assert dp.decide(case, on_unstaged=mode) == dp.Decision(run=True)


def test_a_commit_older_than_the_deployed_one_is_superseded_not_deployed():
    decision = dp.decide(found(last=M3, sha_is_ancestor=True), on_unstaged="restage")
    assert not decision.run
    assert decision.status == pl.SUPERSEDED
    assert dp.short(M3) in decision.reason
    assert dp.short(M2) in decision.reason


def test_superseded_wins_over_a_tree_staging_never_saw():
    case = found(last=M3, sha_is_ancestor=True, tree=OTHER_TREE)
    assert dp.decide(case, on_unstaged="restage").status == pl.SUPERSEDED


def test_a_commit_that_does_not_descend_from_the_deployed_one_fails_closed():
    decision = dp.decide(found(last=M3), on_unstaged="restage")
    assert (decision.run, decision.status) == (False, pl.FAILED)
    assert "does not descend" in decision.reason


@pytest.mark.parametrize(
    ("mode", "status", "said"),
    [("restage", pl.UNSTAGED, "staging it again"), ("fail", pl.FAILED, "not deployed")],
)
def test_a_tree_staging_never_judged_is_restaged_or_failed_as_configured(
    mode: str, status: str, said: str
):
    decision = dp.decide(found(tree=OTHER_TREE), on_unstaged=mode)
    assert (decision.run, decision.status) == (False, status)
    assert said in decision.reason
    assert dp.short(M1) in decision.reason


def test_the_deployed_record_keeps_the_commit_before_it():
    assert dp.parse_deployed(dp.deployed_value(M2, M1)) == (M2, M1)
    assert dp.parse_deployed(dp.deployed_value(M1, "")) == (M1, "")
    assert dp.parse_deployed("") == ("", "")


def test_on_unstaged_tree_is_restage_by_default_and_checked():
    assert Config().deploy.on_unstaged_tree == "restage"
    assert load(env={}, overrides={"deploy": {"on_unstaged_tree": "fail"}}).deploy.on_unstaged_tree
    with pytest.raises(ConfigError, match=r"deploy\.on_unstaged_tree"):
        load(env={}, overrides={"deploy": {"on_unstaged_tree": "ship-anyway"}})


# --- what the task records -----------------------------------------------------------------


def outcome(stage: str, role: str, status: str = "done", head: str = M1) -> JobOutcome:
    return JobOutcome(
        job_id=f"{TID}.{stage}.1.x",
        task_id=TID,
        stage=stage,
        visit=1,
        role=role,
        status=status,
        attempts=1,
        head_sha=head,
    )


def test_a_merge_records_its_commit_and_a_staging_deploy_the_head_it_left():
    assert dp.commits_of(outcome("deploy-staging", "merge"), CFG) == {"merge_sha": M1}
    assert dp.commits_of(outcome("deploy-staging", "deployer"), CFG) == {"staged_sha": M1}
    assert dp.commits_of(outcome("deploy", "deployer"), CFG) == {}
    assert dp.commits_of(outcome("deploy-staging", "merge", status="failed"), CFG) == {}
    assert dp.commits_of(outcome("deploy-staging", "deployer", head=""), CFG) == {}


def task_on(stage: str, step: str = pl.STEP_WORK, **changes: object) -> tp.Task:
    base = tp.Task(
        id=TID,
        repo="demo",
        title="t",
        branch="feature/DEMO-1-t",
        stage=stage,
        step=step,
        visits={stage: 1},
        job_id=tp.job_id_for(TID, stage, 1, step),
        job_status="running",
    )
    return msgspec.structs.replace(base, **changes)


def test_the_task_records_the_merge_commit_and_passes_it_to_its_production_deploy():
    # Given a task whose staging deploy and merge step succeed
    staged = task_on("deploy-staging")
    job = outcome("deploy-staging", "deployer", head=M1)
    job = msgspec.structs.replace(job, job_id=staged.job_id)
    d = sp.on_job_outcome(staged, job, now=1, cfg=CFG)
    assert d.task is not None
    assert d.task.staged_sha == M1
    merging = task_on("deploy-staging", pl.STEP_MERGE, staged_sha=M1)
    job = outcome("deploy-staging", "merge", head=M2)
    job = msgspec.structs.replace(job, job_id=merging.job_id)
    d = sp.on_job_outcome(merging, job, now=1, cfg=CFG)
    assert d.task is not None
    assert (d.task.merge_sha, d.task.staged_sha) == (M2, M1)

    # When the merge step's gate passes
    passed = sp.on_gate(
        msgspec.structs.replace(d.task, job_status="done"),
        d.task.job_id,
        gp.GateResult(verdict="pass", reason="pull request merged"),
        now=2,
        revision=3,
        cfg=CFG,
    )

    # Then the production deploy job is asked to ship that commit, staged at M1
    [request] = [m for m in passed.emit if isinstance(m, JobRequested)]
    assert request.stage == "deploy"
    assert request.deploy == DeployCommits(sha=M2, staged_sha=M1)
    # and the queue hands the commits to every attempt's launch order
    job_record = qp.on_request(None, request, now=3, cfg=CFG.queue).jobs[0]
    [order] = qp.claim(job_record, now=4).emit
    assert order.deploy == DeployCommits(sha=M2, staged_sha=M1)  # type: ignore[attr-defined]


def test_an_unstaged_production_tree_goes_back_to_the_staging_stage():
    task = task_on("deploy", job_status="done", visits={"deploy-staging": 1, "deploy": 1})
    result = gp.GateResult(verdict="rework", reason="deploy UNSTAGED", back_to=pl.GATE_STAGING)
    d = sp.on_gate(task, task.job_id, result, now=5, revision=3, cfg=CFG)
    assert d.task is not None
    assert d.task.stage == "deploy-staging"
    assert d.task.developer_retries == 1
    [request] = [m for m in d.emit if isinstance(m, JobRequested)]
    assert request.job_id == f"{TID}.deploy-staging.2.work"


def test_a_rework_back_to_a_gate_no_earlier_stage_has_uses_on_fail():
    assert dp.back_to_stage(CFG, "deploy", pl.GATE_STAGING) == "deploy-staging"
    assert dp.back_to_stage(CFG, "deploy-staging", pl.GATE_STAGING) == ""
    assert dp.back_to_stage(CFG, "deploy", "") == ""
    task = task_on("deploy-staging", job_status="done")
    result = gp.GateResult(verdict="rework", reason="x", back_to=pl.GATE_STAGING)
    d = sp.on_gate(task, task.job_id, result, now=5, revision=3, cfg=CFG)
    assert d.task is not None
    assert d.task.stage == "deploy-staging"  # on_fail of deploy-staging is retry


# --- the verdict file and the gates --------------------------------------------------------


def facts(**changes: object) -> dp.DeployFacts:
    base = dp.DeployFacts(
        work_item=TID,
        job_id=f"{TID}.deploy.1.work",
        timestamp="2026-01-02T03:04:05Z",
        command=["deploy.sh", M2],
        exit_code=0,
        health_url="https://demo.example:8443/health?x=1",
        health="HTTP 200",
        status=pl.SUCCESS,
        reason="deploy command exited 0",
        commit=M2,
        base_sha=M1,
    )
    return msgspec.structs.replace(base, **changes)


def front(text: str) -> dict[str, object]:
    data: dict[str, object] = msgspec.yaml.decode(gp.split_front_matter(text).encode())
    return data


def test_the_production_log_names_the_commit_with_the_references_keys_beside_the_old():
    _, text = dp.deploy_log(pl.GATE_DEPLOY, facts())
    fm = front(text)
    assert (fm["commit"], fm["base_sha"]) == (M2, M1)
    assert fm["hook_exit_code"] == fm["exit_code"] == 0
    assert fm["deployed_by"] == fm["decided_by"] == "conveyor"
    assert "base_url" not in fm


def test_the_staging_log_has_the_base_url_of_its_health_url():
    _, text = dp.deploy_log(pl.GATE_STAGING, facts(health_url="https://demo.example:8443/h"))
    assert front(text)["base_url"] == "https://demo.example:8443"
    _, text = dp.deploy_log(pl.GATE_STAGING, facts(health_url=""))
    assert front(text)["base_url"] == ""


def test_a_log_decided_without_running_says_so():
    _, text = dp.deploy_log(pl.GATE_DEPLOY, facts(status=pl.SUPERSEDED, exit_code=None, ran=False))
    assert front(text)["hook_exit_code"] is None
    assert "before running the command" in text


def subject(job: str = f"{TID}.deploy.1.work") -> tp.Task:
    return tp.Task(id=TID, repo="demo", title="t", branch="b", stage="deploy", job_id=job)


def deploy_gate(text: str, job: str = f"{TID}.deploy.1.work") -> gp.GateResult:
    inputs = gp.GateInputs(files={pl.artifact_path(TID, pl.DEPLOY_LOG): text})
    return gp.evaluate_gate(pl.GATE_DEPLOY, subject(job), inputs)


def log_with(*, drop: tuple[str, ...] = (), **fields: object) -> str:
    _, text = dp.deploy_log(pl.GATE_DEPLOY, facts())
    data = {k: v for k, v in front(text).items() if k not in drop}
    data.update(fields)
    encoded = {key: msgspec.json.encode(value).decode() for key, value in data.items()}
    lines = "".join(f"{key}: {value}\n" for key, value in encoded.items())
    return f"---\n{lines}---\n"


@pytest.mark.parametrize(
    "drop",
    [("exit_code", "decided_by"), ("hook_exit_code", "deployed_by"), ()],
    ids=["reference-keys-only", "old-keys-only", "both"],
)
def test_the_deploy_gate_reads_logs_under_either_names(drop: tuple[str, ...]):
    assert deploy_gate(log_with(drop=drop)).verdict == "pass"
    # and a verdict Conveyor wrote for another job is refused under either name
    refused = deploy_gate(log_with(drop=drop), job=f"{TID}.deploy.2.work")
    assert refused.verdict == "retry"
    assert "not of" in refused.reason


def test_a_superseded_verdict_passes_only_when_conveyor_wrote_it():
    result = deploy_gate(log_with(deploy_status="SUPERSEDED", reason="newer is live"))
    assert (result.verdict, result.reason) == ("pass", "deploy SUPERSEDED: newer is live")
    by_agent = log_with(drop=("decided_by", "deployed_by"), deploy_status="SUPERSEDED")
    assert deploy_gate(by_agent).verdict == "retry"
    stale = log_with(deploy_status="SUPERSEDED")
    assert deploy_gate(stale, job=f"{TID}.deploy.2.work").verdict == "retry"


def test_an_unstaged_verdict_sends_the_work_back_to_staging():
    result = deploy_gate(log_with(deploy_status="UNSTAGED", reason="tree moved"))
    assert result.verdict == "rework"
    assert result.back_to == pl.GATE_STAGING
    assert result.reason == "deploy UNSTAGED: tree moved"


def test_a_failed_verdict_still_reworks_through_on_fail():
    result = deploy_gate(log_with(deploy_status="FAILED"))
    assert (result.verdict, result.reason, result.back_to) == ("rework", "deploy FAILED", "")


def test_staging_clears_the_production_verdict_too_before_it_merges_again():
    assert dp.stale_verdicts(pl.GATE_STAGING, TID) == (
        pl.artifact_path(TID, pl.STAGING_LOG),
        pl.artifact_path(TID, pl.DEPLOY_LOG),
    )
    assert dp.stale_verdicts(pl.GATE_DEPLOY, TID) == (pl.artifact_path(TID, pl.DEPLOY_LOG),)
    assert dp.stale_verdicts(pl.GATE_REVIEW, TID) == ()


# --- placeholders --------------------------------------------------------------------------


def test_sha_and_base_sha_reach_the_deploy_command_in_one_pass():
    repo = RepoConfig(name="demo", prefix="DEMO", deploy_command=["ship", "{sha}", "{base_sha}"])
    order = qp.claim(
        qp.Job(
            id=f"{TID}.deploy.1.work",
            task_id=TID,
            repo="demo",
            stage="deploy",
            role="deployer",
            visit=1,
            branch="feature/DEMO-1-t",
            title="t",
        ),
        now=1,
    ).emit[0]
    argv = lp.deploy_argv(
        order,  # type: ignore[arg-type]
        repo,
        gate=pl.GATE_DEPLOY,
        worktree="/w/{sha}",
        python="py",
        sha=M2,
        base_sha="",
    )
    assert argv == ["ship", M2, ""]
    assert lp.substitute(["{sha}"], {"work_item": TID}) == ["{sha}"]


def test_the_janitor_never_compacts_a_repositorys_deployed_commit():
    key = effect_key("deployed", "demo")
    assert key == "deployed.demo"
    row = janitor_policy.EffectRow(key=key, done=True, at=0.0)
    plan = janitor_policy.compaction(
        {TID}, {TID}, jobs={}, runs={}, watches={}, effects=[row], before=1e12
    )
    assert plan.effects == []
