"""EmbeddedNats against a real nats-server: readiness, durability, orphans, parent death."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import nats
import psutil
import pytest

from bus import server as server_module
from bus.server import EmbeddedNats, NatsServerError
from conveyor.clock import SystemClock

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOCK = SystemClock()


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll `predicate` until it holds; fail after `timeout_s`."""
    deadline = CLOCK.monotonic() + timeout_s
    while not predicate():
        if CLOCK.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        CLOCK.sleep(0.02)


def pid_gone(pid: int) -> bool:
    """True when `pid` no longer runs; a zombie counts as gone (init may reap it late)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_if_nats_server(pid: int) -> None:
    """Cleanup for tests that leave a server behind on failure; never kills a reused pid."""
    try:
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE and "nats-server" in proc.name():
            proc.kill()
    except psutil.Error:
        pass


async def publish_acked(url: str, stream: str, count: int) -> None:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        for i in range(count):
            ack = await js.publish(f"{stream.lower()}.msg", f"m{i}".encode())
            assert ack.stream == stream
            assert ack.seq == i + 1
    finally:
        await nc.close()


async def stream_messages(url: str, stream: str) -> int:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


def http_json(url: str) -> dict[str, object]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=2) as resp:
        body = json.loads(resp.read())
    assert isinstance(body, dict)
    return body


def test_starts_and_is_reachable(nats_server: EmbeddedNats, nats_url: str) -> None:
    assert nats_url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.pid is not None
    assert nats_server.pid_file.read_text().strip() == str(nats_server.pid)
    asyncio.run(publish_acked(nats_url, "SMOKE", 3))
    assert asyncio.run(stream_messages(nats_url, "SMOKE")) == 3


def test_config_fsyncs_every_write(nats_server: EmbeddedNats) -> None:
    conf = nats_server.conf_file.read_text()
    assert "sync_interval: always" in conf
    assert 'server_name: "conveyor"' in conf
    jetstream = http_json(f"{nats_server.monitor_url}/varz")["jetstream"]
    assert isinstance(jetstream, dict)
    assert jetstream["config"]["sync_always"] is True


def test_acked_messages_survive_sigkill(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    first = EmbeddedNats(store)
    first.start()
    old_pid = first.pid
    assert old_pid is not None
    try:
        asyncio.run(publish_acked(first.url, "DURABLE", 100))
    finally:
        first.kill()
    assert pid_gone(old_pid)
    assert first.pid is None
    with EmbeddedNats(store) as second:
        assert asyncio.run(stream_messages(second.url, "DURABLE")) == 100


def test_restart_of_same_object_keeps_url(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    with server:
        url = server.url
        asyncio.run(publish_acked(url, "AGAIN", 5))
        server.kill()
        server.start()
        assert server.url == url
        assert asyncio.run(stream_messages(url, "AGAIN")) == 5


def test_orphan_of_forgotten_server_is_terminated(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    forgotten = EmbeddedNats(store)
    forgotten.start()
    orphan_pid = forgotten.pid
    assert orphan_pid is not None
    del forgotten  # a crashed run never calls stop()
    with EmbeddedNats(store) as fresh:
        assert pid_gone(orphan_pid)
        assert fresh.pid != orphan_pid
        assert fresh.pid_file.read_text().strip() == str(fresh.pid)
        asyncio.run(publish_acked(fresh.url, "FRESH", 1))


def test_orphan_without_pid_file_is_found_and_terminated(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    forgotten = EmbeddedNats(store)
    forgotten.start()
    orphan_pid = forgotten.pid
    assert orphan_pid is not None
    forgotten.pid_file.unlink()  # crash between spawn and pid-file write
    with EmbeddedNats(store) as fresh:
        assert pid_gone(orphan_pid)
        asyncio.run(publish_acked(fresh.url, "FRESH", 1))


def test_stale_pid_file_of_unrelated_process_is_left_alone(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    store.mkdir()
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        (store / "nats-server.pid").write_text(f"{bystander.pid}\n")
        with EmbeddedNats(store) as server:
            assert bystander.poll() is None
            assert server.pid_file.read_text().strip() == str(server.pid)
    finally:
        bystander.kill()
        bystander.wait()


def test_server_dies_when_parent_is_sigkilled(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from bus.server import EmbeddedNats

        server = EmbeddedNats(Path(sys.argv[1]))
        server.start()
        print(server.pid, flush=True)
        sys.stdin.read()  # block until killed
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "nats")],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server_pid = 0
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), (
            f"helper failed: {line!r} {parent.stderr and parent.stderr.read()}"
        )
        server_pid = int(line)
        assert not pid_gone(server_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        wait_until(lambda: pid_gone(server_pid), timeout_s=15, what="orphaned nats-server to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if server_pid:
            kill_if_nats_server(server_pid)


def test_start_from_short_lived_thread_survives_thread_exit(tmp_path: Path) -> None:
    # PDEATHSIG follows the forking thread; the server must outlive the thread that started it.
    server = EmbeddedNats(tmp_path / "nats")
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join(timeout=30)
    try:
        assert server.pid is not None
        asyncio.run(publish_acked(server.url, "THREAD", 3))
        assert server.running
    finally:
        server.stop()


def test_stop_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.stop()  # never started
    server.start()
    pid = server.pid
    assert pid is not None
    server.stop()
    assert pid_gone(pid)
    assert not server.pid_file.exists()
    server.stop()
    server.kill()
    assert server.pid is None


def test_kill_leaves_pid_file_like_a_crash(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    pid = server.pid
    server.kill()
    assert server.pid_file.read_text().strip() == str(pid)
    server.stop()  # stop after kill does not fail


def test_clear_error_when_client_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedNats(tmp_path / "nats", port=port)
        with pytest.raises(
            NatsServerError, match=f"client port 127.0.0.1:{port} is already in use"
        ):
            server.start()
        assert server.pid is None


def test_clear_error_when_port_is_taken_by_another_server(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    other = EmbeddedNats(tmp_path / "other", monitor_port=nats_server.monitor_port)
    with pytest.raises(NatsServerError, match=r"monitoring port .* is already in use"):
        other.start()
    assert nats_server.running


def test_clear_error_when_binary_is_missing(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", binary=tmp_path / "no-such-nats-server")
    with pytest.raises(NatsServerError, match="binary not found"):
        server.start()


def test_early_exit_error_carries_log_tail(tmp_path: Path) -> None:
    # nats-server refuses a max_payload above max_pending (64 MiB) and exits at once.
    server = EmbeddedNats(tmp_path / "nats", max_payload=128 * 1024 * 1024)
    with pytest.raises(NatsServerError, match=r"exited with code 1(.|\n)*max_payload"):
        server.start()
    assert server.pid is None
    assert not server.pid_file.exists()


def test_start_twice_is_an_error(nats_server: EmbeddedNats) -> None:
    with pytest.raises(NatsServerError, match="already running"):
        nats_server.start()


@pytest.mark.parametrize("server_binds_first", [False, True])
def test_a_picked_port_taken_before_the_bind_is_picked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_binds_first: bool
) -> None:
    # Given a free port that is taken right after it was picked (here: at once), found
    # by the pre-check or only by nats-server's own bind
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = iter([port])
        real_pick = server_module.free_port
        monkeypatch.setattr(
            server_module, "free_port", lambda host: next(picks, None) or real_pick(host)
        )
        if server_binds_first:
            monkeypatch.setattr(server_module, "_ensure_port_free", lambda *_args: None)
        server = EmbeddedNats(tmp_path / "nats")
        # When it starts
        server.start()
        try:
            # Then it runs on another port it picked
            assert server.running
            assert server.port != port
        finally:
            server.stop()


def test_a_restart_keeps_its_port_even_when_it_is_taken(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    port = server.port
    server.stop()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(
            NatsServerError, match=f"client port 127.0.0.1:{port} is already in use"
        ):
            server.start()
    assert server.port == port
