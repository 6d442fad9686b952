"""SPEC §8 "Ingest": signed webhooks accepted with a durable ack, against raw JetStream publishes.

Gateway side: an embedded nats-server, the real `Bus`, and the gateway started
with `start_gateway` (aiohttp on the bus loop). N distinct deliveries, the six
recorded webhook fixtures round-robin with their exact bytes and signatures and
a fresh `X-Gitea-Delivery`/`X-Plane-Delivery` each, are POSTed by a client with
C requests in flight. Each counts only when answered 200 with `duplicate:
false`, i.e. after the gateway verified, parsed and stored the event and got
its PubAck.

Floor: the same N bodies (the same bytes), published by a plain nats-py client
with `js.publish` and a distinct `Nats-Msg-Id` each, C in flight, waiting for
every PubAck, into a stream configured as CONVEYOR_EVENTS is (file storage, the
same duplicate window), on the same server.

    .venv/bin/python bench/ingest.py [--n 2000] [--concurrency 32] [--repeat 3]
                                     [--client aiohttp|httpx] [--in-process]

The runs alternate gateway and floor; the medians are compared with the
target (gateway >= 0.5x the floor). Each load generator runs in a child
process (this script with `--worker`), so the HTTP client does not share the
gateway's interpreter lock; `--in-process` runs them here instead, which charges
the client's own CPU to the gateway. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import nats
from nats.js import api as js_api

from bus import subjects
from bus.bridge import DUPLICATE_WINDOW_S, MSG_ID, Bus
from bus.server import EmbeddedNats
from conveyor import config as config_mod
from gateways.gateway import start_gateway

TARGET_RATIO = 0.5
SECRET = "conveyor-test-secret"  # noqa: S105 - the fixtures' published test secret
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "integrations"
WEBHOOKS = (
    "gitea-push",
    "gitea-status",
    "gitea-pull_request-opened",
    "gitea-pull_request-closed-merged",
    "plane-issue-created",
    "plane-issue-updated",
)
FLOOR_STREAM = "BENCH_FLOOR"
FLOOR_SUBJECT = "bench.floor"

Request = tuple[str, dict[str, str], bytes]
"""(path, headers, body) of one webhook delivery."""


def deliveries(n: int) -> list[Request]:
    """N deliveries: the recorded fixtures round-robin, each under a fresh delivery id."""
    recorded = []
    for name in WEBHOOKS:
        headers = json.loads((FIXTURES / f"{name}.headers.json").read_text(encoding="utf-8"))
        body = (FIXTURES / f"{name}.json").read_bytes()
        source = name.split("-", 1)[0]
        recorded.append((source, headers, body))
    out = []
    for i in range(n):
        source, headers, body = recorded[i % len(recorded)]
        key = "X-Gitea-Delivery" if source == "gitea" else "X-Plane-Delivery"
        out.append((f"/webhooks/{source}", {**headers, key: str(uuid.uuid4())}, body))
    return out


async def _pool(
    items: list[Request], concurrency: int, send: Callable[[Request], Awaitable[None]]
) -> float:
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await send(queue.get_nowait())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def gateway_run(url: str, items: list[Request], concurrency: int, client: str) -> float:
    """Seconds to get N durable 200s through the gateway."""
    failures: list[str] = []

    def check(status: int, text: str) -> None:
        if status != 200 or json.loads(text) != {"ok": True, "duplicate": False}:
            failures.append(f"{status} {text[:200]}")

    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=url, limits=limits, trust_env=False, timeout=30
        ) as http:

            async def send_httpx(item: Request) -> None:
                path, headers, body = item
                response = await http.post(path, headers=headers, content=body)
                check(response.status_code, response.text)

            elapsed = await _pool(items, concurrency, send_httpx)
    else:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(url, connector=connector) as session:

            async def send_aiohttp(item: Request) -> None:
                path, headers, body = item
                async with session.post(path, headers=headers, data=body) as response:
                    check(response.status, await response.text())

            elapsed = await _pool(items, concurrency, send_aiohttp)
    if failures:
        raise RuntimeError(f"{len(failures)} webhooks not accepted, e.g. {failures[0]}")
    return elapsed


async def floor_run(nats_url: str, items: list[Request], concurrency: int) -> float:
    """Seconds to publish the same bodies to JetStream directly and get every PubAck."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream(timeout=30)

        async def send(item: Request) -> None:
            _, headers, body = item
            delivery = headers.get("X-Gitea-Delivery") or headers["X-Plane-Delivery"]
            ack = await js.publish(FLOOR_SUBJECT, body, headers={MSG_ID: delivery})
            if ack.duplicate:
                raise RuntimeError("floor publish unexpectedly deduplicated")

        return await _pool(items, concurrency, send)
    finally:
        await nc.close()


async def stored(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def add_floor_stream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_stream(
            js_api.StreamConfig(
                name=FLOOR_STREAM,
                subjects=[FLOOR_SUBJECT],
                retention=js_api.RetentionPolicy.LIMITS,
                storage=js_api.StorageType.FILE,
                max_age=30 * 86400.0,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=2000, help="deliveries per run")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side")
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the load generators in this process (sharing the GIL with the gateway)",
    )
    parser.add_argument("--worker", choices=("gateway", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        # A load generator in its own process: prints the seconds its run took.
        items = deliveries(args.n)
        if args.worker == "gateway":
            elapsed = asyncio.run(gateway_run(args.url, items, args.concurrency, args.client))
        else:
            elapsed = asyncio.run(floor_run(args.url, items, args.concurrency))
        print(elapsed)
        return 0

    def load(kind: str, url: str, n: int) -> float:
        if args.in_process:
            items = deliveries(n)
            if kind == "gateway":
                return asyncio.run(gateway_run(url, items, args.concurrency, args.client))
            return asyncio.run(floor_run(url, items, args.concurrency))
        argv = [sys.executable, __file__, "--worker", kind, "--url", url, "--n", str(n)]
        argv += ["--concurrency", str(args.concurrency), "--client", args.client]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{kind} load generator failed: {done.stderr[-2000:]}")
        return float(done.stdout.strip().splitlines()[-1])

    workdir = Path(tempfile.mkdtemp(prefix="conveyor-ingest-"))
    server = EmbeddedNats(workdir / "nats")
    server.start()
    bus = Bus.connect(server.url)
    gateway = None
    try:
        bus.setup()
        cfg = config_mod.load(
            env={},
            overrides={
                "data_dir": str(workdir / "data"),
                "nats": {"url": server.url},
                "gitea": {"webhook_secret": SECRET},
                "plane": {"webhook_secret": SECRET},
                "gateway": {"port": 0},
            },
        )
        gateway = start_gateway(bus, cfg)
        asyncio.run(add_floor_stream(server.url))
        # One warm-up of each side: connections, JIT-free but cache-warm paths, file creation.
        load("gateway", gateway.url, 200)
        load("floor", server.url, 200)
        gateway_rates: list[float] = []
        floor_rates: list[float] = []
        for run in range(1, args.repeat + 1):
            g = load("gateway", gateway.url, args.n)
            f = load("floor", server.url, args.n)
            gateway_rates.append(args.n / g)
            floor_rates.append(args.n / f)
            print(
                f"run {run}: gateway {args.n / g:8.0f}/s ({g:.2f} s)   "
                f"floor {args.n / f:8.0f}/s ({f:.2f} s)   ratio {f / g:.3f}",
                flush=True,
            )
        events = asyncio.run(stored(server.url, subjects.STREAM_EVENTS))
        floor_events = asyncio.run(stored(server.url, FLOOR_STREAM))
        expected = 200 + args.n * args.repeat
        g_med, f_med = statistics.median(gateway_rates), statistics.median(floor_rates)
        ratio = g_med / f_med
        print()
        where = "this process" if args.in_process else "a child process"
        print(
            f"deliveries per run {args.n}, in flight {args.concurrency}, "
            f"client {args.client} in {where}"
        )
        print(f"stored: gateway {events}/{expected}, floor {floor_events}/{expected}")
        print(f"median gateway (signed webhook, HTTP, durable ack): {g_med:8.0f}/s")
        print(f"median floor   (raw JetStream publish + ack):       {f_med:8.0f}/s")
        verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
        print(f"ratio {ratio:.3f}   target >= {TARGET_RATIO}   {verdict}")
        status = gateway.status()["sources"]
        print(f"gateway counts: {json.dumps(status, sort_keys=True)}")
    finally:
        if gateway is not None:
            gateway.stop()
        bus.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
