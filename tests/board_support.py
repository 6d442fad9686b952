"""A node with its gateway (board and /metrics on) for the board, metrics and `top` tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bus.server import EmbeddedNats
from conveyor.app.node import ALL_PARTS, GATEWAY, Node
from tests.harness import Harness, make_config

XSS_TITLE = "Greet <img src=x onerror=\"document.title='pwned'\"> & <b>bold</b>"
"""A title with markup: shown as text, never run (its branch name is slugged)."""


class BoardNode(Harness):
    """A `Harness` whose node runs the gateway too, with an HTTP client on it."""

    def start(self) -> BoardNode:
        self.node = Node(self.cfg, parts=(*ALL_PARTS, GATEWAY)).start()
        assert self.node.gateway is not None
        self.http = httpx.Client(base_url=self.base_url, trust_env=False, timeout=20.0)
        return self

    @property
    def base_url(self) -> str:
        assert self.node is not None
        assert self.node.gateway is not None
        return self.node.gateway.url

    def close(self) -> None:
        self.http.close()
        super().close()


@contextmanager
def board_node(tmp: Path, **overrides: Any) -> Iterator[BoardNode]:
    """A nats-server and a node with its gateway under `tmp`; both stopped on exit."""
    server = EmbeddedNats(tmp / "nats")
    server.start()
    try:
        cfg = make_config(tmp / "data", server.url, **overrides)
        node = BoardNode(cfg, server.url).start()
        try:
            yield node
        finally:
            node.close()
    finally:
        server.stop()
