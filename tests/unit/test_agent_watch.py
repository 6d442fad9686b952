"""The run thread reads an agent's output as it is written and brakes it while it runs."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from actors import launcher_policy as lp
from actors.jobs.agent import judged
from actors.jobs.context import RunDone
from actors.jobs.meter import RunMeter
from actors.jobs.watch import Prices, Watched, newest_mtime, replay, run_watched, stream_of
from conveyor import config as config_mod
from gateways.agents.base import AgentResult, ModelPrice, Usage
from gateways.agents.claude import ClaudeParser
from gateways.agents.command import CommandParser

PRICES = Prices("m", {"m": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)})


def assistant(n: int) -> str:
    message = {"id": f"msg{n}", "content": [], "usage": {"input_tokens": 100, "output_tokens": 10}}
    return json.dumps({"type": "assistant", "message": message})


def agent_plan(tmp_path: Path, body: str, **brakes: object) -> lp.LaunchPlan:
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(body))
    exit_file = str(tmp_path / "run" / "exit_code")
    return lp.LaunchPlan(
        kind="agent",
        gate="",
        command=[],
        argv=lp.wrap([sys.executable, str(script)], exit_file=exit_file, python=sys.executable),
        env={"PATH": "/usr/bin:/bin"},
        cwd=str(tmp_path),
        timeout_s=float(brakes.pop("timeout_s", 30.0)),  # type: ignore[arg-type]
        prompt="",
        exit_file=exit_file,
        log_path=str(tmp_path / "run" / "output.log"),
        verdict_path=None,
        **brakes,  # type: ignore[arg-type]
    )


def watch(tmp_path: Path, plan: lp.LaunchPlan, parser: object, meter: RunMeter | None = None):
    worktree = tmp_path / "wt"
    worktree.mkdir(exist_ok=True)
    started: list[int] = []
    return run_watched(
        plan,
        parser,  # type: ignore[arg-type]
        cwd=worktree,
        log_path=Path(plan.log_path),
        prices=PRICES,
        meter=meter or RunMeter(),
        kill_grace_s=2.0,
        on_started=lambda pid, _: started.append(pid),
    )


def test_a_run_that_ends_by_itself_is_parsed_as_it_wrote_and_priced(tmp_path: Path) -> None:
    body = f"""
        import json
        print({assistant(1)!r}, flush=True)
        print("some log text", flush=True)
        print(json.dumps({{"type": "result", "subtype": "success", "result": "ok",
                           "usage": {{"input_tokens": 200, "output_tokens": 20}}}}))
        raise SystemExit(0)
    """
    meter = RunMeter()
    watched = watch(tmp_path, agent_plan(tmp_path, body, stall_s=5.0), ClaudeParser(), meter)
    assert watched.exit_code == 0
    assert watched.stopped == ""
    assert watched.result.outcome == "success"
    # No cost from the CLI: the price table's, 200 x $1/M + 20 x $2/M
    assert watched.usage == {
        "input_tokens": 200,
        "output_tokens": 20,
        "cached_tokens": 0,
        "cost_usd": pytest.approx(240e-6),
    }
    assert meter.snapshot() == watched.usage


def test_a_silent_run_is_killed_by_the_stall_brake(tmp_path: Path) -> None:
    body = """
        import time
        print("started", flush=True)
        time.sleep(60)
    """
    plan = agent_plan(tmp_path, body, stall_s=0.6)
    watched = watch(tmp_path, plan, CommandParser())
    assert watched.exit_code is None
    assert watched.stopped == "stalled"
    assert watched.reason == "stalled (no output for 0.6s)"


def test_output_and_worktree_changes_keep_a_slow_run_alive(tmp_path: Path) -> None:
    # Output every 0.3 s, then only worktree changes every 0.5 s: never 1.6 s of silence
    body = """
        import time, pathlib
        for _ in range(5):
            print("tick", flush=True)
            time.sleep(0.3)
        for n in range(5):
            pathlib.Path("f.txt").write_text(str(n))
            time.sleep(0.5)
    """
    watched = watch(tmp_path, agent_plan(tmp_path, body, stall_s=1.6), CommandParser())
    assert watched.stopped == ""
    assert watched.exit_code == 0


def test_a_run_crossing_its_token_ceiling_is_killed_at_once(tmp_path: Path) -> None:
    body = f"""
        import time
        print({assistant(1)!r}, flush=True)
        time.sleep(0.5)
        print({assistant(2)!r}, flush=True)
        time.sleep(60)
    """
    meter = RunMeter()
    plan = agent_plan(tmp_path, body, max_run_tokens=200)
    watched = watch(tmp_path, plan, ClaudeParser(), meter)
    assert watched.stopped == "over_budget"
    assert "max_run_tokens 200" in watched.reason
    assert watched.usage["input_tokens"] == 200
    assert meter.snapshot()["output_tokens"] == 20


def test_a_run_crossing_its_usd_ceiling_is_killed(tmp_path: Path) -> None:
    body = f"""
        import time
        print({assistant(1)!r}, flush=True)
        time.sleep(60)
    """
    plan = agent_plan(tmp_path, body, max_run_usd=0.0001)
    watched = watch(tmp_path, plan, ClaudeParser())
    assert watched.stopped == "over_budget"
    assert "max_run_usd" in watched.reason


def test_a_run_past_its_timeout_is_killed_without_an_exit_code(tmp_path: Path) -> None:
    body = """
        import time
        while True:
            print("busy", flush=True)
            time.sleep(0.1)
    """
    watched = watch(tmp_path, agent_plan(tmp_path, body, timeout_s=0.5), CommandParser())
    assert watched.stopped == "timed_out"
    assert watched.exit_code is None


def test_a_partial_line_waits_for_its_end(tmp_path: Path) -> None:
    line = assistant(1)
    body = f"""
        import sys, time
        sys.stdout.write({line[:20]!r}); sys.stdout.flush()
        time.sleep(0.6)
        sys.stdout.write({line[20:] + chr(10)!r}); sys.stdout.flush()
    """
    parser = ClaudeParser()
    watch(tmp_path, agent_plan(tmp_path, body), parser)
    assert parser.usage == Usage(input_tokens=100, output_tokens=10)


def test_json_lines_are_stdout_and_other_text_is_stderr() -> None:
    assert stream_of(' {"type": "x"}') == "stdout"
    assert stream_of("Error: 429 too many requests") == "stderr"


def test_newest_mtime_ignores_git(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "a").write_text("a")
    before = newest_mtime(tmp_path)
    (tmp_path / ".git" / "index").write_text("x")
    assert newest_mtime(tmp_path) == before


def test_the_plan_is_a_struct_the_brakes_default_off() -> None:
    fields = msgspec.structs.fields(lp.LaunchPlan)
    defaults = {f.name: f.default for f in fields if f.name in ("stall_s", "max_run_usd")}
    assert defaults == {"stall_s": 0.0, "max_run_usd": 0.0}


def watched(result: AgentResult, exit_code: int | None = 0) -> Watched:
    return Watched(exit_code, result, "", "", {"input_tokens": 1, "cost_usd": 0.5})


CFG = config_mod.load(env={})


def test_denied_writes_with_exit_0_are_not_a_success() -> None:
    done = RunDone(run_id="r", exit_code=0, head_sha="abc", usage={"usage": {"x": 1}})
    result = AgentResult(outcome="permission_denied", detail="2 tool call(s) denied", exit_code=0)
    judged_done = judged(done, watched(result), cli="claude", attempt=1, cfg=CFG)
    assert judged_done.exit_code == 0
    assert judged_done.error == "permission denied"
    assert judged_done.outcome == "permission_denied"
    assert judged_done.defer_s == 0.0
    # The old usage shape stays, with the tokens and cost added
    assert judged_done.usage == {"usage": {"x": 1}, "input_tokens": 1, "cost_usd": 0.5}


def test_an_aider_error_with_exit_0_fails_with_the_clis_words() -> None:
    done = RunDone(run_id="r", exit_code=0)
    result = AgentResult(outcome="error", detail="litellm.APIError: boom", exit_code=0)
    judged_done = judged(done, watched(result), cli="aider", attempt=1, cfg=CFG)
    assert judged_done.error == "error: litellm.APIError: boom"


def test_a_rate_limited_run_waits_instead_of_failing() -> None:
    done = RunDone(run_id="r", exit_code=1)
    result = AgentResult(outcome="rate_limited", retry_after_s=12.0, exit_code=1)
    judged_done = judged(done, watched(result, 1), cli="claude", attempt=3, cfg=CFG)
    assert judged_done.defer_s == 12.0
    assert judged_done.reason == "rate limited (429)"


def test_a_plain_command_is_judged_by_its_exit_code_as_before() -> None:
    for code, outcome in ((0, "success"), (3, "error")):
        done = RunDone(run_id="r", exit_code=code)
        result = AgentResult(outcome=outcome, detail="exit code 3", exit_code=code)  # type: ignore[arg-type]
        judged_done = judged(done, watched(result, code), cli="command", attempt=1, cfg=CFG)
        assert (judged_done.error, judged_done.outcome, judged_done.reason) == ("", "", "")


def test_an_adopted_runs_log_is_replayed_whole(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text(f"{assistant(1)}\nnot json\n{assistant(2)}")  # no newline at the end
    parser = ClaudeParser()
    replay(log, parser)
    assert parser.usage == Usage(input_tokens=200, output_tokens=20)
    replay(tmp_path / "missing.log", ClaudeParser())  # no log: nothing to read
