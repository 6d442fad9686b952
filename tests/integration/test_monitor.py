"""PostDeployMonitor on a real nats-server against a real HTTP service that can break.

Each test plays the control process: a Bus, the monitor's durable consumer on
CONVEYOR_NOTIFY and a Ticker. A "restart" closes that bus and actor and starts
new ones on the same KV, as a restarted control process would.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from actors import monitor_policy
from actors.monitor import LOG_NAME, ROLLBACK_LOG, MonitorStatus, PostDeployMonitor
from actors.monitor_commit import NO_BRANCH, LogCommitter, log_path
from actors.monitor_policy import ALERT, DEGRADED, ROLLBACK, Watch
from bus import subjects
from bus.bridge import Bus, Store
from bus.effects import Effect, Ledger, effect_key
from bus.messages import Alert, BusMessage, StageChanged
from conveyor.app.node import Ticker
from conveyor.clock import SystemClock, iso
from conveyor.config import Config
from gateways import git
from gateways.local_forge import LocalForge
from tests.harness import make_config, wait_until

DEADLINE_S = 30.0


class Service:
    """A tiny health endpoint: `mode` is "ok" (200), "500", or "down" (no answer)."""

    def __init__(self) -> None:
        self.mode = "ok"
        owner = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if owner.mode == "down":
                    # Hang up without an answer: the client sees a dropped connection.
                    self.close_connection = True
                    return
                code = 200 if owner.mode == "ok" else 500
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


ROLLBACK_SCRIPT = """\
import pathlib, sys, time
out = pathlib.Path(sys.argv[1])
with out.open("a") as f:
    f.write(sys.argv[2] + " " + sys.argv[3] + "\\n")
hold = pathlib.Path(sys.argv[4])
deadline = time.monotonic() + 30
while hold.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


class Control:
    """One control process's monitor: its own bus, consumer, ticker and actor."""

    def __init__(
        self,
        nats_url: str,
        cfg: Config,
        *,
        record: Callable[[str, str], None] | None = None,
        committer: LogCommitter | None = None,
    ) -> None:
        self.clock = SystemClock()
        self.bus = Bus.connect(nats_url)
        self.bus.setup()
        self.store: Store[Watch] = self.bus.store(subjects.BUCKET_MONITOR, Watch)
        effects = Ledger(self.bus.store(subjects.BUCKET_EFFECTS, Effect), self.clock, "monitor")
        self.ref = PostDeployMonitor.start(
            self.bus,
            self.store,
            effects,
            self.clock,
            cfg,
            data_dir=cfg.data_path,
            record=record,
            committer=committer,
        )
        self.bus.consume(
            subjects.STREAM_NOTIFY,
            subjects.CONSUMER_MONITOR,
            [subjects.STAGE_ALL],
            msgspec.json.Decoder(BusMessage),
            self.ref.tell,
        )
        self.ticker = Ticker(0.05, self.clock)
        self.ticker.add(self.ref)
        self.ticker.start()

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.ref.ask(MonitorStatus(), timeout=10)
        return answer

    def watch(self, task_id: str) -> Watch | None:
        entry = self.store.get(task_id)
        return entry.value if entry is not None else None

    def stop(self) -> None:
        self.ticker.stop()
        if self.ref.is_alive():
            self.ref.stop(block=True, timeout=10)
        self.bus.close()


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service()
    yield svc
    svc.close()


@pytest.fixture
def rollbacks(tmp_path: Path) -> Path:
    return tmp_path / "rollbacks.txt"


@pytest.fixture
def hold(tmp_path: Path) -> Path:
    """While this file exists the rollback script waits (to stop the monitor mid-rollback)."""
    return tmp_path / "hold"


@pytest.fixture
def make_cfg(
    tmp_path: Path, nats_url: str, service: Service, rollbacks: Path, hold: Path
) -> Callable[..., Config]:
    script = tmp_path / "rollback.py"
    script.write_text(ROLLBACK_SCRIPT)
    command = ["{python}", str(script), str(rollbacks), "{work_item}", "{repo}", str(hold)]

    def _make(**monitor: Any) -> Config:
        return make_config(
            tmp_path / "data",
            nats_url,
            monitor={
                "window_s": 2.0,
                "interval_s": 0.1,
                "fail_threshold": 3,
                "error_ratio": 0.5,
                "min_checks": 4,
                "probe_timeout_s": 1.0,
                "rollback_timeout_s": 20.0,
                **monitor,
            },
            repos=[
                {
                    "name": "shop",
                    "prefix": "SHOP",
                    "health_url": service.url,
                    "rollback_command": command,
                },
                {
                    "name": "vault",
                    "prefix": "VAULT",
                    "protected": True,
                    "health_url": service.url,
                    "rollback_command": command,
                },
                {"name": "plain", "prefix": "PLAIN"},
            ],
        )

    return _make


@pytest.fixture
def controls(nats_url: str) -> Iterator[Callable[..., Control]]:
    made: list[Control] = []

    def _start(cfg: Config, **kw: Any) -> Control:
        control = Control(nats_url, cfg, **kw)
        made.append(control)
        return control

    yield _start
    for control in made:
        control.stop()


@pytest.fixture
def kv(nats_url: str) -> Iterator[Store[Watch]]:
    """The watches as another process sees them (to read or seed them between monitors)."""
    bus = Bus.connect(nats_url)
    bus.setup()
    yield bus.store(subjects.BUCKET_MONITOR, Watch)
    bus.close()


@pytest.fixture
def alerts(nats_url: str) -> Iterator[list[Alert]]:
    bus = Bus.connect(nats_url)
    seen: list[Alert] = []
    bus.subscribe_core(subjects.ALERTS, msgspec.json.Decoder(Alert), seen.append)
    yield seen
    bus.close()


def publish_done(control: Control, task_id: str, repo: str, *, msg_id: str = "") -> None:
    event = StageChanged(
        task_id=task_id,
        repo=repo,
        old="deploy",
        new="done",
        cause="deployed",
        revision=7,
        at=control.clock.now(),
    )
    control.bus.publish(
        subjects.stage_changed(task_id), event, msg_id=msg_id or f"stage:{task_id}:done"
    )


def front_matter(cfg: Config, task_id: str) -> dict[str, Any]:
    text = (cfg.data_path / "monitor" / task_id / LOG_NAME).read_text()
    head = text.split("---\n")[1]
    loaded: dict[str, Any] = yaml.safe_load(head)
    return loaded


def log_written(cfg: Config, task_id: str) -> bool:
    return (cfg.data_path / "monitor" / task_id / LOG_NAME).exists()


def closed(control: Control, task_id: str) -> Watch | None:
    watch = control.watch(task_id)
    return watch if watch is not None and watch.closed else None


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_healthy_window_logs_healthy_and_rolls_nothing_back(
    make_cfg: Callable[..., Config], controls: Callable[..., Control], rollbacks: Path, alerts: Any
) -> None:
    # Given a healthy service and a monitor
    cfg = make_cfg(window_s=1.0)
    control = controls(cfg)

    # When a shop task reaches done and its window runs out
    publish_done(control, "SHOP-1", "shop")
    watch = wait_until(lambda: closed(control, "SHOP-1"), deadline_s=DEADLINE_S, what="close")

    # Then HEALTHY / NONE, logged, with an info alert and no rollback
    assert (watch.status, watch.action) == ("HEALTHY", "NONE")
    fm = front_matter(cfg, "SHOP-1")
    assert fm["post_deploy_status"] == "HEALTHY"
    assert fm["action"] == "NONE"
    assert fm["window_s"] == 1.0
    assert fm["checks_total"] == watch.checks > 0
    assert fm["checks_failed"] == 0
    assert fm["health_url"].endswith("/health")
    assert fm["work_item"] == "SHOP-1"
    assert "rollback_exit_code" not in fm
    assert lines(rollbacks) == []
    wait_until(
        lambda: [a for a in alerts if a.task_id == "SHOP-1" and a.level == "info"],
        deadline_s=DEADLINE_S,
        what="healthy alert",
    )
    assert control.status()["HEALTHY"] == 1


def test_a_service_broken_after_done_is_rolled_back_exactly_once(
    make_cfg: Callable[..., Config],
    controls: Callable[..., Control],
    service: Service,
    rollbacks: Path,
    alerts: list[Alert],
) -> None:
    # Given a service answering 500 after the deploy
    recorded: list[tuple[str, str]] = []
    cfg = make_cfg()
    control = controls(cfg, record=lambda t, c: recorded.append((t, c)))
    service.mode = "500"

    # When the task reaches done
    publish_done(control, "SHOP-2", "shop")
    watch = wait_until(lambda: closed(control, "SHOP-2"), deadline_s=DEADLINE_S, what="close")

    # Then DEGRADED / ROLLBACK: the rollback ran once with the placeholders filled in
    assert (watch.status, watch.action) == (DEGRADED, ROLLBACK)
    assert lines(rollbacks) == ["SHOP-2 shop"]
    fm = front_matter(cfg, "SHOP-2")
    assert fm["post_deploy_status"] == "DEGRADED"
    assert fm["action"] == "ROLLBACK"
    assert fm["rollback_exit_code"] == 0
    assert fm["server_errors"] == fm["checks_failed"] == 3
    assert (cfg.data_path / "monitor" / "SHOP-2" / "rollback.log").exists()
    assert recorded
    assert recorded[0][0] == "SHOP-2"
    assert "DEGRADED" in recorded[0][1]
    wait_until(
        lambda: [a for a in alerts if a.task_id == "SHOP-2" and a.level == "error"],
        deadline_s=DEADLINE_S,
        what="error alert",
    )
    assert all(a.source == "monitor" for a in alerts)

    # And ticks until the window's end change nothing: the verdict is final
    revision = control.status()["watches"][0]["revision"]
    wait_until(lambda: control.clock.now() > watch.ends_at, what="window end")
    assert control.status()["watches"][0]["revision"] == revision
    assert lines(rollbacks) == ["SHOP-2 shop"]


def test_a_protected_repository_that_breaks_gets_an_alert_and_no_rollback(
    make_cfg: Callable[..., Config],
    controls: Callable[..., Control],
    service: Service,
    rollbacks: Path,
    alerts: list[Alert],
) -> None:
    cfg = make_cfg()
    control = controls(cfg)
    service.mode = "500"

    publish_done(control, "VAULT-1", "vault")
    watch = wait_until(lambda: closed(control, "VAULT-1"), deadline_s=DEADLINE_S, what="close")

    assert (watch.status, watch.action) == (DEGRADED, "ALERT")
    fm = front_matter(cfg, "VAULT-1")
    assert (fm["post_deploy_status"], fm["action"]) == ("DEGRADED", "ALERT")
    assert lines(rollbacks) == []
    alert = wait_until(
        lambda: [a for a in alerts if a.task_id == "VAULT-1" and a.level == "error"],
        deadline_s=DEADLINE_S,
        what="error alert",
    )[0]
    assert "protected" in alert.text


def test_a_service_that_does_not_answer_is_uncertain_and_never_rolled_back(
    make_cfg: Callable[..., Config],
    controls: Callable[..., Control],
    service: Service,
    rollbacks: Path,
) -> None:
    cfg = make_cfg(window_s=1.0)
    control = controls(cfg)
    service.mode = "down"

    publish_done(control, "SHOP-3", "shop")
    watch = wait_until(lambda: closed(control, "SHOP-3"), deadline_s=DEADLINE_S, what="close")

    assert (watch.status, watch.action) == ("HEALTHY", "NONE")
    assert watch.uncertain == watch.checks > 0
    assert lines(rollbacks) == []


def test_a_restarted_monitor_resumes_the_window_and_keeps_its_end(
    make_cfg: Callable[..., Config], controls: Callable[..., Control], kv: Store[Watch]
) -> None:
    # Given a watch with some probes counted
    cfg = make_cfg(window_s=3.0)
    first = controls(cfg)
    publish_done(first, "SHOP-4", "shop")
    before = wait_until(
        lambda: (w := first.watch("SHOP-4")) is not None and w.checks >= 3 and w,
        deadline_s=DEADLINE_S,
        what="probes",
    )

    # When the control process stops mid-window and another one starts
    first.stop()
    entry = kv.get("SHOP-4")
    assert entry is not None
    during = entry.value
    second = controls(cfg)

    # Then the window goes on with the same end, counts continue, and it ends healthy
    after = wait_until(lambda: closed(second, "SHOP-4"), deadline_s=DEADLINE_S, what="close")
    assert after.ends_at == before.ends_at == during.ends_at
    assert after.started_at == before.started_at
    assert after.checks > during.checks
    assert after.status == "HEALTHY"


def test_a_verdict_stored_before_a_crash_is_acted_on_once_after_restart(
    make_cfg: Callable[..., Config],
    kv: Store[Watch],
    controls: Callable[..., Control],
    service: Service,
    rollbacks: Path,
) -> None:
    # Given a DEGRADED/ROLLBACK verdict stored, and the process dead before the rollback
    cfg = make_cfg(window_s=60.0)
    now = SystemClock().now()
    decided = Watch(
        task_id="SHOP-5",
        repo="shop",
        health_url=service.url,
        protected=False,
        has_rollback=True,
        started_at=now - 5,
        ends_at=now + 55,
        window_s=60.0,
        checks=3,
        failures=3,
        server_errors=3,
        consecutive_failures=3,
        status=DEGRADED,
        action=ROLLBACK,
        decided_at=now - 1,
        reason="3 consecutive failed probes (fail_threshold 3)",
    )
    kv.create("SHOP-5", decided)

    # When a monitor starts
    second = controls(cfg)

    # Then it rolls back once and closes
    watch = wait_until(lambda: closed(second, "SHOP-5"), deadline_s=DEADLINE_S, what="close")
    assert watch.rollback_result == "0"
    assert lines(rollbacks) == ["SHOP-5 shop"]
    assert front_matter(cfg, "SHOP-5")["rollback_exit_code"] == 0

    # And another restart does it no more
    second.stop()
    third = controls(cfg)
    assert third.status()["DEGRADED"] == 1
    assert lines(rollbacks) == ["SHOP-5 shop"]


def test_a_monitor_stopped_during_the_rollback_never_runs_it_again(
    make_cfg: Callable[..., Config],
    controls: Callable[..., Control],
    service: Service,
    rollbacks: Path,
    hold: Path,
) -> None:
    # Given a rollback that is running (held) when the control process stops
    cfg = make_cfg(window_s=60.0)
    hold.touch()
    first = controls(cfg)
    service.mode = "500"
    publish_done(first, "SHOP-6", "shop")
    wait_until(lambda: lines(rollbacks), deadline_s=DEADLINE_S, what="rollback started")
    decided = first.watch("SHOP-6")
    assert decided is not None
    assert decided.status == DEGRADED
    assert not decided.closed
    first.stop()

    # When a new monitor starts while the old rollback still runs, and then it ends
    second = controls(cfg)
    hold.unlink()

    # Then the watch closes on the first run's outcome, and the command ran once
    watch = wait_until(lambda: closed(second, "SHOP-6"), deadline_s=DEADLINE_S, what="close")
    assert watch.rollback_result in ("0", "interrupted")
    assert lines(rollbacks) == ["SHOP-6 shop"]


def test_the_same_done_delivered_twice_makes_one_watch(
    make_cfg: Callable[..., Config], controls: Callable[..., Control]
) -> None:
    cfg = make_cfg(window_s=30.0)
    control = controls(cfg)
    publish_done(control, "SHOP-7", "shop", msg_id="a")
    first = wait_until(lambda: control.watch("SHOP-7"), deadline_s=DEADLINE_S, what="watch")

    # A second done (another message id, later stamp) is acked, and the window stays
    publish_done(control, "SHOP-7", "shop", msg_id="b")
    wait_until(lambda: _consumer_idle(control), deadline_s=DEADLINE_S, what="both deliveries acked")
    status = control.status()
    assert status["watching"] == 1
    assert len(status["watches"]) == 1
    again = control.watch("SHOP-7")
    assert again is not None
    assert (again.started_at, again.ends_at) == (first.started_at, first.ends_at)


def test_no_watch_for_a_repository_without_health_url_or_when_disabled(
    make_cfg: Callable[..., Config], controls: Callable[..., Control]
) -> None:
    control = controls(make_cfg())
    publish_done(control, "PLAIN-1", "plain")
    wait_until(lambda: _consumer_idle(control), deadline_s=DEADLINE_S, what="acked")
    assert control.watch("PLAIN-1") is None
    control.stop()

    off = controls(make_cfg(enabled=False))
    publish_done(off, "SHOP-8", "shop")
    wait_until(lambda: _consumer_idle(off), deadline_s=DEADLINE_S, what="acked")
    assert off.watch("SHOP-8") is None
    assert off.status()["enabled"] is False


def _consumer_idle(control: Control) -> bool:
    """Every stage change was delivered to the monitor and acked."""

    async def _info() -> Any:
        return await control.bus.js.consumer_info(subjects.STREAM_NOTIFY, subjects.CONSUMER_MONITOR)

    info = control.bus.call(_info())
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def test_a_service_nobody_listens_for_is_degraded_and_rolled_back(
    make_cfg: Callable[..., Config],
    controls: Callable[..., Control],
    service: Service,
    rollbacks: Path,
) -> None:
    # Given production whose process is gone: connections are refused
    cfg = make_cfg(window_s=30.0, fail_threshold=2)
    control = controls(cfg)
    service.close()

    publish_done(control, "SHOP-9", "shop")
    watch = wait_until(lambda: closed(control, "SHOP-9"), deadline_s=DEADLINE_S, what="close")

    assert (watch.status, watch.action) == ("DEGRADED", "ROLLBACK")
    assert len(lines(rollbacks)) == 1


# --- the log in the repository ---------------------------------------------------------------

BRANCHES = {"SHOP-7": "feature/SHOP-7-ship", "SHOP-8": "feature/SHOP-8-ship"}


@pytest.fixture
def forge(tmp_path: Path) -> LocalForge:
    """A local forge whose `shop` has the two tasks' branches, as after their merge."""
    forge = LocalForge(tmp_path / "forge", {})
    forge.create_repo("shop", initial_files={"README.md": b"shop\n"})
    for branch in BRANCHES.values():
        git.run_git(["branch", branch, "main"], git_dir=forge.repo_path("shop"))
    return forge


def committer_of(forge: LocalForge) -> LogCommitter:
    return LogCommitter(forge, BRANCHES.get)


def log_commits(forge: LocalForge, task_id: str) -> list[str]:
    """The commits on the task's branch that touched its committed log, newest first."""
    out = git.run_git(
        ["log", "--format=%H", BRANCHES[task_id], "--", log_path(task_id, LOG_NAME)],
        git_dir=forge.repo_path("shop"),
    )
    return out.split()


def test_the_log_is_committed_to_the_task_branch_once_across_restarts(
    make_cfg: Callable[..., Config], controls: Callable[..., Control], forge: LocalForge
) -> None:
    # Given a monitor that commits its logs to the tasks' branches
    cfg = make_cfg(window_s=1.0)
    control = controls(cfg, committer=committer_of(forge))

    # When a shop task's window ends healthy
    publish_done(control, "SHOP-7", "shop")
    watch = wait_until(lambda: closed(control, "SHOP-7"), deadline_s=DEADLINE_S, what="close")

    # Then the log is in the work item's directory at the head of its branch, with the
    # reference's `action_taken`, in one commit
    head = forge.branch_head("shop", BRANCHES["SHOP-7"])
    assert watch.log_commit == head
    committed = forge.read_file("shop", BRANCHES["SHOP-7"], log_path("SHOP-7", LOG_NAME))
    assert committed is not None
    assert committed.decode() == (cfg.data_path / "monitor" / "SHOP-7" / LOG_NAME).read_text()
    fm = yaml.safe_load(committed.decode().split("---\n")[1])
    assert (fm["post_deploy_status"], fm["action_taken"], fm["action"]) == (
        "HEALTHY",
        "NONE",
        "NONE",
    )
    assert log_commits(forge, "SHOP-7") == [head]
    assert forge.branch_head("shop", "main") != head  # main is never pushed

    # And a restarted monitor commits nothing more
    control.stop()
    again = controls(cfg, committer=committer_of(forge))
    assert again.status()["HEALTHY"] == 1
    assert again.watch("SHOP-7") == watch
    assert log_commits(forge, "SHOP-7") == [head]


def test_a_log_commit_a_crash_interrupted_is_adopted_not_repeated(
    make_cfg: Callable[..., Config],
    kv: Store[Watch],
    controls: Callable[..., Control],
    service: Service,
    forge: LocalForge,
    nats_url: str,
) -> None:
    # Given a decided watch whose log was pushed, and the process dead before the
    # ledger recorded the commit done
    cfg = make_cfg(window_s=60.0)
    now = SystemClock().now()
    decided = Watch(
        task_id="SHOP-8",
        repo="shop",
        health_url=service.url,
        protected=False,
        has_rollback=False,
        started_at=now - 5,
        ends_at=now + 55,
        window_s=60.0,
        checks=3,
        failures=3,
        consecutive_failures=3,
        status=DEGRADED,
        action=ALERT,
        decided_at=now - 1,
        reason="3 consecutive failed probes (fail_threshold 3)",
    )
    kv.create("SHOP-8", decided)
    text = monitor_policy.log_text(
        decided,
        window_started=iso(decided.started_at),
        window_ended=iso(now - 1),
        rollback_log=ROLLBACK_LOG,
    )
    committer_of(forge).commit("SHOP-8", "shop", LOG_NAME, text.encode(), cfg.data_path / "x")
    pushed = log_commits(forge, "SHOP-8")
    bus = Bus.connect(nats_url)
    ledger = bus.store(subjects.BUCKET_EFFECTS, Effect)
    key = effect_key("monitor", "SHOP-8", "log")
    ledger.create(key, Effect(key=key, status="started", started_at=now, by="monitor"))
    bus.close()

    # When a monitor starts
    control = controls(cfg, committer=committer_of(forge))

    # Then it finds the pushed log, adopts it and closes, with no second commit
    watch = wait_until(lambda: closed(control, "SHOP-8"), deadline_s=DEADLINE_S, what="close")
    assert len(pushed) == 1
    assert watch.log_commit == pushed[0]
    assert log_commits(forge, "SHOP-8") == pushed


def test_a_task_without_a_branch_closes_with_its_log_on_disk_only(
    make_cfg: Callable[..., Config], controls: Callable[..., Control], forge: LocalForge
) -> None:
    cfg = make_cfg(window_s=0.5)
    control = controls(cfg, committer=committer_of(forge))

    publish_done(control, "SHOP-9", "shop")  # no branch known for SHOP-9

    watch = wait_until(lambda: closed(control, "SHOP-9"), deadline_s=DEADLINE_S, what="close")
    assert watch.log_commit == NO_BRANCH
    assert log_written(cfg, "SHOP-9")
