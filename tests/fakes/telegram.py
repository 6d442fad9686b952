"""A fake Telegram Bot API: `sendMessage` for one bot token, with rate limits and faults."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from conveyor.clock import SystemClock
from tests.fakes.plane import FIXTURES, ServerThread


def _fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


TOO_MANY_REQUESTS = _fixture_bytes("telegram-429.json")
"""The captured 429 body (`retry_after` 15), served byte for byte."""

UNAUTHORIZED = {"ok": False, "error_code": 401, "description": "Unauthorized"}


class FakeTelegram(ServerThread):
    """`POST /bot<token>/sendMessage`; records every delivered message in `messages`."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.messages: list[dict[str, Any]] = []
        self.requests = 0
        self._limited: list[int] = []
        self._failures: list[int] = []
        self._hangs = 0
        self._next_id = 1

    def rate_limit_next(self, count: int = 1, retry_after: int = 15) -> None:
        """Answer the next `count` sends with 429 and `parameters.retry_after`."""
        self.call(lambda: self._limited.extend([retry_after] * count))

    def fail_next(self, status: int = 502, count: int = 1) -> None:
        """Answer the next `count` sends with `status` (a proxy error page, not JSON)."""
        self.call(lambda: self._failures.extend([status] * count))

    def hang_next(self, count: int = 1) -> None:
        """Never answer the next `count` sends (until stop)."""

        def _add() -> None:
            self._hangs += count

        self.call(_add)

    def texts(self) -> list[str]:
        return [m["text"] for m in list(self.messages)]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._method)
        return app

    async def _method(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.match_info["token"] != self.token:
            return web.json_response(UNAUTHORIZED, status=401)
        if request.match_info["method"] != "sendMessage":
            return web.json_response(
                {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
            )
        if self._hangs:
            self._hangs -= 1
            await asyncio.sleep(3600)
        if self._failures:
            status = self._failures.pop(0)
            return web.Response(status=status, text="<html>Bad Gateway</html>")
        if self._limited:
            retry_after = self._limited.pop(0)
            body = TOO_MANY_REQUESTS
            if retry_after != 15:
                body = json.dumps(
                    {
                        "ok": False,
                        "error_code": 429,
                        "description": f"Too Many Requests: retry after {retry_after}",
                        "parameters": {"retry_after": retry_after},
                    }
                ).encode()
            return web.Response(body=body, status=429, content_type="application/json")
        try:
            body = await request.json()
        except ValueError:
            body = dict(await request.post())
        chat_id, text = body.get("chat_id"), body.get("text")
        if not chat_id:
            return _bad("Bad Request: chat not found")
        if not isinstance(text, str) or not text.strip():
            return _bad("Bad Request: message text is empty")
        message = {
            "message_id": self._next_id,
            "date": int(SystemClock().now()),
            "chat": {"id": chat_id, "type": "private"},
            "text": text,
        }
        self._next_id += 1
        self.messages.append(
            {**message, "disable_notification": bool(body.get("disable_notification"))}
        )
        return web.json_response({"ok": True, "result": message})


def _bad(description: str) -> web.Response:
    return web.json_response(
        {"ok": False, "error_code": 400, "description": description}, status=400
    )
