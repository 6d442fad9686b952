"""PostDeployMonitor on a real nats-server: start-up reads the open watches, not every one.

The first start over data of an older version (no `monitor.head`) walks the bucket
once and writes the checkpoint; a restart decodes only the open watches and the
watch writes since, keeps every open watch, and counts the closed ones as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors import monitor_state
from actors.monitor_policy import DEGRADED, HEALTHY, ROLLBACK, WATCHING, Watch
from actors.monitor_state import HEAD_KEY, RECENT, MonitorHead
from bus import subjects
from bus.bridge import Bus
from bus.kv import Store
from bus.messages import StageChanged
from conveyor.app import wiring
from conveyor.clock import FakeClock
from tests.actors.conftest import ActorUnderTest
from tests.harness import make_config, wait_until
from tests.kv_raw import put_many

pytestmark = pytest.mark.timeout(60)

CLOSED = 300


def _watch(number: int, now: float, *, closed: bool = False, degraded: bool = False) -> Watch:
    verdict: dict[str, Any] = {}
    if closed:
        verdict = {"status": HEALTHY, "decided_at": now - 1, "closed": True}
        if degraded:
            verdict.update(status=DEGRADED, action=ROLLBACK, rollback_result="0")
    return Watch(
        task_id=f"DEMO-{number}",
        repo="demo",
        health_url="http://127.0.0.1:9/health",
        protected=False,
        has_rollback=True,
        started_at=now - 10 + number / 1000,
        ends_at=now + 3600,
        window_s=3610.0,
        **verdict,
    )


def _start(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock, engine: pykka.ActorRef[Any]
) -> ActorUnderTest:
    cfg = make_config(
        tmp_path / "data",
        nats_url,
        monitor={"window_s": 3600.0, "interval_s": 60.0},
        repos=[
            {
                "name": "demo",
                "prefix": "DEMO",
                "health_url": "http://127.0.0.1:9/health",
                "rollback_command": ["false"],
            }
        ],
    )
    ctx = wiring.Context(cfg, bus, clock, refs={"stage_engine": engine})
    return ActorUnderTest(wiring.SPECS["monitor"], ctx, clock)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many watch records were decoded (every read, get or walk, decodes)."""
    counts = {"watches": 0}
    real = Store._decode

    def _counting(self: Store[Any], key: str, revision: int | None, data: bytes | None) -> Any:
        if self.bucket == subjects.BUCKET_MONITOR:
            counts["watches"] += 1
        return real(self, key, revision, data)

    monkeypatch.setattr(Store, "_decode", _counting)
    return counts


def _no_full_read(self: Any, *_: Any, **__: Any) -> Any:
    raise AssertionError("start-up read every watch")


def test_start_up_decodes_only_open_watches_and_a_restart_keeps_them(
    tmp_path: Path,
    nats_url: str,
    bus: Bus,
    clock: FakeClock,
    stub: Callable[..., pykka.ActorRef[Any]],
    decoded: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
):
    now = clock.now()
    # As an older version left them: many closed watches (some rolled back), three open.
    old = {f"DEMO-{n}": _watch(n, now, closed=True, degraded=n % 10 == 0) for n in range(CLOSED)}
    old |= {f"DEMO-{n}": _watch(n, now) for n in range(1000, 1003)}
    put_many(bus, subjects.BUCKET_MONITOR, old)
    monkeypatch.setattr(monitor_state, "WALK_BATCH", 128)  # the upgrade reads in batches
    heads: Store[MonitorHead] = bus.store(subjects.BUCKET_INDEX, MonitorHead)
    engine = stub()

    monitor = _start(tmp_path, nats_url, bus, clock, engine)
    try:
        status = monitor.status()
        assert (status[WATCHING], status[HEALTHY], status[DEGRADED]) == (3, 270, 30)
        assert status["rolled_back"] == 30
        # The open watches and the most recently closed, not every watch ever kept.
        listed = [w["task_id"] for w in status["watches"]]
        assert len(listed) == 3 + RECENT
        assert {"DEMO-1000", "DEMO-1001", "DEMO-1002"} <= set(listed)
        head = heads.get(HEAD_KEY)
        assert head is not None
        assert head.value.hot == ["DEMO-1000", "DEMO-1001", "DEMO-1002"]
        assert sum(head.value.counts.values()) - head.value.counts["rolled_back"] == CLOSED
        monitor.tick(0.0)  # nothing changed: nothing written
        again = heads.get(HEAD_KEY)
        assert again is not None
        assert again.revision == head.revision

        # A `done` reaches the monitor and the process dies before any tick's checkpoint.
        done = StageChanged(
            task_id="DEMO-2000",
            repo="demo",
            old="deploy",
            new="done",
            cause="deployed",
            revision=7,
            at=now,
        )
        bus.publish(subjects.stage_changed("DEMO-2000"), done, msg_id="test:done:2000")
        wait_until(lambda: monitor.status()[WATCHING] == 4, what="the new watch")
    finally:
        monitor.ref.stop(block=True, timeout=10)
    after = heads.get(HEAD_KEY)
    assert after is not None
    assert after.revision == head.revision  # the head lags the last write

    # While it was away a watch closed (written by hand): read among the writes since.
    store: Store[Watch] = bus.store(subjects.BUCKET_MONITOR, Watch)
    open_one = store.get("DEMO-1001")
    assert open_one is not None
    closing = _watch(1001, now, closed=True)
    store.update("DEMO-1001", closing, expect=open_one.revision)

    monkeypatch.setattr(Store, "load_all", _no_full_read)
    monkeypatch.setattr(monitor_state.Watches, "_walk", _no_full_read)
    decoded["watches"] = 0
    monitor = _start(tmp_path, nats_url, bus, clock, engine)
    try:
        status = monitor.status()
        # Every open watch is kept, the one closed since is counted once.
        assert (status[WATCHING], status[HEALTHY], status[DEGRADED]) == (3, 271, 30)
        open_ids = {w["task_id"] for w in status["watches"] if not w["closed"]}
        assert open_ids == {"DEMO-1000", "DEMO-1002", "DEMO-2000"}
        # Two open at the head, and the two writes since: not the closed ones.
        assert decoded["watches"] == 4
    finally:
        monitor.ref.stop(block=True, timeout=10)
