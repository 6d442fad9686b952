"""JetStream writes retried through a leaderless window, on a fake clock."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
import pytest

from bus.effects import Effect
from bus.kv import Store
from bus.writes import retry_js, retry_write
from conveyor import config as config_mod
from conveyor.clock import FakeClock
from conveyor.errors import BusUnavailable, ConfigError, Fenced
from conveyor.retry import write_retry_delay_s

T = TypeVar("T")


def test_the_delay_doubles_to_its_cap_and_is_cut_to_the_budget_left() -> None:
    delays = [write_retry_delay_s(n, 0.0, 20.0) for n in range(7)]
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert write_retry_delay_s(9, 19.7, 20.0) == pytest.approx(0.3)
    assert write_retry_delay_s(0, 20.0, 20.0) is None
    assert write_retry_delay_s(3, 25.0, 20.0) is None


def _run(op: Callable[[int], Awaitable[T]], clock: FakeClock, budget_s: float = 20.0) -> T:
    slept: list[float] = []

    async def _sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    return asyncio.run(
        retry_write(op, budget_s=budget_s, monotonic=clock.monotonic, sleep=_sleep, what="t")
    )


def test_a_write_without_a_leader_for_six_seconds_is_the_same_write_until_it_lands() -> None:
    # Given a stream whose leader died: no responders for 6 s, then a new leader answers
    clock = FakeClock()
    elected_at = clock.monotonic() + 6.0
    tries: list[int] = []

    async def _publish(attempt: int) -> str:
        tries.append(attempt)
        if clock.monotonic() < elected_at:
            raise nats.js.errors.NoStreamResponseError
        return "ack"

    # When it is written
    assert _run(_publish, clock) == "ack"

    # Then it was tried again, numbered, until the election, and not for long after
    assert tries == list(range(len(tries)))
    assert len(tries) > 5
    assert clock.monotonic() - (elected_at - 6.0) < 7.1


def test_a_timeout_is_retried_too_and_the_try_number_tells_the_op() -> None:
    clock = FakeClock()
    seen: list[int] = []

    async def _update(attempt: int) -> int:
        seen.append(attempt)
        if attempt == 0:
            raise nats.errors.TimeoutError
        return 42

    assert _run(_update, clock) == 42
    assert seen == [0, 1]


def test_a_window_longer_than_the_budget_is_bus_unavailable() -> None:
    clock = FakeClock()
    start = clock.monotonic()

    async def _never(_attempt: int) -> None:
        raise nats.errors.NoRespondersError

    with pytest.raises(BusUnavailable, match=re.escape("unanswered for 5.0s")):
        _run(_never, clock, budget_s=5.0)
    assert clock.monotonic() - start == pytest.approx(5.0)


def test_an_answer_that_says_no_is_not_retried() -> None:
    clock = FakeClock()
    tries: list[int] = []

    async def _refused(attempt: int) -> None:
        tries.append(attempt)
        raise nats.js.errors.KeyWrongLastSequenceError

    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        _run(_refused, clock)
    assert tries == [0]


def _nats(**table: object) -> config_mod.NatsConfig:
    return config_mod.load(env={}, overrides={"nats": table}).nats


def test_servers_replace_the_url_and_replicas_must_fit_them() -> None:
    urls = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]
    nats_cfg = _nats(servers=urls, replicas=3, url="nats://elsewhere:4222")
    assert nats_cfg.url == ",".join(urls)
    assert _nats(url=",".join(urls), replicas=3).replicas == 3
    with pytest.raises(ConfigError, match=re.escape("3 replicas need as many nodes")):
        _nats(servers=urls[:2], replicas=3)
    with pytest.raises(ConfigError, match=re.escape("nats.replicas: must be odd")):
        _nats(servers=urls, replicas=2)
    with pytest.raises(ConfigError, match=re.escape("nats.write_retry_s")):
        _nats(write_retry_s=0)


def test_a_cluster_node_needs_routes_and_counts_them_as_nodes() -> None:
    node = _nats(cluster={"name": "c", "node_name": "n1", "routes": ["a", "b"]}, replicas=3)
    assert node.cluster.routes == ["a", "b"]
    with pytest.raises(ConfigError, match=re.escape("nats.cluster.routes")):
        _nats(cluster={"name": "c"})


class _Entry(msgspec.Struct):
    value: bytes | None
    revision: int


class _LostAnswerKV:
    """A bucket whose first write lands but whose answer is lost (a leader dying)."""

    _name = "conveyor_effects"

    def __init__(self) -> None:
        self.value: bytes | None = None
        self.revision = 0
        self.writes = 0

    async def update(self, _key: str, data: bytes, last: int) -> int:
        self.writes += 1
        if last != self.revision:
            raise nats.js.errors.KeyWrongLastSequenceError
        self.value, self.revision = data, self.revision + 1
        if self.writes == 1:
            raise nats.errors.TimeoutError
        return self.revision

    async def get(self, _key: str) -> _Entry:
        return _Entry(self.value, self.revision)


class _Bus:
    """What `Store` needs of `Bus`, on a fake clock and a fresh event loop per call."""

    def __init__(self) -> None:
        self.clock = FakeClock()

    def write_stamp(self) -> dict[str, str]:
        return {}  # no leader lease: nothing stamped, nothing refused

    def write(self, op: Callable[[int], Awaitable[T]], *, what: str = "") -> T:
        return _run(op, self.clock)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return asyncio.run(coro)


def _effect(status: str) -> Effect:
    return Effect(key="k", status=status, started_at=1.0)


def test_a_cas_write_whose_answer_was_lost_adopts_its_own_landed_revision() -> None:
    # Given a write that landed at revision 1 though its answer never came
    kv = _LostAnswerKV()
    store = Store(_Bus(), kv, Effect)  # type: ignore[arg-type]

    # When it is retried with the same expected revision, and finds the key moved
    revision = store.update("k", _effect("done"), expect=0)

    # Then it re-read the key, found its own value there and took that revision
    assert (revision, kv.writes, kv.revision) == (1, 2, 1)


def test_a_cas_write_that_finds_another_value_after_a_lost_answer_is_fenced() -> None:
    kv = _LostAnswerKV()
    store = Store(_Bus(), kv, Effect)  # type: ignore[arg-type]

    async def _another_writer_first(_key: str, _data: bytes, last: int) -> int:
        # Our first try got no answer and did not land; another writer's did.
        if kv.revision == 0:
            kv.value, kv.revision = b'{"other": 1}', 1
            raise nats.errors.TimeoutError
        raise nats.js.errors.KeyWrongLastSequenceError

    kv.update = _another_writer_first  # type: ignore[method-assign]
    with pytest.raises(Fenced):
        store.update("k", _effect("done"), expect=0)


def test_set_up_waits_out_a_cluster_still_forming_but_not_a_refusal() -> None:
    calls: list[int] = []

    async def forming() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise nats.js.errors.BadRequestError(
                code=400, err_code=10005, description="no suitable peers for placement"
            )
        return "created"

    assert asyncio.run(retry_js(forming)) == "created"
    assert len(calls) == 3

    async def refused() -> str:
        calls.append(1)
        raise nats.js.errors.BadRequestError(code=400, err_code=10058, description="name in use")

    calls.clear()
    with pytest.raises(nats.js.errors.BadRequestError):
        asyncio.run(retry_js(refused))
    assert len(calls) == 1
