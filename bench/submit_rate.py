"""SPEC §8 "Scale", the submit target: submits a second against bare KV creates of the same records.

A submit is answered once its task record (with the outbox it stores) is durable,
so its floor is a KV create of that same record, nothing else: the record is built
by the same policy the StageEngine uses (`stage_policy.new_task`), encoded the same
way, into a bucket configured like `conveyor_tasks`. Both sides are driven from one
asyncio nats-py connection in this process (the same kind of client), in two shapes:

- **one after another** (`in flight 1`): a client waiting for each answer; the rate
  is one over the latency;
- **N in flight** (`--in-flight`, default 16): N requests outstanding at all times,
  the rate a busy front-end (webhooks, a tracker sync) gets.

Rounds alternate the four measurements (submit 1, create 1, submit N, create N), so
both sides of a ratio are measured at the same moment; the median round is printed.
Only nats-server and the `control` part run: no launcher, so the submitted items
never launch an agent, nor run the pipeline while the rate is measured (the
QueueWorker, in control, does take each item's job request: that is the submit's
own downstream, on the same cores as the engine, and it is counted).

    .venv/bin/python bench/submit_rate.py [--submits 300] [--in-flight 16] [--rounds 3]

`scale.py` calls `measure` for its submit column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import psutil
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from actors import stage_policy
from bus import subjects
from conveyor import config as config_mod
from conveyor import validate
from conveyor.clock import SystemClock

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_cluster import Cluster
from fleet import render_config

CLOCK = SystemClock()
TARGET = 0.8
FLOOR_BUCKET = "bench_submit_floor"
JUDGED = "in flight 1"
WHY_JUDGED = (
    "a submit is answered once its one record is durable, and one client waiting for "
    "each answer is how the CLI, a webhook handler and the tracker sync submit; with N in "
    "flight the floor's creates are pipelined by the server, so that ratio also shows how "
    "well submits overlap, and is printed beside it"
)


@dataclass
class Shape:
    """One shape's measurements over the rounds: rates a second and p50 latencies in ms."""

    in_flight: int
    submit: list[float] = field(default_factory=list)
    create: list[float] = field(default_factory=list)
    submit_p50: list[float] = field(default_factory=list)
    create_p50: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    """CPU ms per operation, by "<side> <process>" (submit control, create nats-server, ...)."""

    @property
    def name(self) -> str:
        return f"in flight {self.in_flight}"

    def ratio(self) -> float:
        """The median round's ratio (each round's two sides were measured together)."""
        ratios = [s / c for s, c in zip(self.submit, self.create, strict=True) if c]
        return statistics.median(ratios) if ratios else 0.0


class Meter:
    """CPU seconds of the processes a measurement involves, this client among them."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.procs["client"] = psutil.Process()

    def read(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            times = proc.cpu_times()
            out[name] = times.user + times.system
        return out

    async def quiet(self, name: str, deadline_s: float = 20.0) -> None:
        """Until `name` used under 5 % of a core for 0.3 s: the work a batch left is done."""
        end = CLOCK.monotonic() + deadline_s
        while CLOCK.monotonic() < end:
            before = self.read()[name]
            await asyncio.sleep(0.3)
            if self.read()[name] - before < 0.015:
                return


async def _metered(
    meter: Meter, settle: str, run: Awaitable[tuple[float, list[float]]]
) -> tuple[float, list[float], dict[str, float]]:
    """`run`, and CPU per operation until `settle` is quiet again (its after-work counted)."""
    before = meter.read()
    rate, lat = await run
    await meter.quiet(settle)
    after = meter.read()
    return rate, lat, {k: (after[k] - before[k]) * 1000 / len(lat) for k in after}


async def _run(
    calls: list[Callable[[], Awaitable[None]]], in_flight: int
) -> tuple[float, list[float]]:
    """Rate a second of `calls`, at most `in_flight` outstanding, and each call's latency."""
    latencies: list[float] = []
    todo = iter(calls)

    async def lane() -> None:
        for call in todo:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return len(calls) / (time.perf_counter() - started), latencies


def _submit(nc: NatsClient, body: bytes, ids: list[str]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        reply = await nc.request(subjects.CMD_SUBMIT, body, timeout=30.0)
        answer = json.loads(reply.data)
        if not answer.get("ok"):
            raise RuntimeError(f"submit refused: {answer.get('error')}")
        ids.append(answer["task"]["id"])

    return call


def _create(kv: KeyValue, key: str, data: bytes) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        await kv.create(key, data)

    return call


def task_record(cfg: config_mod.Config, repo: str, task_id: str, title: str) -> bytes:
    """The task record a submit stores before it answers: the task with its outbox."""
    decision = stage_policy.new_task(
        task_id=task_id,
        repo=repo,
        title=title,
        description="",
        branch=validate.branch_for(task_id, title),
        now=CLOCK.now(),
        cfg=cfg,
    )
    assert decision.task is not None  # noqa: S101 - new_task always creates
    return msgspec.json.encode(msgspec.structs.replace(decision.task, outbox=list(decision.emit)))


async def _floor_bucket(nc: NatsClient) -> KeyValue:
    js = nc.jetstream()
    tasks = await js.key_value(subjects.BUCKET_TASKS)
    info = (await tasks.status()).stream_info.config
    with_config = KeyValueConfig(
        bucket=FLOOR_BUCKET,
        history=info.max_msgs_per_subject or 1,
        storage=info.storage,
        replicas=info.num_replicas or 1,
        direct=bool(info.allow_direct),
    )
    with contextlib.suppress(Exception):  # absent the first time
        await js.delete_key_value(FLOOR_BUCKET)
    return await js.create_key_value(with_config)


async def _measure(
    url: str,
    cfg: config_mod.Config,
    repo: str,
    submits: int,
    shapes: tuple[int, ...],
    rounds: int,
    pids: dict[str, int],
    settle: str,
) -> tuple[list[Shape], list[str]]:
    nc = await nats.connect(url)
    submitted: list[str] = []
    try:
        kv = await _floor_bucket(nc)
        prefix = cfg.repo(repo).prefix
        title = "Submit rate item"
        body = json.dumps({"repo": repo, "title": title}).encode()
        # The floor's record: one like the submits store (ids of the same length).
        data = task_record(cfg, repo, f"{prefix}-{10**6}", title)
        out = [Shape(n) for n in shapes]
        meter = Meter(pids)
        # Warm both paths (connections, the engine's first write) before measuring.
        await _run([_submit(nc, body, submitted) for _ in range(5)], 1)
        await _run([_create(kv, f"warm-{n}", data) for n in range(5)], 1)
        await meter.quiet(settle)
        for round_no in range(rounds):
            for shape in out:
                # Each side starts with control quiet: what the last batch left it to do
                # (the QueueWorker taking the jobs, the tracker's files) is not on the cores.
                calls = [_submit(nc, body, submitted) for _ in range(submits)]
                rate, lat, cpu = await _metered(meter, settle, _run(calls, shape.in_flight))
                shape.submit.append(rate)
                shape.submit_p50.append(statistics.median(lat) * 1000)
                for name, ms in cpu.items():
                    shape.cpu.setdefault(f"submit {name}", []).append(ms)
                keys = [f"F{round_no}-{shape.in_flight}-{n}" for n in range(submits)]
                calls = [_create(kv, k, data) for k in keys]
                rate, lat, cpu = await _metered(meter, settle, _run(calls, shape.in_flight))
                shape.create.append(rate)
                shape.create_p50.append(statistics.median(lat) * 1000)
                for name, ms in cpu.items():
                    shape.cpu.setdefault(f"create {name}", []).append(ms)
        await nc.jetstream().delete_key_value(FLOOR_BUCKET)
        return out, submitted
    finally:
        await nc.close()


def measure(
    url: str,
    cfg: config_mod.Config,
    repo: str,
    *,
    submits: int,
    in_flight: int = 16,
    rounds: int = 1,
    pids: dict[str, int],
    settle: str = "control",
) -> tuple[list[Shape], list[str]]:
    """Submits to `repo` against bare creates, one after another and `in_flight` at once.

    `pids`: the processes whose CPU is counted (by name; `settle` names the one each
    measurement waits to go quiet after). Returns each shape's figures and the ids
    submitted (for the caller to cancel).
    """
    shapes = (1, in_flight) if in_flight > 1 else (1,)
    return asyncio.run(_measure(url, cfg, repo, submits, shapes, rounds, pids, settle))


def verdict(shapes: list[Shape]) -> str:
    """PASS or MISS of the target, on the judged shape, with the other shape beside it."""
    judged = next(s for s in shapes if s.name == JUDGED)
    mark = "PASS" if judged.ratio() >= TARGET else "MISS"
    others = ", ".join(f"{s.name} {s.ratio():.2f}" for s in shapes if s is not judged)
    return f"submit ≥ {TARGET}x bare creates, judged {JUDGED}: {judged.ratio():.2f} {mark}" + (
        f" (also {others})" if others else ""
    )


def report(shapes: list[Shape]) -> list[str]:
    """Lines: per shape the median rates, p50 latencies and ratio, then the verdict."""
    lines = [
        f"{'shape':>12} {'submit/s':>9} {'create/s':>9} {'ratio':>6} "
        f"{'submit p50 ms':>13} {'create p50 ms':>13}  rounds (submit/create)"
    ]
    for s in shapes:
        each = " ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(s.submit, s.create, strict=True))
        lines.append(
            f"{s.name:>12} {statistics.median(s.submit):>9.1f} "
            f"{statistics.median(s.create):>9.1f} {s.ratio():>6.2f} "
            f"{statistics.median(s.submit_p50):>13.2f} {statistics.median(s.create_p50):>13.2f}"
            f"  {each}"
        )
    names = sorted({k.split(" ", 1)[1] for s in shapes for k in s.cpu})
    lines.append("CPU ms per operation (its after-work counted), submit / create:")
    for s in shapes:
        each = ", ".join(
            f"{n} {statistics.median(s.cpu.get(f'submit {n}', [0.0])):.2f}"
            f" / {statistics.median(s.cpu.get(f'create {n}', [0.0])):.2f}"
            for n in names
        )
        lines.append(f"{s.name:>12}: {each}")
    lines.append(verdict(shapes))
    lines.append(f"judged on {JUDGED}: {WHY_JUDGED}")
    return lines


def _wait_engine(url: str, deadline_s: float) -> None:
    """Until the StageEngine answers a page of tasks (no launcher runs, so no `healthy`)."""

    async def ask() -> bool:
        nc = await nats.connect(url)
        try:
            reply = await nc.request(subjects.STATUS_TASKS, b'{"limit": 1}', timeout=2.0)
            return isinstance(json.loads(reply.data), dict | list)
        finally:
            await nc.close()

    end = CLOCK.monotonic() + deadline_s
    while CLOCK.monotonic() < end:
        try:
            if asyncio.run(ask()):
                return
        except Exception:  # noqa: S110 - not up yet
            pass
        CLOCK.sleep(0.1)
    raise RuntimeError(f"control did not answer within {deadline_s:g} s")


def _nats_pid(cluster: Cluster) -> int:
    """The embedded nats-server's pid (a child of this process)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "nats-server" in child.name() and str(cluster.workdir) in " ".join(child.cmdline()):
                return int(child.pid)
    raise RuntimeError("no nats-server child found")


def serve_alone(config: Path) -> None:
    """The submit path with nothing behind it: a StageEngine, the service and a ticker.

    No QueueWorker takes the job requests and no TrackerSync writes the tracker, so a
    submit costs what its own path costs (the engine, the service, the writes).
    """
    from actors.stage_engine import StageEngine
    from bus.bridge import Bus
    from conveyor.app import wiring
    from conveyor.app.node_control import Ticker
    from conveyor.app.service import ControlService

    cfg = config_mod.load(config)
    bus = Bus.connect(cfg.nats.url, name="bench-submit-alone")
    bus.setup()
    ctx = wiring.Context(cfg, bus, CLOCK, forge=object())  # type: ignore[arg-type] # no gate read
    engine = wiring.start_actor(wiring.SPECS[StageEngine.name], ctx)
    ControlService(
        bus, engine, engine, engine, engine, version="0.0.0", request_timeout_s=5.0, statuses={}
    ).register()
    ticker = Ticker(cfg.queue.tick_s, CLOCK)
    ticker.add(engine)
    ticker.start()
    threading.Event().wait()  # until the bench kills it


def _spawn_alone(cluster: Cluster) -> subprocess.Popen[bytes]:
    argv = [sys.executable, __file__, "--serve-alone", str(cluster.config)]
    with (cluster.workdir / "alone.log").open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    cluster.procs["control"] = proc
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submits", type=int, default=300, help="per shape and round")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--alone",
        action="store_true",
        help="instead of control, only a StageEngine and the service (the submit path alone)",
    )
    parser.add_argument("--serve-alone", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_alone:
        serve_alone(args.serve_alone)
        return 0
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-submit-"))
    cluster = Cluster(root)
    print(f"submit rate: {args.submits} submits per shape and round, {args.rounds} rounds")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; scratch {root}")
    try:
        cluster.start_nats()
        cluster.config.write_text(render_config(cluster.data, cluster.nats.url, 1))
        if args.alone:
            print("serving: the submit path alone (StageEngine and service, no QueueWorker)")
            _spawn_alone(cluster)
        else:
            print("serving: control (the StageEngine and everything behind a submit)")
            cluster.spawn("control")
        _wait_engine(cluster.nats.url, 60.0)
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        cfg = config_mod.load(cluster.config)
        pids = {"control": cluster.procs["control"].pid, "nats-server": _nats_pid(cluster)}
        shapes, ids = measure(
            cluster.nats.url,
            cfg,
            "repo1",
            submits=args.submits,
            in_flight=args.in_flight,
            rounds=args.rounds,
            pids=pids,
        )
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{len(ids)} submitted, {len(set(ids))} distinct ids")
        print("\n".join(report(shapes)))
    finally:
        cluster.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
