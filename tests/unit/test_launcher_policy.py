"""Launcher decisions: argv placeholders, agent environment, prompt, usage, deploy verdicts."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import gate_policy as gp
from actors import launcher_policy as lp
from actors import stage_policy as sp
from bus.messages import LaunchOrder
from conveyor import config as config_mod
from conveyor import pipeline as pl
from conveyor.config import Config, RepoConfig
from conveyor.errors import InvalidField
from conveyor.pipeline import GATE_DEPLOY, GATE_STAGING

PYTHON = "/opt/py/bin/python3"
WORKTREE = "/data/worktrees/DEMO-1"
VALUES = {
    "work_item": "DEMO-1",
    "repo": "demo",
    "branch": "feature/DEMO-1-add-login",
    "worktree": WORKTREE,
    "stage": "development",
}
REPO = RepoConfig(
    name="demo",
    prefix="DEMO",
    check_command=["{python}", "-m", "unittest", "discover"],
    staging_command=["{python}", "deploy.py", "--env", "staging", "--item", "{work_item}"],
    deploy_command=["./deploy.sh", "prod", "{branch}", "{stage}"],
)


def order(stage: str = "development", role: str = "developer", **changes: object) -> LaunchOrder:
    fields: dict[str, object] = {
        "job_id": f"DEMO-1.{stage}.1.work",
        "attempt": 2,
        "task_id": "DEMO-1",
        "repo": "demo",
        "stage": stage,
        "role": role,
        "visit": 1,
        "branch": "feature/DEMO-1-add-login",
        "title": "Add login",
        "description": "Users log in with a password.",
    }
    fields.update(changes)
    return LaunchOrder(**fields)


STAGE_GATES = {"deploy-staging": GATE_STAGING, "deploy": GATE_DEPLOY}
"""The default pipeline's deploy stages and their gates."""


def env_for(
    launch: LaunchOrder, base: dict[str, str] | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    return lp.agent_env(
        base or {},
        launch,
        repo=REPO,
        gate=STAGE_GATES.get(launch.stage, ""),
        worktree=WORKTREE,
        python=PYTHON,
        extra=extra or {},
    )


# --- substitute ------------------------------------------------------------------------------


def test_known_placeholders_are_substituted_inside_arguments():
    argv = [
        "agent",
        "--item={work_item}",
        "{repo}",
        "--branch",
        "{branch}",
        "-C",
        "{worktree}",
        "{stage}:{stage}",
    ]
    assert lp.substitute(argv, VALUES) == [
        "agent",
        "--item=DEMO-1",
        "demo",
        "--branch",
        "feature/DEMO-1-add-login",
        "-C",
        WORKTREE,
        "development:development",
    ]


@pytest.mark.parametrize(
    "arg",
    [
        "{__class__}",
        "{work_item.x}",
        "{work_item!r}",
        "{work_item:>10}",
        "{0}",
        "{}",
        "{title}",
        "{description}",
        "{python}",
        "{ work_item }",
        "{WORK_ITEM}",
        "$HOME",
        "$(id)",
        "`id`",
        "%(work_item)s",
    ],
)
def test_anything_that_is_not_a_known_placeholder_stays_literal(arg: str):
    assert lp.substitute([arg], VALUES) == [arg]


def test_a_placeholder_without_a_value_stays_literal():
    assert lp.substitute(["{branch}", "{repo}"], {"repo": "demo"}) == ["{branch}", "demo"]


def test_substitution_keeps_one_argument_per_argument():
    values = {**VALUES, "worktree": "/tmp/dir with spaces; rm -rf ~"}
    assert lp.substitute(["-C", "{worktree}"], values) == ["-C", "/tmp/dir with spaces; rm -rf ~"]


def test_a_substituted_value_is_never_substituted_again():
    values = {**VALUES, "worktree": "/data/{stage}/wt"}
    assert lp.substitute(["{worktree}"], values) == ["/data/{stage}/wt"]


@settings(max_examples=150, deadline=None)
@given(
    argv=st.lists(st.text(alphabet=st.sampled_from("{}_.!:abcdefghijklmnorstuvwxyz ")), max_size=5)
)
def test_substitute_only_ever_replaces_whole_known_placeholders(argv: list[str]):
    out = lp.substitute(argv, VALUES)
    assert len(out) == len(argv)
    for before, after in zip(argv, out, strict=True):
        expected = before
        for name in lp.PLACEHOLDERS:
            expected = expected.replace(name, VALUES[name[1:-1]])
        assert after == expected


def test_python_argument_is_replaced_by_the_interpreter():
    assert lp.python_argv(["{python}", "-m", "x"], PYTHON) == [PYTHON, "-m", "x"]


def test_python_placeholder_inside_a_longer_argument_is_left_alone():
    assert lp.python_argv(["--py={python}", "{python}x"], PYTHON) == ["--py={python}", "{python}x"]


# --- environment -----------------------------------------------------------------------------


def test_agent_env_strips_nesting_guards_and_inherited_conveyor_vars():
    # Given a launcher environment with a nesting guard and stale Conveyor variables
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/c",
        "CLAUDECODE": "1",
        "CONVEYOR_WORK_ITEM": "OTHER-9",
        "CONVEYOR_SECRET_FROM_PARENT": "x",
        "CONVEYOR_QUEUE__MAX_CONCURRENCY": "9",
    }
    # When the agent environment is built
    env = env_for(order(), base)
    # Then the guard and the inherited Conveyor vars are gone, the rest is kept
    assert "CLAUDECODE" not in env
    assert "CONVEYOR_SECRET_FROM_PARENT" not in env
    assert "CONVEYOR_QUEUE__MAX_CONCURRENCY" not in env
    assert (env["PATH"], env["HOME"]) == ("/usr/bin", "/home/c")
    # And the job's own facts are set
    assert env["CONVEYOR_WORK_ITEM"] == "DEMO-1"
    assert {
        k: env[k]
        for k in (
            "CONVEYOR_ROLE",
            "CONVEYOR_TITLE",
            "CONVEYOR_REPO",
            "CONVEYOR_BRANCH",
            "CONVEYOR_STAGE",
            "CONVEYOR_VISIT",
            "CONVEYOR_ATTEMPT",
        )
    } == {
        "CONVEYOR_ROLE": "developer",
        "CONVEYOR_TITLE": "Add login",
        "CONVEYOR_REPO": "demo",
        "CONVEYOR_BRANCH": "feature/DEMO-1-add-login",
        "CONVEYOR_STAGE": "development",
        "CONVEYOR_VISIT": "1",
        "CONVEYOR_ATTEMPT": "2",
    }


def test_agent_env_does_not_modify_the_base_environment():
    base = {"CLAUDECODE": "1", "PATH": "/bin"}
    env_for(order(), base)
    assert base == {"CLAUDECODE": "1", "PATH": "/bin"}


def test_agent_env_adds_the_role_extras_last():
    env = env_for(order(), {"API_KEY": "old"}, extra={"API_KEY": "new", "MODEL": "m1"})
    assert (env["API_KEY"], env["MODEL"]) == ("new", "m1")


def test_check_command_is_passed_as_json_argv_with_the_interpreter():
    env = env_for(order())
    assert json.loads(env["CONVEYOR_CHECK_COMMAND"]) == [PYTHON, "-m", "unittest", "discover"]


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("deploy-staging", [PYTHON, "deploy.py", "--env", "staging", "--item", "DEMO-1"]),
        ("deploy", ["./deploy.sh", "prod", "feature/DEMO-1-add-login", "deploy"]),
        ("development", []),
        ("review", []),
    ],
)
def test_deploy_command_is_chosen_by_stage(stage: str, expected: list[str]):
    env = env_for(order(stage=stage, role="deployer"))
    assert json.loads(env["CONVEYOR_DEPLOY_COMMAND"]) == expected


def test_work_item_text_in_the_environment_is_passed_verbatim():
    launch = order(title="$(rm -rf /) `id` {repo}")
    assert env_for(launch)["CONVEYOR_TITLE"] == "$(rm -rf /) `id` {repo}"


# --- prompt ----------------------------------------------------------------------------------


def test_prompt_names_the_role_work_item_and_artifact_directory():
    text = lp.prompt(order())
    assert text.startswith("# developer for DEMO-1: Add login\n")
    assert "Branch: feature/DEMO-1-add-login" in text
    assert "visit 1, attempt 2" in text
    assert "docs/work-items/DEMO-1/" in text
    assert text.endswith("Users log in with a password.\n")


def test_prompt_without_description_says_so():
    assert "(no description)" in lp.prompt(order(description=""))


def test_prompt_does_not_interpret_braces_in_work_item_text():
    text = lp.prompt(order(title="{__class__}", description="{work_item} {0}"))
    assert "{__class__}" in text
    assert "{work_item} {0}" in text


def test_run_key_joins_job_and_attempt():
    assert lp.run_key("DEMO-1.review.2.work", 3) == "DEMO-1.review.2.work.3"


# --- usage -----------------------------------------------------------------------------------

CLAUDE_RESULT = json.dumps(
    {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "duration_ms": 51234,
        "num_turns": 12,
        "result": "Done.",
        "session_id": "abc",
        "total_cost_usd": 0.4213,
        "usage": {"input_tokens": 1200, "cache_read_input_tokens": 50000, "output_tokens": 3400},
    }
)


def test_usage_is_read_from_a_claude_result_line_after_other_output():
    tail = "\n".join(['{"type":"assistant","message":{}}', "some plain text", CLAUDE_RESULT, ""])
    assert lp.parse_usage(tail) == {
        "usage": {"input_tokens": 1200, "cache_read_input_tokens": 50000, "output_tokens": 3400},
        "cost_usd": 0.4213,
    }


def test_a_claude_error_result_is_flagged():
    line = json.dumps(
        {
            "type": "result",
            "subtype": "error_max_turns",
            "is_error": True,
            "total_cost_usd": 1,
            "usage": {"output_tokens": 5},
        }
    )
    assert lp.parse_usage(line) == {
        "usage": {"output_tokens": 5},
        "cost_usd": 1.0,
        "is_error": True,
    }


def test_usage_is_read_from_the_demo_agent_result_line():
    line = json.dumps(
        {
            "type": "result",
            "role": "developer",
            "outcome": "ok",
            "usage": {"input_tokens": 0, "output_tokens": 0},
            "total_cost_usd": 0.0,
        }
    )
    assert lp.parse_usage(f"demo-agent: wrote 11-dev-notes.md\n{line}\n") == {
        "usage": {"input_tokens": 0, "output_tokens": 0},
        "cost_usd": 0.0,
    }


def test_usage_under_stats_is_accepted():
    line = json.dumps({"type": "result", "stats": {"tokens": 7}})
    assert lp.parse_usage(line) == {"usage": {"tokens": 7}}


def test_the_last_result_line_wins():
    first = json.dumps({"type": "result", "total_cost_usd": 1.0})
    last = json.dumps({"type": "result", "total_cost_usd": 2.0})
    assert lp.parse_usage(f"{first}\n{last}\n")["cost_usd"] == 2.0


@pytest.mark.parametrize(
    "tail",
    [
        "",
        "plain text only\nno json here\n",
        "{not json at all",
        '{"type": "assistant", "usage": {"output_tokens": 3}}',
        '["type", "result"]',
        '{"type": "result"',
        "\x00\xff garbage \ufffd",
    ],
)
def test_output_without_a_result_line_has_no_usage(tail: str):
    assert lp.parse_usage(tail) == {}


def test_a_result_line_with_odd_fields_yields_empty_usage_and_no_cost():
    line = json.dumps(
        {
            "type": "result",
            "usage": ["not", "a", "dict"],
            "total_cost_usd": "0.5",
            "is_error": "yes",
        }
    )
    assert lp.parse_usage(line) == {"usage": {}}


@settings(max_examples=150, deadline=None)
@given(tail=st.text(max_size=300))
def test_parse_usage_never_raises_on_any_output(tail: str):
    result = lp.parse_usage(tail)
    assert result == {} or isinstance(result["usage"], dict)


# --- deploys run by Conveyor -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("deploy-staging", REPO.staging_command),
        ("deploy", REPO.deploy_command),
        ("testing", []),
        ("done", []),
    ],
)
def test_deploy_command_for_picks_the_repository_command_of_a_deploy_stage(
    stage: str, expected: list[str]
):
    assert lp.deploy_command_for(STAGE_GATES.get(stage, ""), REPO) == expected


def test_deploy_argv_fills_python_and_placeholders_without_a_shell():
    argv = lp.deploy_argv(
        order(stage="deploy-staging", role="deployer"),
        REPO,
        gate=GATE_STAGING,
        worktree=WORKTREE,
        python=PYTHON,
    )
    assert argv == [PYTHON, "deploy.py", "--env", "staging", "--item", "DEMO-1"]


def test_deploy_argv_is_empty_for_the_merge_step_and_for_a_repository_without_commands():
    merge = order(stage="deploy-staging", role="merge")
    assert lp.deploy_argv(merge, REPO, gate=GATE_STAGING, worktree=WORKTREE, python=PYTHON) == []
    bare = RepoConfig(name="demo", prefix="DEMO")
    deploy = order(stage="deploy", role="deployer")
    assert lp.deploy_argv(deploy, bare, gate=GATE_DEPLOY, worktree=WORKTREE, python=PYTHON) == []


def test_wrap_puts_the_command_behind_the_exit_code_wrapper():
    assert lp.wrap(["./d.sh", "x"], exit_file="/r/exit_code", python=PYTHON) == [
        PYTHON,
        "-I",
        "-S",
        lp.RUNWRAP_SCRIPT,
        "--exit-file",
        "/r/exit_code",
        "--",
        "./d.sh",
        "x",
    ]


@pytest.mark.parametrize(
    ("exit_code", "health_ok", "status", "said"),
    [
        (0, None, "SUCCESS", "no health URL"),
        (0, True, "SUCCESS", "answered 2xx"),
        (0, False, "FAILED", "health check failed: HTTP 500"),
        (1, None, "FAILED", "exited with code 1"),
        (2, True, "FAILED", "exited with code 2"),
        (None, None, "FAILED", "did not finish: HTTP 500"),
    ],
)
def test_verdict_is_success_only_for_exit_zero_and_no_failed_health_check(
    exit_code: int | None, health_ok: bool | None, status: str, said: str
):
    got, reason = lp.verdict(exit_code, health_ok, detail="HTTP 500")
    assert got == status
    assert said in reason


def _facts(**changes: object) -> lp.DeployFacts:
    fields: dict[str, object] = {
        "work_item": "DEMO-1",
        "job_id": "DEMO-1.deploy.2.work",
        "timestamp": "2025-01-02T03:04:05Z",
        "command": [PYTHON, "deploy.py", "--x: y", "# not a comment"],
        "exit_code": 0,
        "health_url": "http://127.0.0.1:9/health",
        "health": "HTTP 200",
        "status": "SUCCESS",
        "reason": "deploy command exited 0",
        "output": "line 1\nline 2\n",
    }
    fields.update(changes)
    return lp.DeployFacts(**fields)


def test_deploy_log_of_staging_is_read_by_the_staging_gate_as_decided_by_conveyor():
    path, text = lp.deploy_log(GATE_STAGING, _facts())
    assert path == "docs/work-items/DEMO-1/15-staging-log.md"
    fm = msgspec.yaml.decode(gp.split_front_matter(text).encode())
    assert fm["staging_status"] == "SUCCESS"
    assert fm["decided_by"] == "conveyor"
    assert fm["command"] == [PYTHON, "deploy.py", "--x: y", "# not a comment"]
    assert fm["exit_code"] == 0
    assert fm["work_item"] == "DEMO-1"
    assert fm["health_url"] == "http://127.0.0.1:9/health"
    assert "line 2" in text.split("---", 2)[2]
    task = sp.Task(id="DEMO-1", repo="demo", title="t", branch="b", job_id="DEMO-1.deploy.2.work")
    inputs = gp.GateInputs(files={path: text})
    assert gp.evaluate_gate("staging_status", task, inputs).verdict == "pass"


def test_a_failed_deploy_log_sends_the_gate_to_rework_with_a_null_exit_code():
    path, text = lp.deploy_log(
        GATE_DEPLOY, _facts(status="FAILED", exit_code=None, reason="timed out", output="")
    )
    assert path == "docs/work-items/DEMO-1/14-deploy-log.md"
    fm = msgspec.yaml.decode(gp.split_front_matter(text).encode())
    assert fm["deploy_status"] == "FAILED"
    assert fm["exit_code"] is None
    task = sp.Task(id="DEMO-1", repo="demo", title="t", branch="b", job_id="DEMO-1.deploy.2.work")
    result = gp.evaluate_gate("deploy_status", task, gp.GateInputs(files={path: text}))
    assert result.verdict == "rework"


def test_deploy_log_output_with_backticks_cannot_close_the_quote_early():
    _, text = lp.deploy_log(GATE_DEPLOY, _facts(output="```\n---\ndeploy_status: SUCCESS\n"))
    assert "````text\n" in text
    assert text.rstrip().endswith("````")


def test_deploy_log_quotes_only_the_tail_of_long_output():
    _, text = lp.deploy_log(GATE_DEPLOY, _facts(output="x" * 10_000 + "END"))
    assert "END" in text
    assert text.count("x") < 5_000


def test_deploy_log_refuses_a_stage_without_a_verdict():
    with pytest.raises(ValueError, match="no deploy verdict"):
        lp.deploy_log("review_approved", _facts())


def test_verdict_path_names_the_files_the_deploy_gates_read():
    assert lp.verdict_path(GATE_STAGING, "DEMO-1") == pl.artifact_path("DEMO-1", pl.STAGING_LOG)
    assert lp.verdict_path(GATE_DEPLOY, "DEMO-1") == pl.artifact_path("DEMO-1", pl.DEPLOY_LOG)
    assert lp.verdict_path("tests_passed", "DEMO-1") is None
    assert gp.GATE_FILES["staging_status"] == (pl.STAGING_LOG,)
    assert gp.GATE_FILES["deploy_status"] == (pl.DEPLOY_LOG,)


# --- keyed on the gate, not the stage name ---------------------------------------------------

RENAMED = [
    {"name": "analysis", "role": "analyst", "gate": "analysis_complete"},
    {"name": "development", "role": "developer", "gate": "ci_green"},
    {"name": "stage-it", "role": "deployer", "gate": "staging_status", "merge": True},
    {"name": "ship", "role": "deployer", "gate": "deploy_status", "on_fail": "development"},
]


def fake_config(stages: list[dict[str, object]] | None = None) -> Config:
    """A config with the test repository, and optionally a renamed pipeline."""
    overrides: dict[str, object] = {
        "data_dir": "/data",
        "repos": [msgspec.to_builtins(REPO)],
        "agents": {"developer": {"command": ["{python}", "agent.py", "{stage}"], "timeout_s": 7.0}},
        "deploy": {"timeout_s": 42.0},
    }
    if stages is not None:
        overrides["pipeline"] = {"stages": stages}
    return config_mod.load(env={}, overrides=overrides)


def plan_for(launch: LaunchOrder, cfg: Config) -> lp.LaunchPlan:
    return lp.plan(
        launch,
        cfg,
        worktree=WORKTREE,
        run_dir="/data/runs/DEMO-1/x.2",
        python=PYTHON,
        base_env={"HOME": "/home/c", "CONVEYOR_LEAK": "x"},
    )


@pytest.mark.parametrize(
    ("stage", "gate", "command", "verdict"),
    [
        ("stage-it", GATE_STAGING, REPO.staging_command, pl.STAGING_LOG),
        ("ship", GATE_DEPLOY, REPO.deploy_command, pl.DEPLOY_LOG),
    ],
)
def test_a_renamed_deploy_stage_still_runs_its_command_and_clears_its_verdict(
    stage: str, gate: str, command: list[str], verdict: str
):
    launch = order(stage=stage, role="deployer")
    plan = plan_for(launch, fake_config(RENAMED))
    values = lp.placeholder_values(launch, WORKTREE)
    assert plan.kind == "deploy"
    assert plan.gate == gate
    assert plan.command == lp.substitute(lp.python_argv(command, PYTHON), values)
    assert plan.argv == lp.wrap(plan.command, exit_file=plan.exit_file, python=PYTHON)
    assert plan.verdict_path == pl.artifact_path("DEMO-1", verdict)
    assert plan.env["CONVEYOR_GATE"] == gate
    assert json.loads(plan.env["CONVEYOR_DEPLOY_COMMAND"]) == plan.command
    assert plan.timeout_s == 42.0
    assert plan.prompt == ""


def test_a_stage_named_deploy_with_another_gate_runs_its_agent():
    stages = [{"name": "deploy", "role": "developer", "gate": "ci_green"}]
    plan = plan_for(order(stage="deploy"), fake_config(stages))
    assert plan.kind == "agent"
    assert plan.command == []
    assert plan.verdict_path is None
    assert plan.env["CONVEYOR_GATE"] == "ci_green"
    assert json.loads(plan.env["CONVEYOR_DEPLOY_COMMAND"]) == []


def test_the_plan_of_an_agent_run_names_its_files_argv_prompt_and_timeout():
    launch = order()
    plan = plan_for(launch, fake_config())
    assert plan.kind == "agent"
    assert plan.exit_file == "/data/runs/DEMO-1/x.2/exit_code"
    assert plan.log_path == "/data/runs/DEMO-1/x.2/output.log"
    assert plan.cwd == WORKTREE
    assert plan.argv == lp.wrap(
        [PYTHON, "agent.py", "development"], exit_file=plan.exit_file, python=PYTHON
    )
    assert plan.prompt == lp.prompt(launch)
    assert plan.timeout_s == 7.0
    assert plan.env["CONVEYOR_GATE"] == "ci_green"
    assert plan.env["HOME"] == "/home/c"
    assert "CONVEYOR_LEAK" not in plan.env
    assert plan.verdict_path is None


@pytest.mark.parametrize("role", ["intake", "merge"])
def test_a_built_in_step_plans_no_process(role: str):
    plan = plan_for(order(stage="stage-it", role=role), fake_config(RENAMED))
    assert plan.kind == role
    assert plan.argv == []
    assert plan.command == []
    assert plan.verdict_path is None


def test_the_plan_of_an_unknown_repository_is_refused():
    with pytest.raises(InvalidField):
        plan_for(order(repo="nope"), fake_config())


def test_a_stage_no_longer_configured_has_no_gate_and_runs_no_deploy():
    cfg = fake_config(RENAMED)
    assert lp.stage_gate(cfg, "deploy") == ""
    assert plan_for(order(stage="deploy", role="deployer"), cfg).kind == "agent"


def test_a_heartbeat_is_due_first_on_new_usage_and_every_fifth_of_the_window():
    window = 15.0
    assert lp.beat_due(None, 100.0, window, {})
    last = (100.0, {"input_tokens": 1})
    assert not lp.beat_due(last, 102.9, window, {"input_tokens": 1})
    assert lp.beat_due(last, 103.0, window, {"input_tokens": 1})
    assert lp.beat_due(last, 100.1, window, {"input_tokens": 2})
