"""Takeover time of active/standby control: seconds from kill -9 of the active to work moving.

Two `conveyor up --parts control` processes with `control.leader_lease` and one
`--parts launcher` run on a nats-server (one started here unless `--url`); items
flow with the demo agent. Per trial, once a developer runs, the active control
gets SIGKILL and is started again at once (it comes back as a standby). Measured
from the kill, on the monotonic clock of this process:

- **won**: the standby holds the lease (read from the `conveyor_control` bucket);
- **moving**: the first message the new active writes or publishes, seen on the
  server with its epoch (`Conveyor-Epoch`). That is when work moves again.

The target is `moving` ≤ TTL + 5 s. A killed active renewed at most a third of
a TTL before it died, so the lease expires between ⅔ TTL and one TTL after the
kill; the standby polls every `poll_s`, waits `campaign_delay_s`, and starts the
control actors, which load every record from KV. Figures are printed, never
asserted; every wait is bounded.

    .venv/bin/python bench/takeover.py [--trials 3] [--ttl 10] [--url nats://...]

`bench/cluster.py` calls `takeover_on_hosts(...)` on its network-namespace hosts,
with the cluster's own launchers, and prints the figure with the rest of its run.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts: the process fixtures live with the tests, at the root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bus.server import EmbeddedNats
from conveyor.app.client import Client
from tests.harness import Processes, drive, stored_jobs, wait_until
from tests.standby_support import (
    CLOCK,
    EpochWatch,
    active_of,
    kill,
    standby_toml,
    start_pair,
    status,
)

SLOW = "demo: developer=slow:{agent_s:g}"
TARGET_MARGIN_S = 5.0


@dataclass(frozen=True)
class Takeover:
    """One trial: seconds from the kill until the lease was won and until work moved."""

    won_s: float
    moving_s: float | None


def _trial(procs: Any, client: Client, watch: EpochWatch, agent_s: float, ttl_s: float) -> Takeover:
    active, _epoch = active_of(watch, procs, ("c1", "c2"))
    standby = "c2" if active == "c1" else "c1"
    wait_until(
        lambda: status(client).get("control", {}).get("standbys"),
        what="a standby announced",
        deadline_s=60,
    )
    item = client.command(
        "submit",
        {"repo": "demo", "title": "takeover", "description": SLOW.format(agent_s=agent_s)},
    )["task"]["id"]
    drive(client, item, "development", "review", "testing", deadline_s=120)
    wait_until(
        lambda: any(
            j.role == "developer" and j.pid and j.task_id == item for j in stored_jobs(client)
        ),
        what="a developer running",
        deadline_s=120,
    )
    died = kill(procs, active)
    _, new_epoch = active_of(watch, procs, (standby,))
    won_s = CLOCK.monotonic() - died
    try:
        first = wait_until(
            lambda: next((s for s in watch.stamped(since=died) if s.epoch == new_epoch), None),
            what="a write of the new epoch",
            deadline_s=ttl_s * 4,
        )
        moving_s: float | None = first.at - died
    except AssertionError:
        moving_s = None
    procs.start(active, "control")  # back as a standby, for the next trial
    return Takeover(won_s, moving_s)


def measure_takeover(
    url: str = "", *, trials: int = 3, ttl_s: float = 10.0, agent_s: float = 3.0
) -> list[Takeover]:
    """Run `trials` takeovers on the nats-server at `url` (one of its own when ""); print them."""
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-takeover-"))
    server: EmbeddedNats | None = None
    if not url:
        server = EmbeddedNats(root / "nats")
        server.start()
        url = server.url
    procs = Processes(root, url, extra_toml=standby_toml(ttl_s))
    watch = EpochWatch(url)
    client = Client(url, timeout_s=3.0)
    results: list[Takeover] = []
    try:
        start_pair(procs, client, watch)
        for number in range(1, trials + 1):
            result = _trial(procs, client, watch, agent_s, ttl_s)
            results.append(result)
            moving = f"{result.moving_s:.1f}s" if result.moving_s is not None else "never"
            print(
                f"takeover {number}: lease won {result.won_s:.1f}s, "
                f"work moving {moving} after kill -9"
            )
    finally:
        client.close()
        watch.close()
        procs.stop_all()
        if server is not None:
            server.stop()
    moved = [r.moving_s for r in results if r.moving_s is not None]
    if moved:
        print(
            f"takeover (TTL {ttl_s:g}s, target <= {ttl_s + TARGET_MARGIN_S:g}s): "
            f"median {statistics.median(moved):.1f}s, worst {max(moved):.1f}s over {len(moved)}"
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=10.0, help="control.leader_ttl_s (>= 10)")
    parser.add_argument("--agent-s", type=float, default=3.0)
    parser.add_argument("--url", default="", help="a running nats-server (default: start one)")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    measure_takeover(args.url, trials=args.trials, ttl_s=args.ttl, agent_s=args.agent_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())


class _OnHosts:
    """`Processes`' shape over `tests/cluster` processes: control `name` runs on `hosts[name]`."""

    def __init__(self, app: Any, hosts: dict[str, Any]) -> None:
        self.app = app
        self.hosts = hosts

    @property
    def procs(self) -> dict[str, Any]:
        procs: dict[str, Any] = self.app.procs
        return procs

    def start(self, name: str, parts: str) -> Any:
        return self.app.start(name, parts, self.hosts[name])

    def kill(self, name: str) -> None:
        proc = self.app.procs.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def takeover_on_hosts(
    app: Any, hosts: tuple[Any, Any], url: str, *, ttl_s: float = 10.0, agent_s: float = 3.0
) -> float | None:
    """Kill -9 the active of two leader-lease controls on two hosts; seconds to work moving.

    `app` is a `tests.cluster.cluster.Conveyors` with launchers running; its plain
    `control` process (no lease) is stopped first, then controls `c1` and `c2` start on
    `hosts` with `control.leader_lease` added to the shared config.
    """
    plain = app.procs.pop("control", None)
    if plain is not None:
        plain.terminate()
        plain.wait(timeout=30)
    with Path(app.config).open("a") as config:
        config.write(standby_toml(ttl_s, side=False))
    on_hosts = _OnHosts(app, {"c1": hosts[0], "c2": hosts[1]})
    watch = EpochWatch(url)
    client = Client(url, timeout_s=3.0)
    try:
        start_pair(on_hosts, client, watch, launcher=False)
        result = _trial(on_hosts, client, watch, agent_s, ttl_s)
    finally:
        client.close()
        watch.close()
    moving = f"{result.moving_s:.1f}s" if result.moving_s is not None else "never"
    print(f"takeover: lease won {result.won_s:.1f}s, work moving {moving} after kill -9")
    return result.moving_s
