# Recorded CLI output lines stay whole, so they can be compared with a real run.
# ruff: noqa: E501
"""Agent adapters: launch plans and output parsing against lines the real CLIs printed.

The recorded lines come from runs of the pinned binaries against the fake model API
(tests/agent_clis) and from shared/reference/agents.md; long lines keep only the fields read.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from conveyor.errors import InvalidField
from gateways.agents.aider import AiderAdapter
from gateways.agents.base import (
    AgentRequest,
    AgentResult,
    LineBuffer,
    ModelPrice,
    OutputParser,
    Usage,
    classify_error,
    price_usd,
    retry_after_s,
    with_price,
)
from gateways.agents.claude import ClaudeAdapter
from gateways.agents.codex import API_KEY_ENV, CodexAdapter
from gateways.agents.command import CommandAdapter
from gateways.agents.gemini import GeminiAdapter
from gateways.agents.opencode import OpenCodeAdapter
from gateways.agents.registry import CLIS, adapter_for


def replay(
    parser: OutputParser, stdout: str, exit_code: int | None, stderr: str = ""
) -> AgentResult:
    for line in stdout.strip("\n").splitlines():
        parser.feed(line, "stdout")
    for line in stderr.strip("\n").splitlines():
        parser.feed(line, "stderr")
    return parser.finish(exit_code)


def req(tmp: Path = Path("/runs/r1"), **kw: object) -> AgentRequest:
    fields: dict[str, object] = {
        "binary": "/opt/bin/cli",
        "prompt": "Write hello.txt",
        "workdir": Path("/repo"),
        "run_dir": tmp,
        "env": {"PATH": "/usr/bin", "CLAUDECODE": "1"},
        "base_url": "http://127.0.0.1:9999",
        "api_key": "dummy",
    }
    fields.update(kw)
    return AgentRequest(**fields)  # type: ignore[arg-type]


# --- Claude Code ------------------------------------------------------------------------

CLAUDE_OK = """
{"type":"system","subtype":"init","model":"claude-sonnet-4-5","permissionMode":"bypassPermissions"}
{"type":"assistant","message":{"id":"msg_fake_0","content":[{"type":"tool_use","name":"Write"}],"usage":{"input_tokens":123,"output_tokens":1}}}
{"type":"user","tool_use_result":{"type":"create","filePath":"/w/hello.txt","content":"hi\\n"}}
{"type":"assistant","message":{"id":"msg_fake_1","content":[{"type":"text","text":"Done: wrote the file."}],"usage":{"input_tokens":123,"output_tokens":1}}}
{"type":"result","subtype":"success","is_error":false,"num_turns":2,"result":"Done: wrote the file.","stop_reason":"end_turn","terminal_reason":"completed","total_cost_usd":0.002088,"usage":{"input_tokens":246,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":90},"permission_denials":[],"api_error_status":null}
"""

CLAUDE_429 = """
{"type":"system","subtype":"init","model":"claude-sonnet-4-5"}
{"type":"system","subtype":"api_retry","attempt":1,"max_retries":1,"retry_delay_ms":1047,"error_status":429,"error":"rate_limit"}
{"type":"assistant","message":{"id":"a4c9","content":[{"type":"text","text":"API Error: Request rejected (429) · fake rate limit"}],"usage":{"input_tokens":0,"output_tokens":0}}}
{"type":"result","subtype":"success","is_error":true,"num_turns":1,"result":"API Error: Request rejected (429) · fake rate limit","terminal_reason":"api_error","total_cost_usd":0,"usage":{"input_tokens":0,"output_tokens":0},"permission_denials":[],"api_error_status":429}
"""

CLAUDE_401 = """
{"type":"system","subtype":"api_retry","attempt":1,"max_retries":1,"retry_delay_ms":600,"error_status":401,"error":"authentication_failed"}
{"type":"result","subtype":"success","is_error":true,"num_turns":1,"result":"Invalid API key · Fix external API key","terminal_reason":"api_error","total_cost_usd":0,"usage":{"input_tokens":0,"output_tokens":0},"permission_denials":[],"api_error_status":401}
"""

CLAUDE_DENIED = """
{"type":"assistant","message":{"id":"msg_fake_0","content":[{"type":"tool_use","name":"Write"}],"usage":{"input_tokens":123,"output_tokens":1}}}
{"type":"system","subtype":"permission_denied"}
{"type":"user","tool_use_result":"Error: Claude requested permissions to write to /w/hello.txt, but you haven't granted it yet."}
{"type":"result","subtype":"success","is_error":false,"num_turns":2,"result":"Done: wrote the file.","total_cost_usd":0.002088,"usage":{"input_tokens":246,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":90},"permission_denials":[{"tool_name":"Write","tool_use_id":"toolu_fake_0","tool_input":{"file_path":"/w/hello.txt","content":"hi\\n"}}],"api_error_status":null}
"""


def test_claude_success_reports_the_result_lines_usage_and_the_clis_own_cost() -> None:
    result = replay(ClaudeAdapter().parser(), CLAUDE_OK, 0)
    assert result.outcome == "success"
    assert result.usage == Usage(input_tokens=246, output_tokens=90)
    assert result.cost_usd == pytest.approx(0.002088)


def test_claude_activity_names_tools_and_keeps_a_running_usage_total() -> None:
    parser = ClaudeAdapter().parser()
    kinds = [a.kind for line in CLAUDE_OK.strip().splitlines() for a in parser.feed(line)]
    assert kinds[0] == "started"
    assert "tool" in kinds
    assert parser.usage == Usage(input_tokens=246, output_tokens=90)


def test_claude_api_error_with_subtype_success_is_rate_limited_on_429() -> None:
    result = replay(ClaudeAdapter().parser(), CLAUDE_429, 1)
    assert result.outcome == "rate_limited"
    assert "429" in result.detail


def test_claude_refused_key_is_auth_refused() -> None:
    assert replay(ClaudeAdapter().parser(), CLAUDE_401, 1).outcome == "auth_refused"


@pytest.mark.parametrize(
    ("text", "status", "outcome"),
    [
        ("API Error: 529 fake overloaded. This is a server-side issue", 529, "overloaded"),
        ("API Error: 500 fake internal error. This is a server-side issue", 500, "error"),
        ("API Error: 400 fake bad request", 400, "error"),
        ("Prompt is too long", 400, "context_exceeded"),
    ],
)
def test_claude_api_errors_map_to_outcomes(text: str, status: int, outcome: str) -> None:
    line = {"type": "result", "subtype": "success", "is_error": True, "result": text}
    line["api_error_status"] = status
    assert replay(ClaudeAdapter().parser(), json.dumps(line), 1).outcome == outcome


def test_claude_run_whose_writes_were_all_denied_is_permission_denied_despite_exit_zero() -> None:
    result = replay(ClaudeAdapter().parser(), CLAUDE_DENIED, 0)
    assert result.outcome == "permission_denied"
    assert result.exit_code == 0


def test_claude_without_a_result_line_falls_back_to_the_last_retry_status() -> None:
    lines = '{"type":"system","subtype":"api_retry","attempt":1,"error_status":429}'
    assert replay(ClaudeAdapter().parser(), lines, None).outcome == "rate_limited"
    root_refusal = "--dangerously-skip-permissions cannot be used with root/sudo privileges"
    result = replay(ClaudeAdapter().parser(), "", 1, stderr=root_refusal)
    assert (result.outcome, result.detail) == ("error", root_refusal)


def test_claude_plan_isolates_home_and_keeps_failing_runs_short() -> None:
    plan = ClaudeAdapter().plan(req(model="claude-sonnet-4-5", as_root=True, max_retries=1))
    assert plan.argv[:3] == ("/opt/bin/cli", "-p", "Write hello.txt")
    assert "--verbose" in plan.argv
    assert "--dangerously-skip-permissions" in plan.argv
    assert plan.argv[-2:] == ("--model", "claude-sonnet-4-5")
    assert plan.stdin is None
    assert plan.env["HOME"] == "/runs/r1/home"
    assert plan.env["IS_SANDBOX"] == "1"
    assert plan.env["CLAUDE_CODE_MAX_RETRIES"] == "1"
    assert plan.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert plan.env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9999"
    assert "CLAUDECODE" not in plan.env
    assert "IS_SANDBOX" not in ClaudeAdapter().plan(req()).env
    assert (
        "--dangerously-skip-permissions"
        not in ClaudeAdapter(skip_permissions=False).plan(req()).argv
    )


# --- Codex ------------------------------------------------------------------------------

CODEX_OK = """
{"type":"thread.started","thread_id":"01a248c3"}
{"type":"turn.started"}
{"type":"item.started","item":{"id":"item_0","type":"file_change","changes":[{"path":"/w/hello.txt","kind":"add"}],"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_0","type":"file_change","changes":[{"path":"/w/hello.txt","kind":"add"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Done: wrote the file."}}
{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"cache_write_input_tokens":0,"output_tokens":122,"reasoning_output_tokens":0}}
"""

CODEX_429 = """
{"type":"thread.started","thread_id":"01a248c3"}
{"type":"turn.started"}
{"type":"error","message":"Reconnecting... 1/1 (exceeded retry limit, last status: 429 Too Many Requests)"}
{"type":"error","message":"exceeded retry limit, last status: 429 Too Many Requests"}
{"type":"turn.failed","error":{"message":"exceeded retry limit, last status: 429 Too Many Requests"}}
"""

CODEX_401 = """
{"type":"error","message":"unexpected status 401 Unauthorized: invalid x-api-key, url: http://127.0.0.1:43981/v1/responses"}
{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized: invalid x-api-key, url: http://127.0.0.1:43981/v1/responses"}}
"""


def test_codex_success_splits_cached_from_fresh_input_and_reports_no_cost() -> None:
    result = replay(CodexAdapter().parser(), CODEX_OK, 0)
    assert result.outcome == "success"
    assert result.usage == Usage(input_tokens=315, output_tokens=122, cached_tokens=24448)
    assert result.cost_usd is None


@pytest.mark.parametrize(
    ("stdout", "outcome"),
    [
        (CODEX_429, "rate_limited"),
        (CODEX_401, "auth_refused"),
        (
            '{"type":"turn.failed","error":{"message":"unexpected status 529 <unknown status '
            'code>: fake overloaded"}}',
            "overloaded",
        ),
        (
            '{"type":"turn.failed","error":{"message":"We\\u2019re currently experiencing high '
            'demand, which may cause temporary errors."}}',
            "error",
        ),
        (
            '{"type":"turn.failed","error":{"message":"context_length_exceeded"}}',
            "context_exceeded",
        ),
        ('{"type":"thread.started","thread_id":"t"}\n{"type":"turn.started"}', "error"),
    ],
)
def test_codex_failures_map_to_outcomes(stdout: str, outcome: str) -> None:
    result = replay(CodexAdapter().parser(), stdout, 1)
    assert result.outcome == outcome


def test_codex_plan_writes_a_provider_config_in_its_own_codex_home() -> None:
    plan = CodexAdapter().plan(req(model="gpt-5.5", max_retries=1, stall_s=20))
    codex_home = Path("/runs/r1/home/.codex")
    assert plan.env["CODEX_HOME"] == str(codex_home)
    assert plan.env[API_KEY_ENV] == "dummy"
    assert plan.stdin is None
    assert plan.argv[-1] == "Write hello.txt"
    config = tomllib.loads(plan.files[codex_home / "config.toml"])
    assert config["model"] == "gpt-5.5"
    assert config["approval_policy"] == "never"
    provider = config["model_providers"][config["model_provider"]]
    assert provider["base_url"] == "http://127.0.0.1:9999/v1"
    assert provider["wire_api"] == "responses"
    assert provider["env_key"] == API_KEY_ENV
    assert (provider["request_max_retries"], provider["stream_idle_timeout_ms"]) == (1, 20000)


# --- Gemini CLI -------------------------------------------------------------------------

GEMINI_OK = """
{"type":"init","timestamp":"2026-12-06T00:32:26.536Z","session_id":"d452","model":"auto"}
{"type":"message","role":"user","content":"Create hello.txt"}
{"type":"tool_use","tool_name":"write_file","tool_id":"write_file_1","parameters":{"file_path":"/w/hello.txt","content":"hi\\n"}}
{"type":"tool_result","tool_id":"write_file_1","status":"success"}
{"type":"message","role":"assistant","content":"Done: wrote the file.","delta":true}
{"type":"result","status":"success","stats":{"total_tokens":504,"input_tokens":369,"output_tokens":135,"cached":0,"input":369,"duration_ms":511,"tool_calls":1,"models":{"gemini-3.5-flash-lite":{"total_tokens":168,"input_tokens":123,"output_tokens":45,"cached":0,"input":123},"gemini-3.8-flash":{"total_tokens":336,"input_tokens":246,"output_tokens":90,"cached":0,"input":246}}}}
"""

GEMINI_JSON_DOCUMENT = """
{
  "session_id": "s1",
  "response": "Done: wrote the file.",
  "stats": {
    "models": {
      "gemini-3.8-flash": {
        "api": {"totalRequests": 2},
        "tokens": {"input": 200, "prompt": 246, "candidates": 90, "total": 336, "cached": 46}
      }
    }
  }
}
"""

GEMINI_401 = """
{"type":"init","session_id":"b21e","model":"auto"}
{"type":"result","status":"error","error":{"type":"unknown","message":"[API Error: {\\"error\\":{\\"code\\":401,\\"message\\":\\"invalid x-api-key\\",\\"status\\":\\"UNAUTHENTICATED\\"}}]"},"stats":{"total_tokens":0,"input_tokens":0,"output_tokens":0,"cached":0}}
"""


def test_gemini_stream_json_success_counts_every_models_tokens() -> None:
    parser = GeminiAdapter().parser()
    kinds = {a.kind for line in GEMINI_OK.strip().splitlines() for a in parser.feed(line)}
    result = parser.finish(0)
    assert {"started", "tool", "usage"} <= kinds
    assert result.outcome == "success"
    assert result.usage == Usage(input_tokens=369, output_tokens=135)


def test_gemini_json_document_over_many_lines_is_read_at_the_end() -> None:
    result = replay(GeminiAdapter(output_format="json").parser(), GEMINI_JSON_DOCUMENT, 0)
    assert result.outcome == "success"
    assert result.usage == Usage(input_tokens=200, output_tokens=90, cached_tokens=46)


def test_gemini_refused_key_is_auth_refused() -> None:
    assert replay(GeminiAdapter().parser(), GEMINI_401, 145).outcome == "auth_refused"


def test_gemini_exit_code_is_the_http_status_when_stdout_is_empty() -> None:
    stderr = '{"error": {"type": "Error", "message": "fake rate limit", "code": 429}}'
    assert replay(GeminiAdapter().parser(), "", 173, stderr=stderr).outcome == "rate_limited"
    assert replay(GeminiAdapter().parser(), "", 173).outcome == "rate_limited"
    assert replay(GeminiAdapter().parser(), "", 244).outcome == "error"
    assert replay(GeminiAdapter().parser(), "", 41).outcome == "auth_refused"


def test_gemini_plan_writes_settings_that_keep_yolo_headless() -> None:
    plan = GeminiAdapter().plan(req(model="gemini-3.8-flash"))
    settings = json.loads(plan.files[Path("/runs/r1/home/.gemini/settings.json")])
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert settings["security"]["folderTrust"]["enabled"] is False
    assert plan.env["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:9999"
    assert plan.env["GEMINI_API_KEY"] == "dummy"
    assert "--yolo" in plan.argv
    assert plan.argv[-2:] == ("-m", "gemini-3.8-flash")


# --- OpenCode ---------------------------------------------------------------------------

OPENCODE_OK = """
{"type":"step_start","sessionID":"ses_1","part":{"type":"step-start"}}
{"type":"tool_use","sessionID":"ses_1","part":{"type":"tool","tool":"write","callID":"call_0","state":{"status":"completed","output":"Wrote file successfully."}}}
{"type":"step_finish","sessionID":"ses_1","part":{"reason":"tool-calls","type":"step-finish","tokens":{"total":168,"input":123,"output":45,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0}}
{"type":"step_start","sessionID":"ses_1","part":{"type":"step-start"}}
{"type":"text","sessionID":"ses_1","part":{"type":"text","text":"Done: wrote the file."}}
{"type":"step_finish","sessionID":"ses_1","part":{"reason":"stop","type":"step-finish","tokens":{"total":168,"input":123,"output":45,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0}}
"""

OPENCODE_429 = """
{"type":"error","sessionID":"ses_2","error":{"name":"APIError","data":{"message":"fake rate limit","statusCode":429,"isRetryable":true,"responseHeaders":{"retry-after":"1"}}}}
"""

OPENCODE_401 = """
{"type":"error","sessionID":"ses_3","error":{"name":"APIError","data":{"message":"invalid x-api-key","statusCode":401,"isRetryable":false}}}
"""


def test_opencode_sums_step_usage_and_treats_a_zero_cost_as_unreported() -> None:
    result = replay(OpenCodeAdapter().parser(), OPENCODE_OK, 0)
    assert result.outcome == "success"
    assert result.usage == Usage(input_tokens=246, output_tokens=90)
    assert result.cost_usd is None


def test_opencode_sums_the_cost_it_reports() -> None:
    step = (
        '{"type":"step_finish","part":{"tokens":{"input":11087,"output":145,"reasoning":0,'
        '"cache":{"write":0,"read":8000}},"cost":0.0070147}}'
    )
    result = replay(OpenCodeAdapter().parser(), f"{step}\n{step}", 0)
    assert result.cost_usd == pytest.approx(0.0140294)
    assert result.usage == Usage(input_tokens=22174, output_tokens=290, cached_tokens=16000)


def test_opencode_rate_limit_carries_the_apis_retry_after() -> None:
    result = replay(OpenCodeAdapter().parser(), OPENCODE_429, 1)
    assert (result.outcome, result.retry_after_s) == ("rate_limited", 1.0)
    assert replay(OpenCodeAdapter().parser(), OPENCODE_401, 1).outcome == "auth_refused"


def test_opencode_plan_defines_a_provider_reading_the_key_from_the_environment() -> None:
    plan = OpenCodeAdapter().plan(req(model="fake-model"))
    config = json.loads(plan.files[Path("/runs/r1/home/.config/opencode/opencode.json")])
    provider = config["provider"]["conveyor"]
    assert config["model"] == "conveyor/fake-model"
    assert provider["options"]["baseURL"] == "http://127.0.0.1:9999/v1"
    assert provider["options"]["apiKey"] == "{env:CONVEYOR_MODEL_API_KEY}"
    assert provider["models"]["fake-model"]["tool_call"] is True
    assert plan.env["XDG_CONFIG_HOME"] == "/runs/r1/home/.config"
    assert plan.argv[1:5] == ("run", "--format", "json", "--auto")


# --- Aider ------------------------------------------------------------------------------

AIDER_OK = """
Aider v0.86.2
Model: openai/fake with whole edit format
Git repo: .git with 0 files
I'll create the file.

hello.txt
```
hello from fake model
```

Tokens: 594 sent, 18 received. Cost: $0.0021 message, $0.0021 session.
Applied edit to hello.txt
"""

AIDER_429 = """
Aider v0.86.2
litellm.RateLimitError: RateLimitError: OpenAIException - fake rate limit
The API provider has rate limited you. Try again later or check your quotas.
Retrying in 0.2 seconds...
litellm.RateLimitError: RateLimitError: OpenAIException - fake rate limit
The API provider has rate limited you. Try again later or check your quotas.
"""


def test_aider_success_reads_the_tokens_line_and_the_session_cost() -> None:
    result = replay(AiderAdapter().parser(), AIDER_OK, 0)
    assert result.outcome == "success"
    assert result.usage == Usage(input_tokens=594, output_tokens=18)
    assert result.cost_usd == pytest.approx(0.0021)


def test_aider_reads_rounded_counts_and_cache_hits() -> None:
    line = "Tokens: 7.7k sent, 1.2k cache write, 3.1k cache hit, 8 received."
    result = replay(AiderAdapter().parser(), line, 0)
    assert result.usage == Usage(input_tokens=8900, output_tokens=8, cached_tokens=3100)
    assert result.cost_usd is None


@pytest.mark.parametrize(
    ("stdout", "outcome"),
    [
        (AIDER_429, "rate_limited"),
        ("litellm.BadRequestError: OpenAIException - fake bad request", "error"),
        (
            "litellm.AuthenticationError: AuthenticationError: OpenAIException - bad key",
            "auth_refused",
        ),
        ("litellm.ContextWindowExceededError: prompt too long", "context_exceeded"),
        ("litellm.InternalServerError: OpenAIException - Connection error.", "error"),
        ("Aider v0.86.2\n", "error"),
    ],
)
def test_aider_exits_zero_on_failure_so_its_output_decides(stdout: str, outcome: str) -> None:
    assert replay(AiderAdapter().parser(), stdout, 0).outcome == outcome


def test_aider_reply_after_a_retried_error_is_success() -> None:
    stdout = AIDER_429 + "Tokens: 594 sent, 18 received.\nApplied edit to hello.txt\n"
    assert replay(AiderAdapter().parser(), stdout, 0).outcome == "success"


def test_aider_plan_sends_the_prompt_as_a_message_and_keeps_history_in_the_run() -> None:
    plan = AiderAdapter().plan(req(model="fake", extra_args=("--edit-format", "whole")))
    argv = plan.argv
    assert argv[argv.index("--model") + 1] == "openai/fake"
    assert argv[argv.index("--openai-api-base") + 1] == "http://127.0.0.1:9999/v1"
    assert argv[-2:] == ("--message", "Write hello.txt")
    assert argv[argv.index("--chat-history-file") + 1] == "/runs/r1/aider.chat.history.md"
    assert "--no-auto-commits" in argv
    assert plan.env["OPENAI_API_KEY"] == "dummy"


# --- Generic command --------------------------------------------------------------------


def test_command_fills_the_prompt_placeholder_or_sends_the_prompt_on_stdin() -> None:
    by_arg = CommandAdapter(("agent", "--prompt", "{prompt}", "--in", "{workdir}")).plan(req())
    assert by_arg.argv == ("agent", "--prompt", "Write hello.txt", "--in", "/repo")
    assert by_arg.stdin is None
    by_stdin = CommandAdapter(("agent",)).plan(req())
    assert (by_stdin.argv, by_stdin.stdin) == (("agent",), "Write hello.txt")
    assert by_stdin.env == {"PATH": "/usr/bin", "CLAUDECODE": "1"}


def test_command_is_judged_by_its_exit_code_unless_it_prints_a_result_line() -> None:
    assert replay(CommandAdapter(("a",)).parser(), "working\n", 0).outcome == "success"
    failed = replay(CommandAdapter(("a",)).parser(), "", 2, stderr="boom")
    assert (failed.outcome, failed.detail) == ("error", "boom")
    claude_like = replay(CommandAdapter(("a",)).parser(), CLAUDE_OK, 0)
    assert claude_like.usage == Usage(input_tokens=246, output_tokens=90)
    assert claude_like.cost_usd == pytest.approx(0.002088)


# --- Shared helpers ---------------------------------------------------------------------

PRICES = {
    "claude-sonnet-4-5": ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0, cached_per_mtok=0.3),
    "*": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
}


def test_price_usd_uses_the_models_entry_then_the_default() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000, cached_tokens=2_000_000)
    assert price_usd("claude-sonnet-4-5", usage, PRICES) == pytest.approx(3.0 + 1.5 + 0.6)
    assert price_usd("other", usage, PRICES) == pytest.approx(1.0 + 0.2 + 2.0)
    assert price_usd("other", usage, {}) is None


def test_with_price_keeps_a_cost_the_cli_reported() -> None:
    reported = AgentResult(outcome="success", usage=Usage(input_tokens=10), cost_usd=0.5)
    assert with_price(reported, "x", PRICES).cost_usd == 0.5
    unreported = AgentResult(outcome="success", usage=Usage(input_tokens=1_000_000))
    assert with_price(unreported, "x", PRICES).cost_usd == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Please retry after 30 seconds", 30.0),
        ("retry-after: 2", 2.0),
        ('"retryDelay": "17s"', 17.0),
        ("retry in 1500ms", 1.5),
        ("no hint here", None),
    ],
)
def test_retry_after_is_read_from_the_message(text: str, seconds: float | None) -> None:
    assert retry_after_s(text) == seconds


def test_classify_error_prefers_the_http_status_over_words() -> None:
    assert classify_error("anything", 429) == "rate_limited"
    assert classify_error("Overloaded", None) == "overloaded"
    assert classify_error("Forbidden", None) == "auth_refused"
    assert classify_error("something broke", 500) == "error"


def test_line_buffer_holds_a_partial_line_until_its_end() -> None:
    buffer = LineBuffer()
    assert list(buffer.push('{"type":')) == []
    assert list(buffer.push('"x"}\r\nnext')) == ['{"type":"x"}']
    assert list(buffer.flush()) == ["next"]


def test_every_configurable_cli_name_has_an_adapter_of_that_name() -> None:
    for cli in CLIS:
        assert adapter_for(cli, command=("agent",)).name == cli


def test_an_unknown_cli_or_an_empty_command_is_refused_naming_the_config_key() -> None:
    with pytest.raises(InvalidField, match=r"agents\.developer\.cli: unknown agent CLI 'cursor'"):
        adapter_for("cursor", field="agents.developer.cli")
    with pytest.raises(InvalidField, match="needs a command"):
        adapter_for("command")
    with pytest.raises(InvalidField, match="command: must not be empty"):
        CommandAdapter(())
