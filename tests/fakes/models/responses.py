"""OpenAI Responses (`POST /v1/responses`), streamed as SSE, as Codex speaks it."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.models.script import Fault, Script

_OUTPUTS = ("function_call_output", "custom_tool_call_output")


def tool_results(body: dict[str, Any]) -> int:
    items = body.get("input", [])
    return sum(1 for i in items if isinstance(i, dict) and i.get("type") in _OUTPUTS)


def _offers_apply_patch(body: dict[str, Any]) -> bool:
    return any(t.get("name") == "apply_patch" for t in body.get("tools", []))


def _sse(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def _item(script: Script, body: dict[str, Any], n: int) -> dict[str, Any]:
    write = script.turn(n)
    if write is None:
        return {
            "type": "message",
            "id": f"msg_{n}",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": script.final_text, "annotations": []}],
        }
    if _offers_apply_patch(body):
        return {
            "type": "custom_tool_call",
            "id": f"ctc_{n}",
            "call_id": f"call_{n}",
            "name": "apply_patch",
            "input": script.apply_patch(write),
            "status": "completed",
        }
    return {
        "type": "function_call",
        "id": f"fc_{n}",
        "call_id": f"call_{n}",
        "name": "exec_command",
        "arguments": json.dumps({"cmd": script.shell_command(write)}),
        "status": "completed",
    }


def reply(script: Script, body: dict[str, Any]) -> list[bytes]:
    n = tool_results(body)
    item = _item(script, body, n)
    response = {"id": f"resp_{n}", "object": "response", "status": "in_progress", "output": []}
    events = [
        _sse({"type": "response.created", "response": response}),
        _sse({"type": "response.output_item.added", "output_index": 0, "item": item}),
    ]
    if item["type"] == "message":
        text = item["content"][0]["text"]
        delta = {"item_id": item["id"], "output_index": 0, "content_index": 0, "delta": text}
        events.append(_sse({"type": "response.output_text.delta", **delta}))
    usage = {
        "input_tokens": script.input_tokens + script.cached_tokens,
        "input_tokens_details": {"cached_tokens": script.cached_tokens},
        "output_tokens": script.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": script.input_tokens + script.cached_tokens + script.output_tokens,
    }
    done = {**response, "status": "completed", "output": [item], "usage": usage}
    events += [
        _sse({"type": "response.output_item.done", "output_index": 0, "item": item}),
        _sse({"type": "response.completed", "response": done}),
    ]
    return events


def error(fault: Fault) -> dict[str, Any]:
    code = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(fault.status, "error")
    return {"error": {"message": fault.message, "type": code, "code": code, "param": None}}
