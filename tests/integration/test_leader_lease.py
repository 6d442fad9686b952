"""The leader lease on a real nats-server, stepped by hand on fake clocks.

Expiry itself is the server's (a real TTL of 10 s) and is covered end to end by
`tests/e2e/test_standby.py`; here: winning, standing by, the write fence and its
stamp, a deposition, a release taken over without a campaign delay.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from actors.leader import BUCKET, EPOCH_HEADER, MEMBER_PREFIX, STREAM, Leadership, LeaseBucket
from actors.leader_policy import Holder
from bus import subjects
from bus.bridge import Bus
from bus.effects import Effect
from conveyor.clock import FakeClock
from conveyor.config_control import ControlConfig
from conveyor.errors import Fenced
from tests.harness import wait_until

pytestmark = pytest.mark.timeout(60)

CFG = ControlConfig(leader_lease=True, leader_ttl_s=10.0, campaign_delay_s=2.0)


class Side:
    """One control process's leadership over its own connection, with what it was told."""

    def __init__(self, url: str, name: str) -> None:
        self.bus = Bus.connect(url, name=name)
        self.clock = FakeClock()
        self.elected: list[int] = []
        self.deposed: list[str] = []
        self.lead = Leadership(
            self.bus,
            msgspec.structs.replace(CFG, id=name),
            elected=self.elected.append,
            deposed=self.deposed.append,
            clock=self.clock,
        )
        self.lead.lease.ensure()


@pytest.fixture
def sides(nats_url: str) -> Iterator[tuple[Side, Side]]:
    a, b = Side(nats_url, "a"), Side(nats_url, "b")
    yield a, b
    a.bus.close()
    b.bus.close()


def test_the_first_wins_and_acts_the_second_stands_by(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.lead.step()
    b.lead.step()
    assert len(a.elected) == 1
    assert b.elected == []
    status = b.lead.status()
    assert (status["active"]["id"], status["active"]["epoch"]) == ("a", a.elected[0])
    assert [m["id"] for m in status["standbys"]] == ["b"]


def test_the_fence_stamps_the_epoch_and_refuses_past_the_own_deadline(
    sides: tuple[Side, Side], nats_url: str
) -> None:
    # Given the active's control connection, fenced by its epoch
    a, _ = sides
    a.lead.step()
    epoch = a.elected[0]
    control = Bus.connect(nats_url, name="control")
    control.setup()
    control.write_stamp = a.lead.fence_for(epoch)
    store = control.store(subjects.BUCKET_EFFECTS, Effect)
    try:
        # When it writes in time, the write carries the epoch
        store.create("k", Effect(key="k", status="started", started_at=1.0))
        raw = control.call(
            control.js.get_last_msg(f"KV_{subjects.BUCKET_EFFECTS}", "$KV.conveyor_effects.k")
        )
        assert (raw.headers or {}).get(EPOCH_HEADER) == str(epoch)

        # When its own clock passes three quarters of the TTL with no renewal (a pause)
        a.clock.advance(CFG.leader_ttl_s * 0.75)

        # Then every write is refused before it is sent, though the server still has the lease
        with pytest.raises(Fenced):
            store.update("k", Effect(key="k", status="done", started_at=1.0), expect=raw.seq or 0)
        with pytest.raises(Fenced):
            control.publish("conveyor.test", Effect(key="x", status="s", started_at=0.0))
        assert store.get("k").value.status == "started"  # type: ignore[union-attr]
    finally:
        control.close()


def test_a_holder_whose_key_moved_is_deposed_and_stops_acting(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.lead.step()
    fence = a.lead.fence_for(a.elected[0])
    # Another writer takes the key (as a standby would after an expiry a paused holder missed)
    seen = b.lead.lease.read()
    b.lead.lease.write(Holder(id="b", host="h", epoch=0, role="active"), expect=seen.revision)
    # When the holder's next renewal is due
    a.clock.advance(CFG.leader_ttl_s / 3)
    a.lead.step()
    # Then it stood down and its writes are refused
    assert a.deposed == ["another process holds the lease"]
    with pytest.raises(Fenced):
        fence()


def test_a_released_lease_is_taken_over_at_once(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.lead.step()
    b.lead.step()
    a.lead.stop()  # stands down and deletes the key
    assert a.deposed == ["stopping"]
    b.lead.step()
    assert len(b.elected) == 1
    assert b.elected[0] > a.elected[0]
    assert b.lead.lease.read().holder.id == "b"  # type: ignore[union-attr]


def test_a_stopped_process_leaves_the_standby_list_at_once(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.lead.step()
    b.lead.step()
    b.lead.stop()
    assert a.lead.status()["standbys"] == []


def test_a_stopped_process_leaves_no_presence_subject_behind(nats_url: str) -> None:
    bus = Bus.connect(nats_url)
    try:
        lease = LeaseBucket(bus, ttl_s=1.0)
        lease.ensure()
        lease.announce(Holder(id="gone", host="h"))
        lease.forget("gone")
        assert lease.members() == []
        wait_until(lambda: not _member_subjects(bus), deadline_s=20.0, what="the marker to expire")
    finally:
        bus.close()


def _member_subjects(bus: Bus) -> list[str]:
    async def _subjects() -> list[str]:
        info = await bus.js.stream_info(STREAM, subjects_filter=f"$KV.{BUCKET}.{MEMBER_PREFIX}>")
        return list((info.state.subjects or {}).keys())

    return bus.call(_subjects())
