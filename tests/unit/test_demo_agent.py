"""The scripted demo agent: directive parsing, and real runs of every role and behaviour."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.agents.demo_directives import BEHAVIOURS, applies, parse_directives
from conveyor.agents.demo_job import ROLES, front_matter, load_job
from conveyor.agents.demo_repo import DEMO_CHECK_COMMAND, create_demo_files
from conveyor.errors import InvalidField

AGENT = [sys.executable, "-m", "conveyor.demo_agent"]
ITEM = "DEMO-1"
TITLE = "Add: a \"quoted\" feature 'x' # not a comment"
ITEM_DIR = Path("docs", "work-items", ITEM)
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for relative, content in create_demo_files().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def agent_env(role: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        CONVEYOR_ROLE=role,
        CONVEYOR_WORK_ITEM=ITEM,
        CONVEYOR_TITLE=TITLE,
        CONVEYOR_REPO="demo",
        CONVEYOR_STAGE="analysis",
        CONVEYOR_VISIT="1",
        CONVEYOR_ATTEMPT="1",
    )
    env.update(extra)
    return env


def prompt_file(repo: Path, prompt: str) -> Path:
    path = repo.parent / "prompt.txt"
    path.write_text(f"Work item {ITEM}: {TITLE}\n\n{prompt}\n")
    return path


def run_agent(
    repo: Path, role: str, prompt: str = "", **extra: str
) -> subprocess.CompletedProcess[str]:
    with prompt_file(repo, prompt).open("rb") as stdin:
        return subprocess.run(
            AGENT,
            cwd=repo,
            stdin=stdin,
            capture_output=True,
            text=True,
            env=agent_env(role, **extra),
            timeout=60,
            check=False,
        )


def result_line(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    last = done.stdout.strip().splitlines()[-1]
    result: dict[str, object] = json.loads(last)
    assert result["type"] == "result"
    assert result["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert result["total_cost_usd"] == 0.0
    return result


def split_front_matter(text: str) -> tuple[str, str]:
    assert text.startswith("---\n"), text[:40]
    head, sep, body = text[4:].partition("\n---\n")
    assert sep, "front matter is not closed"
    return head, body


def front(repo: Path, name: str) -> dict[str, object]:
    head, _ = split_front_matter((repo / ITEM_DIR / name).read_text())
    loaded = yaml.safe_load(head)
    assert isinstance(loaded, dict)
    return loaded


def check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        DEMO_CHECK_COMMAND,
        cwd=repo,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


CHECK_ENV = json.dumps(DEMO_CHECK_COMMAND)


# --------------------------------------------------------------------------- directives


def test_parse_directives_reads_role_behaviour_and_visit_limit() -> None:
    text = (
        "Please build it.\n"
        "demo: developer=fail*2 reviewer=request_changes tester=slow:0.5*always\n"
        "  demo: deployer=crash*0 analyst=die architect=hang*3\n"
    )
    assert parse_directives(text) == {
        "developer": ("fail", 2),
        "reviewer": ("request_changes", 1),
        "tester": ("slow:0.5", None),
        "deployer": ("crash", 0),
        "analyst": ("die", 1),
        "architect": ("hang", 3),
    }


def test_parse_directives_lets_a_later_token_win() -> None:
    text = "demo: developer=fail\ndemo: developer=ok*always"
    assert parse_directives(text) == {"developer": ("ok", None)}


@pytest.mark.parametrize(
    "text",
    [
        "Demo: developer=fail",
        "xdemo: developer=fail",
        "the demo: developer=fail",
        "demo developer=fail",
        "demo: developer",
        "demo: =fail",
        "demo: DEVELOPER=fail",
        "demo: developer=FAIL",
        "demo: janitor=fail",
        "demo: developer=explode",
        "demo: developer=fail*",
        "demo: developer=fail*x",
        "demo: developer=fail*-1",
        "demo: developer=fail*1.5",
        "demo: developer=fail*99999999999999999999",
        "demo: developer=fail*²",
        "demo: developer=slow",
        "demo: developer=slow:",
        "demo: developer=slow:-1",
        "demo: developer=slow:nan",
        "demo: developer=slow:inf",
        "demo: developer=slow:1e9",
        "demo: analyst=request_changes",
        "demo: developer=fail=ok",
        "demo:",
        "",
    ],
)
def test_parse_directives_ignores_garbage(text: str) -> None:
    assert parse_directives(text) == {}


def test_parse_directives_keeps_good_tokens_next_to_bad_ones() -> None:
    text = "demo: janitor=fail developer=fail*3 tester=??? reviewer=request_changes*always"
    assert parse_directives(text) == {
        "developer": ("fail", 3),
        "reviewer": ("request_changes", None),
    }


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_parse_directives_never_raises_on_arbitrary_text(text: str) -> None:
    found = parse_directives(text)
    for role, (behaviour, count) in found.items():
        assert role in ROLES
        assert behaviour in BEHAVIOURS or behaviour.startswith("slow:")
        assert count is None or count >= 0


_tokens = st.one_of(
    st.text(alphabet="adeilnoprstvy=*:0123456789._-", max_size=30),
    st.builds(
        "{}={}{}".format,
        st.sampled_from([*sorted(ROLES), "x"]),
        st.sampled_from([*sorted(BEHAVIOURS), "slow:1", "slow:", "bad"]),
        st.sampled_from(["", "*0", "*2", "*always", "*", "*x"]),
    ),
)


@given(st.lists(_tokens, max_size=8))
@settings(max_examples=300, deadline=None)
def test_parse_directives_never_raises_on_directive_shaped_lines(tokens: list[str]) -> None:
    found = parse_directives("demo: " + " ".join(tokens))
    assert set(found) <= ROLES


@pytest.mark.parametrize(
    ("directive", "visit", "expected"),
    [
        (("fail", 1), 1, True),
        (("fail", 1), 2, False),
        (("fail", 2), 2, True),
        (("fail", 2), 3, False),
        (("fail", 0), 1, False),
        (("fail", None), 1, True),
        (("fail", None), 99, True),
    ],
)
def test_applies_limits_a_directive_to_the_first_n_visits(
    directive: tuple[str, int | None], visit: int, expected: bool
) -> None:
    assert applies(directive, visit) is expected


# --------------------------------------------------------------------------- environment


def test_load_job_reads_the_environment(tmp_path: Path) -> None:
    env = agent_env(
        "tester", CONVEYOR_VISIT="2", CONVEYOR_ATTEMPT="3", CONVEYOR_CHECK_COMMAND='["make"]'
    )
    job = load_job(env, "prompt", tmp_path)
    assert (job.role, job.item_id, job.visit, job.attempt) == ("tester", ITEM, 2, 3)
    assert job.check_command == ["make"]
    assert job.deploy_command is None
    assert job.slug_id == "demo_1"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"CONVEYOR_ROLE": "janitor"}, "CONVEYOR_ROLE"),
        ({"CONVEYOR_WORK_ITEM": "../../etc"}, "CONVEYOR_WORK_ITEM"),
        ({"CONVEYOR_WORK_ITEM": "DEMO-1/../../x"}, "CONVEYOR_WORK_ITEM"),
        ({"CONVEYOR_VISIT": "0"}, "CONVEYOR_VISIT"),
        ({"CONVEYOR_VISIT": "two"}, "CONVEYOR_VISIT"),
        ({"CONVEYOR_ATTEMPT": "-1"}, "CONVEYOR_ATTEMPT"),
        ({"CONVEYOR_CHECK_COMMAND": "make test"}, "CONVEYOR_CHECK_COMMAND"),
        ({"CONVEYOR_CHECK_COMMAND": '"make"'}, "CONVEYOR_CHECK_COMMAND"),
        ({"CONVEYOR_CHECK_COMMAND": "[1, 2]"}, "CONVEYOR_CHECK_COMMAND"),
        ({"CONVEYOR_DEPLOY_COMMAND": '[""]'}, "CONVEYOR_DEPLOY_COMMAND"),
        ({"CONVEYOR_ROLE": "deployer", "CONVEYOR_STAGE": "testing"}, "CONVEYOR_STAGE"),
        ({"CONVEYOR_ROLE": "deployer", "CONVEYOR_GATE": "tests_passed"}, "CONVEYOR_GATE"),
        (
            {"CONVEYOR_ROLE": "deployer", "CONVEYOR_STAGE": "deploy", "CONVEYOR_GATE": ""},
            "CONVEYOR_GATE",
        ),
    ],
)
def test_load_job_refuses_bad_environment(
    tmp_path: Path, extra: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidField) as caught:
        load_job(agent_env("tester", **extra), "", tmp_path)
    assert caught.value.field == field


@pytest.mark.parametrize("raw", ["", "  ", "[]"])
def test_load_job_treats_empty_commands_as_none(tmp_path: Path, raw: str) -> None:
    job = load_job(agent_env("tester", CONVEYOR_CHECK_COMMAND=raw), "", tmp_path)
    assert job.check_command is None


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_title_round_trips_through_front_matter(raw_title: str) -> None:
    job = load_job(agent_env("analyst", CONVEYOR_TITLE=raw_title), "", Path("."))
    head, body = split_front_matter(front_matter({"title": job.title}, "body"))
    assert yaml.safe_load(head) == {"title": job.title}
    assert body.strip() == "body"


# --------------------------------------------------------------------------- analyst


def test_analyst_writes_brd_trz_acceptance_criteria_and_test_plan(repo: Path) -> None:
    done = run_agent(repo, "analyst")
    assert done.returncode == 0, done.stderr
    assert result_line(done) == {
        "type": "result",
        "role": "analyst",
        "outcome": "ok",
        "usage": {"input_tokens": 0, "output_tokens": 0},
        "total_cost_usd": 0.0,
    }
    assert front(repo, "01-brd.md") == {"type": "brd", "work_item_id": ITEM, "title": TITLE}
    assert front(repo, "02-trz.md") == {"type": "trz", "work_item_id": ITEM}
    assert front(repo, "03-acceptance-criteria.md") == {
        "type": "acceptance-criteria",
        "work_item_id": ITEM,
    }
    plan = yaml.safe_load((repo / ITEM_DIR / "04-test-plan.yaml").read_text())
    assert plan == {
        "work_item": ITEM,
        "title": TITLE,
        "repo": "demo",
        "stage": "analysis",
        "tests": [
            {
                "id": "TC-01",
                "type": "unit",
                "description": plan["tests"][0]["description"],
                "module": "features.demo_1",
                "expected": "PASS",
            }
        ],
        "regression": True,
    }


def test_analyst_fail_writes_a_malformed_brd_and_exits_zero(repo: Path) -> None:
    done = run_agent(repo, "analyst", "demo: analyst=fail")
    assert done.returncode == 0, done.stderr
    assert result_line(done)["outcome"] == "fail"
    head, _ = split_front_matter((repo / ITEM_DIR / "01-brd.md").read_text())
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(head)
    assert front(repo, "02-trz.md")["type"] == "trz"


# --------------------------------------------------------------------------- architect


def test_architect_writes_adr_infra_requirements_and_tech_risks(repo: Path) -> None:
    done = run_agent(repo, "architect", CONVEYOR_STAGE="architecture")
    assert done.returncode == 0, done.stderr
    assert result_line(done)["outcome"] == "ok"
    adrs = list((repo / ITEM_DIR / "06-adr").iterdir())
    assert [p.name for p in adrs] == ["ADR-001-add-a-quoted-feature-x-not-a-comment.md"]
    assert front(repo, f"06-adr/{adrs[0].name}") == {
        "type": "adr",
        "work_item_id": ITEM,
        "status": "accepted",
        "title": TITLE,
    }
    assert front(repo, "07-infra-requirements.md") == {
        "type": "infra-requirements",
        "work_item_id": ITEM,
    }
    assert front(repo, "10-tech-risks.md") == {"type": "tech-risks", "work_item_id": ITEM}


def test_architect_fail_writes_a_malformed_adr(repo: Path) -> None:
    done = run_agent(repo, "architect", "demo: architect=fail")
    assert done.returncode == 0, done.stderr
    (adr,) = (repo / ITEM_DIR / "06-adr").iterdir()
    head, _ = split_front_matter(adr.read_text())
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(head)


# --------------------------------------------------------------------------- developer


def test_developer_adds_a_feature_whose_test_the_demo_check_command_runs(repo: Path) -> None:
    done = run_agent(repo, "developer", CONVEYOR_STAGE="development")
    assert done.returncode == 0, done.stderr
    assert result_line(done)["outcome"] == "ok"
    assert (repo / "features" / "__init__.py").is_file()
    assert 'return "DEMO-1 done"' in (repo / "features" / "demo_1.py").read_text()
    assert front(repo, "11-dev-notes.md") == {
        "type": "dev-notes",
        "work_item_id": ITEM,
        "visit": 1,
    }
    checked = check(repo)
    assert checked.returncode == 0, checked.stderr
    assert "Ran 3 tests" in checked.stderr


def test_developer_fail_turns_ci_red_until_the_rework_visit(repo: Path) -> None:
    # Given a prompt that fails the developer on its first visit only
    prompt = "demo: developer=fail"
    # When the developer runs on visit 1, CI is red
    assert run_agent(repo, "developer", prompt).returncode == 0
    red = check(repo)
    assert red.returncode != 0
    assert "DEMO-1 not done" in red.stderr
    # Then the rework visit rewrites the same files and CI goes green
    done = run_agent(repo, "developer", prompt, CONVEYOR_VISIT="2")
    assert done.returncode == 0, done.stderr
    assert check(repo).returncode == 0
    assert front(repo, "11-dev-notes.md")["visit"] == 2


def test_developer_fail_times_zero_never_applies(repo: Path) -> None:
    assert run_agent(repo, "developer", "demo: developer=fail*0").returncode == 0
    assert check(repo).returncode == 0


# --------------------------------------------------------------------------- reviewer


def test_reviewer_approves_by_default(repo: Path) -> None:
    run_agent(repo, "developer")
    done = run_agent(repo, "reviewer", CONVEYOR_STAGE="review")
    assert done.returncode == 0, done.stderr
    assert front(repo, "12-review.md") == {
        "type": "review",
        "work_item_id": ITEM,
        "verdict": "APPROVED",
        "version": 1,
    }


def test_reviewer_requests_changes_for_the_first_n_visits(repo: Path) -> None:
    prompt = "demo: reviewer=request_changes*2"
    for visit, verdict in [(1, "REQUEST_CHANGES"), (2, "REQUEST_CHANGES"), (3, "APPROVED")]:
        done = run_agent(repo, "reviewer", prompt, CONVEYOR_VISIT=str(visit))
        assert done.returncode == 0, done.stderr
        review = front(repo, "12-review.md")
        assert (review["verdict"], review["version"]) == (verdict, visit)
    _, body = split_front_matter((repo / ITEM_DIR / "12-review.md").read_text())
    assert "Findings" in body


# --------------------------------------------------------------------------- tester


def test_tester_passes_when_the_check_command_exits_zero(repo: Path) -> None:
    run_agent(repo, "developer")
    done = run_agent(repo, "tester", CONVEYOR_STAGE="testing", CONVEYOR_CHECK_COMMAND=CHECK_ENV)
    assert done.returncode == 0, done.stderr
    assert result_line(done)["outcome"] == "ok"
    report = front(repo, "13-test-report.md")
    assert report["type"] == "test-report"
    assert report["work_item_id"] == ITEM
    assert (report["result"], report["exit_code"]) == ("PASS", 0)
    assert "unittest" in str(report["command"])


def test_tester_fails_when_the_check_command_fails(repo: Path) -> None:
    run_agent(repo, "developer", "demo: developer=fail")
    done = run_agent(repo, "tester", CONVEYOR_CHECK_COMMAND=CHECK_ENV)
    assert done.returncode == 0, done.stderr
    assert result_line(done)["outcome"] == "fail"
    report = front(repo, "13-test-report.md")
    assert (report["result"], report["exit_code"]) == ("FAIL", 1)


def test_tester_fail_reports_fail_without_running_the_command(repo: Path) -> None:
    marker = repo / "ran"
    command = json.dumps([sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    done = run_agent(repo, "tester", "demo: tester=fail", CONVEYOR_CHECK_COMMAND=command)
    assert done.returncode == 0, done.stderr
    assert front(repo, "13-test-report.md")["result"] == "FAIL"
    assert not marker.exists()


def test_tester_without_a_check_command_passes(repo: Path) -> None:
    done = run_agent(repo, "tester", CONVEYOR_CHECK_COMMAND="")
    assert done.returncode == 0, done.stderr
    report = front(repo, "13-test-report.md")
    assert (report["result"], report["command"], report["exit_code"]) == ("PASS", "none", None)


def test_tester_reports_fail_when_the_check_command_cannot_start(repo: Path) -> None:
    command = json.dumps([str(repo / "no-such-program")])
    done = run_agent(repo, "tester", CONVEYOR_CHECK_COMMAND=command)
    assert done.returncode == 0, done.stderr
    assert front(repo, "13-test-report.md")["result"] == "FAIL"


# --------------------------------------------------------------------------- deployer


def test_deployer_on_staging_without_a_command_succeeds(repo: Path) -> None:
    done = run_agent(repo, "deployer", CONVEYOR_STAGE="deploy-staging")
    assert done.returncode == 0, done.stderr
    log = front(repo, "15-staging-log.md")
    assert ISO_UTC.fullmatch(str(log.pop("timestamp")))
    assert log == {
        "staging_status": "SUCCESS",
        "base_url": "",
        "work_item": ITEM,
        "command": "none",
        "exit_code": None,
    }
    assert not (repo / ITEM_DIR / "14-deploy-log.md").exists()


def test_deployer_on_deploy_runs_the_deploy_command(repo: Path) -> None:
    command = json.dumps([sys.executable, "-c", "import os; print(os.getcwd())"])
    done = run_agent(repo, "deployer", CONVEYOR_STAGE="deploy", CONVEYOR_DEPLOY_COMMAND=command)
    assert done.returncode == 0, done.stderr
    log = front(repo, "14-deploy-log.md")
    assert ISO_UTC.fullmatch(str(log.pop("timestamp")))
    assert log["deploy_status"] == "SUCCESS"
    assert (log["work_item"], log["exit_code"]) == (ITEM, 0)
    assert str(repo.resolve()) in (repo / ITEM_DIR / "14-deploy-log.md").read_text()


def test_deployer_reports_failed_when_the_deploy_command_fails(repo: Path) -> None:
    command = json.dumps([sys.executable, "-c", "raise SystemExit(4)"])
    done = run_agent(repo, "deployer", CONVEYOR_STAGE="deploy", CONVEYOR_DEPLOY_COMMAND=command)
    assert done.returncode == 0, done.stderr
    assert result_line(done)["outcome"] == "fail"
    log = front(repo, "14-deploy-log.md")
    assert (log["deploy_status"], log["exit_code"]) == ("FAILED", 4)


@pytest.mark.parametrize(
    ("stage", "name", "field"),
    [
        ("deploy-staging", "15-staging-log.md", "staging_status"),
        ("deploy", "14-deploy-log.md", "deploy_status"),
    ],
)
def test_deployer_fail_reports_failed(repo: Path, stage: str, name: str, field: str) -> None:
    done = run_agent(repo, "deployer", "demo: deployer=fail", CONVEYOR_STAGE=stage)
    assert done.returncode == 0, done.stderr
    assert front(repo, name)[field] == "FAILED"


@pytest.mark.parametrize(
    ("stage", "gate", "name", "field"),
    [
        ("ship-to-qa", "staging_status", "15-staging-log.md", "staging_status"),
        ("release", "deploy_status", "14-deploy-log.md", "deploy_status"),
        ("deploy", "staging_status", "15-staging-log.md", "staging_status"),
    ],
)
def test_deployer_picks_its_verdict_file_by_the_gate_whatever_the_stage_is_called(
    repo: Path, stage: str, gate: str, name: str, field: str
) -> None:
    # Given a deploy stage renamed in config, its gate passed in CONVEYOR_GATE
    done = run_agent(repo, "deployer", CONVEYOR_STAGE=stage, CONVEYOR_GATE=gate)
    # Then the deployer writes the verdict that gate reads, and only that one
    assert done.returncode == 0, done.stderr
    assert front(repo, name)[field] == "SUCCESS"
    other = "14-deploy-log.md" if name == "15-staging-log.md" else "15-staging-log.md"
    assert not (repo / ITEM_DIR / other).exists()


@pytest.mark.parametrize(
    ("stage", "gate"), [("deploy-staging", "staging_status"), ("deploy", "deploy_status")]
)
def test_without_conveyor_gate_the_deployer_falls_back_to_the_stage_name(
    tmp_path: Path, stage: str, gate: str
) -> None:
    job = load_job(agent_env("deployer", CONVEYOR_STAGE=stage), "", tmp_path)
    assert job.gate == gate


def test_deployer_refuses_a_stage_it_has_no_log_for(repo: Path) -> None:
    done = run_agent(repo, "deployer", CONVEYOR_STAGE="testing")
    assert done.returncode == 2
    assert "CONVEYOR_STAGE" in done.stderr


# --------------------------------------------------------------------------- behaviours


@pytest.mark.parametrize("role", sorted(ROLES))
def test_crash_prints_a_line_writes_nothing_and_exits_3(repo: Path, role: str) -> None:
    done = run_agent(repo, role, f"demo: {role}=crash", CONVEYOR_STAGE="deploy")
    assert done.returncode == 3
    assert "crash" in done.stdout
    assert '"type": "result"' not in done.stdout
    assert not (repo / "docs").exists()
    assert not (repo / "features").exists()


@pytest.mark.parametrize(
    ("role", "partial"),
    [
        ("analyst", ITEM_DIR / "01-brd.md"),
        ("developer", Path("features", "demo_1.py")),
        ("reviewer", ITEM_DIR / "12-review.md"),
        ("tester", ITEM_DIR / "13-test-report.md"),
        ("deployer", ITEM_DIR / "14-deploy-log.md"),
    ],
)
def test_die_leaves_a_partial_artifact_and_is_killed(repo: Path, role: str, partial: Path) -> None:
    done = run_agent(repo, role, f"demo: {role}=die", CONVEYOR_STAGE="deploy")
    assert done.returncode == -9
    text = (repo / partial).read_text()
    assert "\n---\n" not in text[4:]
    assert '"type": "result"' not in done.stdout


def test_die_on_architect_leaves_an_unclosed_adr(repo: Path) -> None:
    assert run_agent(repo, "architect", "demo: architect=die").returncode == -9
    (adr,) = (repo / ITEM_DIR / "06-adr").iterdir()
    with pytest.raises(AssertionError):
        split_front_matter(adr.read_text())


def test_hang_blocks_until_killed(repo: Path) -> None:
    with (
        prompt_file(repo, "demo: developer=hang*always").open("rb") as stdin,
        subprocess.Popen(
            AGENT,
            cwd=repo,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=agent_env("developer", CONVEYOR_VISIT="7"),
        ) as proc,
    ):
        try:
            assert proc.stdout is not None
            assert "behaviour=hang" in proc.stdout.readline()
            assert proc.poll() is None
        finally:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == -9
    assert not (repo / "features").exists()


def test_slow_waits_then_behaves_normally(repo: Path) -> None:
    done = run_agent(repo, "reviewer", "demo: reviewer=slow:0.2")
    assert done.returncode == 0, done.stderr
    assert "slowly" in done.stdout
    assert front(repo, "12-review.md")["verdict"] == "APPROVED"


def test_bad_directives_are_warned_about_and_ignored(repo: Path) -> None:
    prompt = "demo: reviewer=explode janitor=fail reviewer=fail*zz\ndemo: \x00\x01 ===***"
    done = run_agent(repo, "reviewer", prompt)
    assert done.returncode == 0, done.stderr
    assert "unknown behaviour" in done.stderr
    assert "unknown role" in done.stderr
    assert front(repo, "12-review.md")["verdict"] == "APPROVED"


def test_a_directive_for_another_role_does_not_apply(repo: Path) -> None:
    done = run_agent(repo, "reviewer", "demo: developer=crash tester=hang")
    assert done.returncode == 0, done.stderr
    assert front(repo, "12-review.md")["verdict"] == "APPROVED"


# --------------------------------------------------------------------------- safety


def test_invalid_work_item_id_exits_2_and_writes_nothing(repo: Path) -> None:
    done = run_agent(repo, "analyst", CONVEYOR_WORK_ITEM="../../escape")
    assert done.returncode == 2
    assert "CONVEYOR_WORK_ITEM" in done.stderr
    assert not (repo / "docs").exists()
    assert not (repo.parent / "escape").exists()


def test_agent_refuses_to_write_through_a_symlinked_docs_dir(repo: Path) -> None:
    outside = repo.parent / "outside"
    outside.mkdir()
    (repo / "docs").symlink_to(outside, target_is_directory=True)
    done = run_agent(repo, "analyst")
    assert done.returncode == 2
    assert "symlink" in done.stderr
    assert list(outside.iterdir()) == []


def test_invalid_check_command_exits_2(repo: Path) -> None:
    done = run_agent(repo, "tester", CONVEYOR_CHECK_COMMAND="pytest -q")
    assert done.returncode == 2
    assert "CONVEYOR_CHECK_COMMAND" in done.stderr


def test_demo_repository_passes_its_own_check_command(repo: Path) -> None:
    assert set(create_demo_files()) == {
        "README.md",
        "calc/__init__.py",
        "tests/__init__.py",
        "tests/test_calc.py",
        ".gitignore",
    }
    checked = check(repo)
    assert checked.returncode == 0, checked.stderr
    assert "Ran 2 tests" in checked.stderr
