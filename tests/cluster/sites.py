"""Conveyor processes on test hosts with nothing shared but NATS and the forge's URL.

Unlike `Conveyors` (one config and data directory for every process), each process
of a `Sites` has a directory of its own (`<tmp>/<name>/`: config, data, log), as on
separate machines: the forge host serves the bare repositories over HTTP, every
other process reaches them only through `forge.url` and the token.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.cluster import NatsCluster, _conveyor, _env
from tests.cluster.netns import Host
from tests.harness import CONFIG

FORGE_PORT = 8180
TOKEN = "multihost-forge-token"

_APPEND = "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + chr(10))"


def _deploys(out: Path) -> str:
    """A production deploy command that appends `<stage> <item>` to `out`.

    Every host of these tests is a namespace of one machine, so one file counts the
    deploys run by launchers on every host.
    """
    argv = json.dumps(["{python}", "-c", _APPEND, str(out), "{stage}", "{work_item}"])
    return f"deploy_command = {argv}\n"


EXTRA_REPOS = ("other", "third")
"""Repositories besides the harness's `demo`: one item in each runs side by side."""

_REPO = """
[[repos]]
name = "{name}"
prefix = "{prefix}"
template = "demo"
check_command = ["{{python}}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]
"""


@dataclass
class Site:
    """One process: its host, its directory, its process."""

    name: str
    host: Host
    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.root / "conveyor.log"


class Sites:
    """`conveyor up --parts …` processes, each on its host with its own directory."""

    def __init__(self, cluster: NatsCluster, tmp: Path, extra_toml: str, env: dict[str, str]):
        self.cluster = cluster
        self.tmp = tmp
        self.extra_toml = extra_toml
        self.env = env
        self.sites: dict[str, Site] = {}
        self.forge_url = ""
        self.deploys = tmp / "deploys.txt"

    def _config(self, root: Path, own_toml: str) -> Path:
        text = CONFIG.format(data=root / "data", url="").replace(
            "[nats]\n",
            f"[nats]\nreplicas = 3\nservers = {json.dumps(self.cluster.urls)}\n"
            "write_retry_s = 30.0\n",
        )
        # The harness's config ends inside the demo repository's table: its deploys first.
        repos = _deploys(self.deploys) + "".join(
            _REPO.format(name=name, prefix=name.upper()) + _deploys(self.deploys)
            for name in EXTRA_REPOS
        )
        path = root / "config.toml"
        path.write_text(text + repos + self.extra_toml + own_toml)
        return path

    def start_forge(self, name: str, host: Host) -> Site:
        """The forge's host: serves the bare repositories over git smart HTTP and its API."""
        self.forge_url = f"http://{host.addr}:{FORGE_PORT}"
        own = f'\n[forge]\ntoken = "{TOKEN}"\nhost = "{host.addr}"\nport = {FORGE_PORT}\n'
        return self._start(name, "forge", host, own, {})

    def start(self, name: str, parts: str, host: Host, host_id: str) -> Site:
        """A control or launcher process, reaching the forge only by URL, as `host_id`."""
        assert self.forge_url, "start the forge first"
        own = f'\n[forge]\nurl = "{self.forge_url}"\ntoken = "{TOKEN}"\n'
        ids = {"CONVEYOR_LAUNCHER__NAME": name, "CONVEYOR_LAUNCHER__HOST_ID": host_id}
        return self._start(name, parts, host, own, ids)

    def _start(self, name: str, parts: str, host: Host, own: str, env: dict[str, str]) -> Site:
        root = self.tmp / name
        root.mkdir(parents=True, exist_ok=True)
        config = self._config(root, own)
        proc = host.popen(
            _conveyor(config, parts), _env(**self.env, **env), log=root / "conveyor.log", cwd=root
        )
        site = self.sites[name] = Site(name, host, root, proc)
        return site

    def restart(self, name: str, parts: str, host_id: str) -> Site:
        """Start `name` again on its host, with its directory (a killed control comes back)."""
        old = self.sites[name]
        return self.start(name, parts, old.host, host_id)

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        """Each process by name (the shape `tests.standby_support` reads)."""
        return {name: site.proc for name, site in self.sites.items()}

    def deployed(self) -> list[str]:
        """`<stage> <item>` per deploy run, on any host."""
        return self.deploys.read_text().splitlines() if self.deploys.exists() else []

    def stop_all(self) -> None:
        procs = [s.proc for s in self.sites.values()]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        """Each site's last lines, every site's leader-lease events, the nodes' last lines."""
        own = "\n".join(
            f"--- {s.name}\n" + s.log.read_text(errors="replace")[-4000:]
            for s in self.sites.values()
            if s.log.exists()
        )
        terms = "\n".join(
            f"{s.name}: {line}"
            for s in self.sites.values()
            if s.log.exists()
            for line in s.log.read_text(errors="replace").splitlines()
            if '"event": "leader.' in line or '"event": "control.st' in line
        )
        return own + "\n--- leader lease events\n" + terms + "\n" + self.cluster.logs()

    def forge_effects(self) -> list[str]:
        """The forge's effect log: one line per PR opened, merged, status set."""
        path = self.tmp / "forge" / "data" / "forge" / "effects.jsonl"
        return path.read_text().splitlines() if path.exists() else []
