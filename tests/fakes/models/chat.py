"""OpenAI Chat Completions (`POST /v1/chat/completions`): OpenCode's tool calls, Aider's text."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.models.script import Fault, Script


def tool_results(body: dict[str, Any]) -> int:
    return sum(1 for m in body.get("messages", []) if m.get("role") == "tool")


def _answer(script: Script, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The text and tool calls of the reply to `body`."""
    if not body.get("tools"):
        # Tool-less requests are OpenCode's title generation, or Aider's whole turn.
        return (script.whole_text() if script.whole_format else "Fake title"), []
    n = tool_results(body)
    write = script.turn(n)
    if write is None:
        return script.final_text, []
    arguments = json.dumps({"filePath": script.absolute(write), "content": write.content})
    call = {
        "index": 0,
        "id": f"call_{n}",
        "type": "function",
        "function": {"name": "write", "arguments": arguments},
    }
    return "", [call]


def _usage(script: Script) -> dict[str, Any]:
    prompt = script.input_tokens + script.cached_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": script.output_tokens,
        "total_tokens": prompt + script.output_tokens,
        "prompt_tokens_details": {"cached_tokens": script.cached_tokens},
    }


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish: str | None) -> bytes:
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(data)}\n\n".encode()


def reply(script: Script, body: dict[str, Any]) -> list[bytes]:
    text, calls = _answer(script, body)
    events = [_chunk(body, {"role": "assistant", "content": ""}, None)]
    if text:
        events.append(_chunk(body, {"content": text}, None))
    if calls:
        events.append(_chunk(body, {"tool_calls": calls}, None))
    events.append(_chunk(body, {}, "tool_calls" if calls else "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0}
        usage.update(model=body.get("model", "fake"), choices=[], usage=_usage(script))
        events.append(f"data: {json.dumps(usage)}\n\n".encode())
    events.append(b"data: [DONE]\n\n")
    return events


def reply_json(script: Script, body: dict[str, Any]) -> dict[str, Any]:
    text, calls = _answer(script, body)
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "fake"),
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
        ],
        "usage": _usage(script),
    }


def error(fault: Fault) -> dict[str, Any]:
    code = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(fault.status, "error")
    return {"error": {"message": fault.message, "type": code, "code": code, "param": None}}
