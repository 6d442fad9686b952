"""Cluster: three hosts against one, and recovery after the stream-leader node dies.

Two runs in one invocation, on Linux network namespaces as hosts (the test fixtures
of `tests/cluster/`, so root and `ip` are needed):

- **single**: one host runs a single nats-server, control and a launcher, every
  stream R1 (the baseline, printed from the same run);
- **cluster**: three hosts run a 3-node NATS cluster (`conveyor up --parts nats`
  on each), control runs on the first, and `--launchers` launchers on hosts of
  their own, every stream R3 with `sync_interval: always`.

Each run submits `--items` demo items at once and measures, never asserts:
items per minute from the first submit to the last `done`, and the median time to
done. The cluster run then submits `--items` more, kills -9 the node leading most
of the pipeline's streams while developers work, and measures the **recovery**:
from the kill until every stream has a leader again and a probe write lands, and
until those items are done; and it counts PRs opened and merged (each must be once).

Last, the **takeover**: the plain control is replaced by two leader-lease controls
on two hosts, and the active one is killed -9 while a developer works
(`bench/takeover.py`). Then the **dead launcher host**: control and a launcher with
their own `launcher.host_id`s, `launcher.host_silence_s` = 5; once its developers run,
the launcher's whole host is killed -9 (every process in its namespace) and the time
until each of its jobs runs again on a second launcher host is printed
(`bench/dead_host.py`'s measure, on namespace hosts).

    PYTHONPATH=. .venv/bin/python bench/cluster.py [--items 4] [--launchers 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.queue_policy import Job
from bench.dead_host import _approve_all, _developers
from bench.takeover import takeover_on_hosts
from bus.bridge import Bus
from bus.messages import Alert
from conveyor.app.client import Client
from conveyor.clock import SystemClock
from tests.cluster.cluster import STREAMS, Conveyors, NatsCluster
from tests.cluster.netns import Network, unavailable
from tests.harness import drive, stored_jobs, wait_ready, wait_until

_clock = SystemClock()
DEAD_HOST_SILENCE_S = 5.0
DEAD_HOST_AGENT = "demo: developer=slow:60"


def takeover_time_s(network: Network, cluster: NatsCluster, app: Conveyors) -> float | None:
    """Seconds from kill -9 of the active control until work moves again (target: ≤ lease
    TTL + 5 s): two leader-lease controls on the first two hosts (`bench/takeover.py`)."""
    del network
    return takeover_on_hosts(app, (cluster.hosts[0], cluster.hosts[1]), cluster.url)


def dead_launcher_host_resolution_s(
    network: Network, cluster: NatsCluster, app: Conveyors, *, jobs: int = 3
) -> float | None:
    """Seconds from kill -9 of a whole launcher host (its launcher and its agents) until
    every job it ran runs again on another host (`bench/dead_host.py`'s measure, on
    namespace hosts): the control process has a host id of its own, so it can only
    ask the dead host, and resolves its jobs after `launcher.host_silence_s`."""
    app.stop_all()
    app.procs.clear()
    fast = {
        "CONVEYOR_LAUNCHER__HOST_SILENCE_S": str(DEAD_HOST_SILENCE_S),
        "CONVEYOR_REAPER__INTERVAL_S": "0.5",
        "CONVEYOR_REAPER__DEAD_TICKS": "2",
    }

    def _as(name: str, host_id: str) -> dict[str, str]:
        return {**fast, "CONVEYOR_LAUNCHER__NAME": name, "CONVEYOR_LAUNCHER__HOST_ID": host_id}

    host_a, host_b = network.hosts_n(2)
    app.start("dead-control", "control", cluster.hosts[0], env=_as("dead-control", "control"))
    app.start("la", "launcher", host_a, env=_as("la", "host-a"))
    client = Client(cluster.url, timeout_s=5.0)
    try:
        wait_ready(client, app)  # type: ignore[arg-type]
        ids = [
            str(
                client.command(
                    "submit",
                    {"repo": "demo", "title": f"Dead host {i}", "description": DEAD_HOST_AGENT},
                )["task"]["id"]
            )
            for i in range(jobs)
        ]

        def _all_on_a() -> list[Job] | None:
            _approve_all(client, ids)
            found = [j for j in _developers(client) if j.host == "host-a" and j.pid]
            return found if len(found) == jobs else None

        on_a = {j.id for j in wait_until(_all_on_a, what="developers on host-a", deadline_s=300)}
        app.start("lb", "launcher", host_b, env=_as("lb", "host-b"))
        wait_until(
            lambda: "launcher.started" in (app.tmp / "lb.log").read_text(errors="replace"),
            what="host-b up",
            deadline_s=60,
        )
        killed = _clock.monotonic()
        host_a.kill_all()

        def _rerun() -> bool:
            again = [
                j
                for j in _developers(client)
                if j.id in on_a and j.host == "host-b" and j.attempts >= 2 and j.pid
            ]
            return len(again) == jobs

        wait_until(_rerun, what="host-a's jobs running on host-b", deadline_s=300)
        return _clock.monotonic() - killed
    finally:
        client.close()


def _submit(client: Client, n: int, title: str) -> list[str]:
    items = []
    for i in range(n):
        reply = client.command(
            "submit", {"repo": "demo", "title": f"{title} {i}", "description": "demo"}
        )
        items.append(str(reply["task"]["id"]))
    return items


def _deliver(client: Client, items: list[str]) -> list[float]:
    """Drive every item to done; seconds from now until each was seen done."""
    start = _clock.monotonic()
    took = {}
    while len(took) < len(items):
        for item in items:
            if item not in took:
                drive(client, item, "done", deadline_s=600)
                took[item] = _clock.monotonic() - start
    return list(took.values())


def _effects(app: Conveyors) -> dict[str, int]:
    lines = app.forge_effects()
    return {kind: sum(f'"{kind}"' in line for line in lines) for kind in ("pr_opened", "pr_merged")}


def _throughput(client: Client, items: int, title: str) -> dict[str, Any]:
    start = _clock.monotonic()
    done = _deliver(client, _submit(client, items, title))
    wall = _clock.monotonic() - start
    return {
        "items": items,
        "items_per_min": round(items * 60.0 / wall, 2),
        "median_done_s": round(statistics.median(done), 1),
        "wall_s": round(wall, 1),
    }


def _recovery(client: Client, cluster: NatsCluster, bus: Bus, items: int) -> dict[str, Any]:
    batch = _submit(client, items, "Leader dies")
    wait_until(
        lambda: any(j.role == "developer" and j.pid for j in stored_jobs(client)),
        what="a developer running",
        deadline_s=300,
    )
    victim = cluster.busiest_leader(bus)
    killed = _clock.monotonic()
    cluster.kill(victim)
    wait_until(
        lambda: _all_led(cluster, bus, victim), what="every stream led again", deadline_s=120
    )
    led = _clock.monotonic() - killed
    bus.emit(_probe(), msg_id=f"bench-probe-{killed}")
    writable = _clock.monotonic() - killed
    _deliver(client, batch)
    return {
        "killed_node": f"n{victim}",
        "streams_led_again_s": round(led, 2),
        "probe_write_landed_s": round(writable, 2),
        "items_done_after_kill_s": round(_clock.monotonic() - killed, 1),
    }


def _probe() -> Alert:
    return Alert(level="info", text="bench probe", source="bench", at=_clock.now())


def _all_led(cluster: NatsCluster, bus: Bus, dead: int) -> bool:
    try:
        led = cluster.leaders(bus)
    except Exception:
        return False
    return len(led) == len(STREAMS) and dead not in led.values()


def _run(
    network: Network,
    tmp: Path,
    nodes: int,
    launchers: int,
    measure: Callable[[Client, NatsCluster, Conveyors], dict[str, Any]],
) -> dict[str, Any]:
    cluster = NatsCluster(network.hosts_n(nodes), tmp / "nats")
    cluster.start()
    app = Conveyors(cluster, tmp / "app")
    try:
        app.start("control", "control", cluster.hosts[0])
        own_hosts = network.hosts_n(launchers) if nodes > 1 else cluster.hosts[:1]
        for i, host in enumerate(own_hosts):
            app.start(f"launcher{i}", "launcher", host)
        client = Client(cluster.url)
        try:
            wait_ready(client, app)  # type: ignore[arg-type]
            figures = measure(client, cluster, app)
        finally:
            client.close()
        figures.setdefault("effects", _effects(app))
        return figures
    finally:
        app.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--launchers", type=int, default=2)
    args = parser.parse_args()
    why = unavailable()
    if why:
        print(f"bench/cluster.py cannot run here: {why}", file=sys.stderr)
        return 2

    def _single(client: Client, _c: NatsCluster, _a: Conveyors) -> dict[str, Any]:
        return {"throughput": _throughput(client, args.items, "Single")}

    def _clustered(client: Client, cluster: NatsCluster, app: Conveyors) -> dict[str, Any]:
        figures: dict[str, Any] = {"throughput": _throughput(client, args.items, "Cluster")}
        bus = Bus.connect(cluster.url, name="bench-cluster", replicas=3)
        try:
            figures["recovery"] = _recovery(client, cluster, bus, args.items)
        finally:
            bus.close()
        # Counted before the takeover and dead-host items, which are not all merged.
        figures["effects"] = _effects(app)
        figures["takeover_s"] = takeover_time_s(network, cluster, app)
        figures["dead_launcher_host_resolution_s"] = dead_launcher_host_resolution_s(
            network, cluster, app
        )
        return figures

    with tempfile.TemporaryDirectory(prefix="conveyor-bench-cluster-") as scratch:
        tmp = Path(scratch)
        results: dict[str, dict[str, Any]] = {}
        for name, nodes, measure in (("single", 1, _single), ("cluster", 3, _clustered)):
            network = Network()
            try:
                results[name] = _run(network, tmp / name, nodes, args.launchers, measure)
            finally:
                network.destroy()
    _print(results, args)
    return 0


def _print(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    single, cluster = results["single"], results["cluster"]
    one, three = single["throughput"], cluster["throughput"]
    print(f"items per run: {args.items}; cluster launchers: {args.launchers} hosts")
    print(f"{'':26}{'single host':>14}{'3-node cluster':>16}")
    for key in ("items_per_min", "median_done_s", "wall_s"):
        print(f"{key:26}{one[key]:>14}{three[key]:>16}")
    ratio = three["items_per_min"] / one["items_per_min"] if one["items_per_min"] else 0.0
    print(f"{'cluster / single':26}{'':>14}{ratio:>15.2f}x")
    # Each item opens and merges one PR: the counts must equal the items of the run.
    print(f"{'items, PRs opened, merged':26}", end="")
    for run, items in ((single, args.items), (cluster, 2 * args.items)):
        eff = run["effects"]
        print(f"{(items, eff['pr_opened'], eff['pr_merged'])!s:>15}", end="")
    print()
    recovery = cluster["recovery"]
    print(f"stream-leader node killed: {recovery['killed_node']}")
    for key in ("streams_led_again_s", "probe_write_landed_s", "items_done_after_kill_s"):
        print(f"  {key:30}{recovery[key]:>8}")
    for key in ("takeover_s", "dead_launcher_host_resolution_s"):
        value = cluster[key]
        print(f"{key:32}{'n/a' if value is None else round(value, 2):>8}")


if __name__ == "__main__":
    sys.exit(main())
