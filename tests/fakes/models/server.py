"""One fake model API on 127.0.0.1 that speaks every protocol the agent CLIs use."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.fakes.models import anthropic, chat, gemini, responses
from tests.fakes.models.script import Fault, LoggedRequest, Script
from tests.fakes.plane import ServerThread


class FakeModel(ServerThread):
    """Answers by `script`; `fail_next`/`fail_always` put faults ahead of it.

    Every request is logged in `requests` before it is answered, faults included.
    """

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script
        self.requests: list[LoggedRequest] = []
        self._faults: list[Fault] = []
        self._always: Fault | None = None
        self._released: asyncio.Event | None = None

    def fail_next(self, fault: Fault, count: int = 1) -> None:
        self.call(lambda: self._faults.extend([fault] * count))

    def fail_always(self, fault: Fault | None) -> None:
        def _set() -> None:
            self._always = fault

        self.call(_set)

    def logged(self, path_part: str = "") -> list[LoggedRequest]:
        return [r for r in list(self.requests) if path_part in r.path]

    def saw(self, text: str) -> bool:
        """Whether any request body carried `text` (the prompt reached the model)."""
        return any(text in r.raw for r in list(self.requests))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1beta/models/{call}", self._gemini)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    async def on_started(self) -> None:
        self._released = asyncio.Event()

    async def on_stopping(self) -> None:
        if self._released is not None:
            self._released.set()

    async def _log(self, request: web.Request) -> dict[str, Any]:
        raw = await request.text()
        self.script.observe(raw)
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {}
        self.requests.append(
            LoggedRequest(
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers=dict(request.headers),
                body=body if isinstance(body, dict) else {},
                raw=raw,
            )
        )
        return body if isinstance(body, dict) else {}

    def _fault(self) -> Fault | None:
        if self._faults:
            return self._faults.pop(0)
        return self._always

    async def _hold(self) -> None:
        assert self._released is not None
        await self._released.wait()

    async def _answer(
        self,
        request: web.Request,
        events: list[bytes],
        error_body: dict[str, Any],
        content_type: str = "text/event-stream",
    ) -> web.StreamResponse:
        fault = self._fault()
        if fault is not None and fault.mode == "hang":
            await self._hold()
            return web.Response(status=503)
        if fault is not None and fault.mode == "status":
            headers = {}
            if fault.retry_after_s is not None:
                headers["retry-after"] = str(fault.retry_after_s)
            return web.json_response(error_body, status=fault.status, headers=headers)
        response = web.StreamResponse(
            headers={"content-type": content_type, "cache-control": "no-cache"}
        )
        await response.prepare(request)
        for index, event in enumerate(events):
            await response.write(event)
            if index == 0 and fault is not None and fault.mode == "stall":
                await self._hold()
                return response
        await response.write_eof()
        return response

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._log(request)
        fault = self._peek_status()
        error_body = anthropic.error(fault) if fault else {}
        if not body.get("stream"):
            return await self._json(request, anthropic.reply_json(self.script, body), error_body)
        return await self._answer(request, anthropic.reply(self.script, body), error_body)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._log(request)
        fault = self._peek_status()
        error_body = responses.error(fault) if fault else {}
        return await self._answer(request, responses.reply(self.script, body), error_body)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._log(request)
        fault = self._peek_status()
        error_body = chat.error(fault) if fault else {}
        if not body.get("stream"):
            return await self._json(request, chat.reply_json(self.script, body), error_body)
        return await self._answer(request, chat.reply(self.script, body), error_body)

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        body = await self._log(request)
        model, _, method = request.match_info["call"].partition(":")
        fault = self._peek_status()
        error_body = gemini.error(fault) if fault else {}
        if method == "generateContent":
            answer = gemini.reply_json(self.script, body, model)
            return await self._json(request, answer, error_body)
        return await self._answer(request, gemini.reply(self.script, body, model), error_body)

    async def _json(
        self, request: web.Request, answer: dict[str, Any], error_body: dict[str, Any]
    ) -> web.StreamResponse:
        events = [json.dumps(answer).encode()]
        return await self._answer(request, events, error_body, "application/json")

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        await self._log(request)
        return web.json_response({"error": {"message": "not found"}}, status=404)

    def _peek_status(self) -> Fault | None:
        fault = self._faults[0] if self._faults else self._always
        return fault if fault is not None and fault.mode == "status" else None
