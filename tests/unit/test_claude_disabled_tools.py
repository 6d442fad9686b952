# Recorded CLI output lines stay whole, so they can be compared with a real run.
# ruff: noqa: E501
"""Claude Code with its Write tool taken away: the run exits 0 with nothing written.

The lines are from `claude --disallowedTools Write` (the pinned binary) against the fake
model API, keeping only the fields the parser reads. Such a refusal never shows in the
result's `permission_denials`; only the tool result says so.
"""

from __future__ import annotations

from gateways.agents.claude import ClaudeAdapter

DISABLED = """
{"type":"assistant","message":{"id":"msg_fake_0","content":[{"type":"tool_use","id":"toolu_fake_0","name":"Write","input":{"file_path":"/w/x.py","content":"X=1\\n"}}],"usage":{"input_tokens":123,"output_tokens":1}}}
{"type":"user","message":{"role":"user","content":[{"type":"tool_result","content":"<tool_use_error>Error: No such tool available: Write. Write is disabled for this session, in subagents as well as here.</tool_use_error>","is_error":true,"tool_use_id":"toolu_fake_0"}]},"tool_use_result":"Error: No such tool available: Write. Write is disabled for this session, in subagents as well as here."}
{"type":"assistant","message":{"id":"msg_fake_1","content":[{"type":"text","text":"Done: wrote the file."}],"usage":{"input_tokens":123,"output_tokens":1}}}
{"type":"result","subtype":"success","is_error":false,"result":"Done: wrote the file.","total_cost_usd":0.002088,"usage":{"input_tokens":246,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":90},"permission_denials":[]}
"""

READ_FIRST = """
{"type":"assistant","message":{"id":"msg_fake_0","content":[{"type":"tool_use","id":"toolu_fake_0","name":"Write","input":{"file_path":"/w/x.py","content":"X=1\\n"}}],"usage":{"input_tokens":123,"output_tokens":1}}}
{"type":"user","message":{"role":"user","content":[{"type":"tool_result","content":"<tool_use_error>File has not been read yet. Read it first before writing to it.</tool_use_error>","is_error":true,"tool_use_id":"toolu_fake_0"}]}}
{"type":"result","subtype":"success","is_error":false,"result":"Done.","usage":{"input_tokens":246,"output_tokens":90},"permission_denials":[]}
"""


def _finish(stdout: str) -> tuple[str, str]:
    parser = ClaudeAdapter().parser()
    for line in stdout.strip().splitlines():
        parser.feed(line, "stdout")
    result = parser.finish(0)
    return result.outcome, result.detail


def test_a_disabled_write_tool_is_permission_denied_though_the_run_exits_0() -> None:
    outcome, detail = _finish(DISABLED)
    assert outcome == "permission_denied"
    assert detail.startswith("1 tool call(s) denied")


def test_a_write_that_failed_for_another_reason_is_not_a_denial() -> None:
    # The gates judge what was written; only a refused tool is the CLI's own failure.
    assert _finish(READ_FIRST)[0] == "success"


def test_a_write_that_went_through_is_a_success_whatever_else_was_refused() -> None:
    wrote = DISABLED.replace(
        '"tool_use_result":"Error: No such tool available: Write. Write is disabled for this session, in subagents as well as here."',
        '"tool_use_result":{"type":"create","filePath":"/w/y.py"}',
    )
    assert _finish(wrote)[0] == "success"
