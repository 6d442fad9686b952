"""Test hosts: Linux network namespaces on one bridge, each its own address.

Each `Host` is a namespace with a veth pair whose outer end sits on a bridge of this
`Network`; the bridge itself has an address too, so the test process (outside every
namespace) reaches every host. Commands run inside with `ip netns exec`, which execs
the program in place: a `Popen` pid is the program's own, so kill -9 hits it. `cut()`
takes the host's link down (packets vanish, no reset, as a pulled cable) and
`restore()` brings it back.

Names carry this process's pid and a random token: a crashed run's leftovers never
collide with a new run, and the next run removes the namespaces and bridges of runs
whose process is gone. Needs root and `ip`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

PREFIX = "cvt"
"""Every namespace of these fixtures is named `cvt-<pid>-<token>-<i>`."""
_NS_RE = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]+)-\d+$")
_BRIDGE_ALIAS_RE = re.compile(rf"{PREFIX}-(\d+)-([0-9a-f]+)")


def unavailable() -> str:
    """Why these hosts cannot be made here, or "" when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


class Host:
    """One namespace: an address on the bridge, processes run inside, a link to cut."""

    def __init__(self, network: Network, index: int) -> None:
        self.network = network
        self.index = index
        self.ns = f"{network.name}-{index}"
        self.addr = f"{network.subnet}.{index + 1}"
        # Interface names are at most 15 characters: the token keeps them unique.
        self.veth = f"cv{network.token}h{index}"
        self._peer = f"cv{network.token}p{index}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def _create(self) -> None:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", self._peer)
        _ip("link", "set", self._peer, "netns", self.ns)
        _ip("link", "set", self.veth, "master", self.network.bridge, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.addr}/24", "dev", self._peer)
        _ip("-n", self.ns, "link", "set", self._peer, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")

    def popen(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` inside this host; output goes to `log` (appended) or nowhere."""
        out: IO[bytes] | int = log.open("ab") if log is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside this host to its end."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True, timeout=30
        )

    def cut(self) -> None:
        """Pull the cable: nothing reaches the host or leaves it until `restore()`."""
        _ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        """Plug the cable back in."""
        _ip("link", "set", self.veth, "up")

    def kill_all(self) -> None:
        """SIGKILL every process in this namespace (ours and what they started)."""
        found = _ip("netns", "pids", self.ns, check=False).stdout.split()
        for pid in [*found, *(str(p.pid) for p in self.procs)]:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def __repr__(self) -> str:
        return f"Host({self.ns}, {self.addr})"


class Network:
    """A bridge and the hosts on it; `destroy()` removes all of it."""

    def __init__(self) -> None:
        sweep()
        self.token = secrets.token_hex(3)
        self.name = f"{PREFIX}-{os.getpid()}-{self.token}"
        self.bridge = f"cvb{self.token}"
        # 10.2xx.yyy.0/24 from the token: another run's network is another subnet.
        raw = int(self.token, 16)
        self.subnet = f"10.{200 + raw % 50}.{(raw >> 8) % 256}"
        self.gateway = f"{self.subnet}.254"
        self.hosts: list[Host] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", "dev", self.bridge, "alias", self.name)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self) -> Host:
        """One more host on the bridge, with the next address."""
        host = Host(self, len(self.hosts))
        self.hosts.append(host)
        host._create()
        return host

    def hosts_n(self, n: int) -> list[Host]:
        """`n` new hosts."""
        return [self.add_host() for _ in range(n)]

    def destroy(self) -> None:
        """Kill every process on the hosts, delete the namespaces and the bridge."""
        for host in self.hosts:
            host.kill_all()
        for host in self.hosts:
            _ip("netns", "del", host.ns, check=False)
        _ip("link", "del", self.bridge, check=False)


def sweep() -> None:
    """Remove the namespaces and bridges of earlier runs whose process is gone."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ")[0]
        match = _NS_RE.match(name)
        if match and not psutil.pid_exists(int(match.group(1))):
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        parts = line.split(":")
        alias = _BRIDGE_ALIAS_RE.search(line.split("alias")[-1]) if "alias" in line else None
        if len(parts) > 1 and alias and not psutil.pid_exists(int(alias.group(1))):
            _ip("link", "del", parts[1].strip().split("@")[0], check=False)
