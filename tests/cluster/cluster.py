"""A 3-node NATS cluster on three test hosts, and Conveyor processes on any host.

Every node is `conveyor up --parts nats` with a generated config (`[nats.cluster]`),
so the tests start the cluster the way an operator would on three machines. In its
own namespace every host can use the standard ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bus import subjects
from bus.bridge import Bus
from tests.cluster.netns import Host
from tests.harness import CONFIG, wait_until

CLIENT_PORT = 4222
MONITOR_PORT = 8222
ROUTE_PORT = 6222
CLUSTER_NAME = "cvt"

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

STREAMS = (
    subjects.STREAM_JOBS,
    subjects.STREAM_LAUNCH,
    subjects.STREAM_EVENTS,
    *(f"KV_{b}" for b in (subjects.BUCKET_TASKS, subjects.BUCKET_JOBS, subjects.BUCKET_EFFECTS)),
)
"""The streams whose leader a test kills: the pipeline's own records and orders."""


def _conveyor(config: Path, parts: str) -> list[str]:
    cli = [sys.executable, "-m", "conveyor.app.cli"]
    return [*cli, "--config", str(config), "up", "--parts", parts]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_FAULT"}
    env.update(extra)
    return env


class NatsCluster:
    """Nodes on hosts, node i on `hosts[i]`, named `n<i>`; killable and restartable.

    Three hosts make a cluster; one host makes a single server (the baseline a bench
    compares with).
    """

    def __init__(self, hosts: Sequence[Host], tmp: Path) -> None:
        self.hosts = list(hosts)
        self.tmp = tmp
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.urls = [f"nats://{h.addr}:{CLIENT_PORT}" for h in self.hosts]
        self.url = ",".join(self.urls)
        for i, host in enumerate(self.hosts):
            routes = [f"nats://{h.addr}:{ROUTE_PORT}" for h in self.hosts if h is not host]
            (self._dir(i)).mkdir(parents=True, exist_ok=True)
            self._config(i).write_text(
                f'data_dir = "{self._dir(i) / "data"}"\n'
                "[nats]\n"
                f'host = "{host.addr}"\n'
                f"port = {CLIENT_PORT}\n"
                f"monitor_port = {MONITOR_PORT}\n"
            )
            if len(self.hosts) == 1:
                continue
            with self._config(i).open("a") as config:
                config.write(
                    "[nats.cluster]\n"
                    f'name = "{CLUSTER_NAME}"\n'
                    f'node_name = "n{i}"\n'
                    f'listen = "{host.addr}:{ROUTE_PORT}"\n'
                    f"routes = {json.dumps(routes)}\n"
                    "ready_timeout_s = 60.0\n"
                )

    def _dir(self, i: int) -> Path:
        return self.tmp / f"n{i}"

    def _config(self, i: int) -> Path:
        return self._dir(i) / "config.toml"

    def start(self, *indexes: int) -> None:
        """Start nodes (all by default) and wait until each answers plain `/healthz`."""
        chosen = indexes or tuple(range(len(self.hosts)))
        for i in chosen:
            self.procs[i] = self.hosts[i].popen(
                _conveyor(self._config(i), "nats"), _env(), log=self._dir(i) / "node.log"
            )
        for i in chosen:
            wait_until(lambda i=i: self.healthy(i), what=f"node n{i} healthy", deadline_s=60)

    def healthy(self, i: int) -> bool:
        """Plain `/healthz` of node i: 200 once a meta leader exists (scale-out.md)."""
        try:
            with _http.open(f"http://{self.hosts[i].addr}:{MONITOR_PORT}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def server_pid(self, i: int) -> int:
        """Pid of node i's nats-server (the child of `conveyor up --parts nats`)."""
        return int((self._dir(i) / "data" / "nats" / "nats-server.pid").read_text().strip())

    def kill(self, i: int) -> None:
        """kill -9 node i: its nats-server first (a crash, not a clean stop), then its parent."""
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
            os.kill(self.server_pid(i), signal.SIGKILL)
        proc = self.procs.pop(i)
        proc.kill()
        proc.wait(timeout=10)

    def leaders(self, bus: Bus, streams: Sequence[str] = STREAMS) -> dict[str, int]:
        """Which node leads each of `streams` now (index into `hosts`)."""

        async def _leaders() -> dict[str, int]:
            found: dict[str, int] = {}
            for name in streams:
                info = await bus.js.stream_info(name)
                leader = info.cluster.leader if info.cluster else None
                if leader:
                    found[name] = int(leader.removeprefix("n"))
            return found

        result: dict[str, int] = bus.call(_leaders(), timeout_s=20)
        return result

    def busiest_leader(self, bus: Bus) -> int:
        """The node leading the most of the pipeline's streams."""
        led = list(self.leaders(bus).values())
        return max(set(led), key=led.count)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-2000:] for p in self.tmp.glob("n*/node.log")
        )


class Conveyors:
    """Conveyor control / launcher / gateway processes on test hosts, one shared config.

    The data directory is shared (the local forge on a shared disk is acceptable here);
    each process reaches NATS through all three nodes, every stream R3.
    """

    def __init__(self, cluster: NatsCluster, tmp: Path, extra_toml: str = "") -> None:
        self.cluster = cluster
        self.tmp = tmp
        self.data = tmp / "data"
        self.config = tmp / "config.toml"
        tmp.mkdir(parents=True, exist_ok=True)
        text = CONFIG.format(data=self.data, url="").replace(
            "[nats]\n",
            f"[nats]\nreplicas = {1 if len(cluster.urls) == 1 else 3}\n"
            f"servers = {json.dumps(cluster.urls)}\n"
            # Write retries outlast an election; a dead node's client is noticed soon.
            "write_retry_s = 30.0\n",
        )
        self.config.write_text(text + extra_toml)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, parts: str, host: Host, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Run `conveyor up --parts <parts>` on `host`; its log is `<tmp>/<name>.log`."""
        proc = host.popen(
            _conveyor(self.config, parts),
            # Items of one repository side by side: several are in flight when a node dies.
            _env(CONVEYOR_QUEUE__PER_REPO_CONCURRENCY="4", **(env or {})),
            log=self.tmp / f"{name}.log",
            cwd=self.tmp,
        )
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        own = "\n".join(p.read_text(errors="replace")[-3000:] for p in self.tmp.glob("*.log"))
        return own + "\n" + self.cluster.logs()

    def forge_effects(self) -> list[str]:
        """Lines of the local forge's effect log (one per PR opened, merged, ...)."""
        path = self.data / "forge" / "effects.jsonl"
        return path.read_text().splitlines() if path.exists() else []
