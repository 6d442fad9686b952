"""Gemini v1beta `:streamGenerateContent?alt=sse` and `:generateContent` (Gemini CLI)."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.models.script import Fault, Script

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}

ROUTER_ANSWER = json.dumps({"complexity_reasoning": "A single file write.", "complexity_score": 1})


def tool_results(body: dict[str, Any]) -> int:
    count = 0
    for content in body.get("contents", []):
        count += sum(1 for p in content.get("parts", []) if "functionResponse" in p)
    return count


def _usage(script: Script) -> dict[str, Any]:
    prompt = script.input_tokens + script.cached_tokens
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": script.output_tokens,
        "totalTokenCount": prompt + script.output_tokens,
        "cachedContentTokenCount": script.cached_tokens,
    }


def _response(script: Script, model: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "candidates": [
            {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": _usage(script),
        "modelVersion": model,
    }


def reply(script: Script, body: dict[str, Any], model: str) -> list[bytes]:
    write = script.turn(tool_results(body))
    if write is None:
        parts: list[dict[str, Any]] = [{"text": script.final_text}]
    else:
        args = {"file_path": script.absolute(write), "content": write.content}
        parts = [{"functionCall": {"name": "write_file", "args": args}}]
    return [f"data: {json.dumps(_response(script, model, parts))}\r\n\r\n".encode()]


def reply_json(script: Script, body: dict[str, Any], model: str) -> dict[str, Any]:
    """Non-streaming calls are the CLI's utility requests (the model router): answer JSON."""
    del body
    return _response(script, model, [{"text": ROUTER_ANSWER}])


def error(fault: Fault) -> dict[str, Any]:
    status = STATUS_NAMES.get(fault.status, "UNKNOWN")
    return {"error": {"code": fault.status, "message": fault.message, "status": status}}
