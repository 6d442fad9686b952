"""Anthropic Messages (`POST /v1/messages`), streamed as SSE, as Claude Code speaks it."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.models.script import Fault, Script

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def tool_results(body: dict[str, Any]) -> int:
    count = 0
    for message in body.get("messages", []):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            count += sum(1 for b in content if b.get("type") == "tool_result")
    return count


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def reply(script: Script, body: dict[str, Any]) -> list[bytes]:
    """The SSE events of one assistant turn: a Write tool call, or the final text."""
    n = tool_results(body)
    write = script.turn(n)
    usage_in = {
        "input_tokens": script.input_tokens,
        "cache_read_input_tokens": script.cached_tokens,
        "cache_creation_input_tokens": 0,
        "output_tokens": 1,
    }
    message = {
        "id": f"msg_fake_{n}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "fake"),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_in,
    }
    events = [_sse("message_start", {"type": "message_start", "message": message})]
    block: dict[str, Any]
    if write is None:
        block = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": script.final_text}
        stop = "end_turn"
    else:
        block = {"type": "tool_use", "id": f"toolu_fake_{n}", "name": "Write", "input": {}}
        tool_input = {"file_path": script.absolute(write), "content": write.content}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(tool_input)}
        stop = "tool_use"
    events += [
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": script.output_tokens},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def reply_json(script: Script, body: dict[str, Any]) -> dict[str, Any]:
    """The same turn as one non-streaming message (Claude's fallback after a stall)."""
    write = script.turn(tool_results(body))
    if write is None:
        content: list[dict[str, Any]] = [{"type": "text", "text": script.final_text}]
    else:
        tool_input = {"file_path": script.absolute(write), "content": write.content}
        content = [{"type": "tool_use", "id": "toolu_fake", "name": "Write", "input": tool_input}]
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "fake"),
        "content": content,
        "stop_reason": "end_turn" if write is None else "tool_use",
        "usage": {"input_tokens": script.input_tokens, "output_tokens": script.output_tokens},
    }


def error(fault: Fault) -> dict[str, Any]:
    kind = ERROR_TYPES.get(fault.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": fault.message}}
