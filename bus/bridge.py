"""The actor <-> bus bridge: one asyncio loop thread per process owns the NATS connection.

pykka actors are threads. They call into the loop with `Bus.call` (a blocking
wait on a coroutine submitted with `run_coroutine_threadsafe`) and are called
from it with `tell` (consumer callbacks wrap each message in a `Delivery`).
The loop itself never blocks: slow handlers run in a thread pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from bus import fence, pull, subjects
from bus.delivery import MSG_ID as MSG_ID
from bus.delivery import Delivery as Delivery
from bus.endpoints import Handler as Handler
from bus.endpoints import service_error, serving
from bus.inflight import InFlight
from bus.kv import KeyExists as KeyExists
from bus.kv import Store as Store
from bus.kv import Versioned as Versioned
from bus.loop import LoopThread as LoopThread
from bus.messages import Message, encode
from bus.writes import FORMING_CODES, WRITE_RETRY_S, retry_js, retry_write
from conveyor import config_nats_auth
from conveyor.errors import BusUnavailable
from conveyor.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

DUPLICATE_WINDOW_S = 7200.0
"""How long a Nats-Msg-Id is remembered: longer than any restart should take."""
ACK_WAIT_S = 5.0
"""Default `nats.ack_wait_s`: how soon a dead process's fetched message comes back."""
MAX_HOLD_S = 3600.0
"""How long a live process keeps one unacknowledged delivery alive before letting it go."""


DISCONNECTED = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)
"""Errors that mean "the bus did not answer", as opposed to an answer that says no."""


class StreamSpec(msgspec.Struct, frozen=True):
    """A stream Conveyor creates at start."""

    name: str
    subjects: list[str]
    work_queue: bool = False
    max_age_s: float = 30 * 86400.0
    max_msgs: int = -1


STREAMS = (
    StreamSpec(subjects.STREAM_JOBS, [subjects.JOBS_ALL]),
    StreamSpec(subjects.STREAM_LAUNCH, [subjects.LAUNCH_ORDERS], work_queue=True),
    StreamSpec(subjects.STREAM_NOTIFY, [subjects.STAGE_ALL, subjects.ALERTS], max_msgs=1_000_000),
    StreamSpec(subjects.STREAM_EVENTS, [subjects.EVENTS_ALL]),
    # Lease releases a holder could not hand to the LeaseKeeper (it was away): kept
    # until the keeper consumes them, so a release survives the owner's absence.
    StreamSpec(
        subjects.STREAM_LEASES, [subjects.LEASE_RELEASES], work_queue=True, max_age_s=86400.0
    ),
)

BUCKETS = (
    subjects.BUCKET_LEASES,
    subjects.BUCKET_TASKS,
    subjects.BUCKET_JOBS,
    subjects.BUCKET_RUNS,
    subjects.BUCKET_EFFECTS,
    subjects.BUCKET_MONITOR,
    subjects.BUCKET_CARDS,
)
INDEX_BUCKETS = (subjects.BUCKET_INDEX,)  # derived state (checkpoints), rebuilt when unusable


class Bus:
    """The process's NATS connection, JetStream context and helpers for actors."""

    def __init__(
        self,
        loop: LoopThread,
        nc: Client,
        js: JetStreamContext,
        request_timeout_s: float,
        ack_wait_s: float = ACK_WAIT_S,
        *,
        replicas: int = 1,
        write_retry_s: float = WRITE_RETRY_S,
    ) -> None:
        self.loop = loop
        self.nc = nc
        self.js = js
        self.request_timeout_s = request_timeout_s
        self.replicas = replicas
        self.write_retry_s = write_retry_s
        self.inflight = InFlight(ack_wait_s, max_hold_s=MAX_HOLD_S)
        self._keeping_alive = False
        self._subs: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="bus-handler"
        )
        self.services: list[Any] = []
        self.write_stamp: Callable[[], dict[str, str]] = fence.no_stamp  # see `bus.fence`

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        name: str = "conveyor",
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 5.0,
        ack_wait_s: float = ACK_WAIT_S,
        loop: LoopThread | None = None,
        replicas: int = 1,
        write_retry_s: float = WRITE_RETRY_S,
    ) -> Bus:
        """Connect to NATS on a fresh loop thread; reconnect forever once connected.

        `url` may list the nodes of a cluster, comma-separated: the client knows them all
        and moves to another when its node dies.
        """
        loop = loop or LoopThread()
        servers = [u.strip() for u in url.split(",") if u.strip()] or [url]

        async def _connect() -> Client:
            return await nats.connect(
                servers,
                name=name,
                connect_timeout=connect_timeout_s,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                ping_interval=5,
                allow_reconnect=True,
                **config_nats_auth.connect_options(url, name),
            )

        try:
            nc = loop.call(_connect(), timeout_s=connect_timeout_s * len(servers) + 1)
        except Exception as err:
            loop.stop()
            raise BusUnavailable(f"cannot connect to NATS at {url}: {err}") from err
        js = nc.jetstream(timeout=request_timeout_s)
        return cls(
            loop,
            nc,
            js,
            request_timeout_s,
            ack_wait_s,
            replicas=replicas,
            write_retry_s=write_retry_s,
        )

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        timeout_s: float | None = None,
        *,
        give_up: Callable[[], bool] | None = None,
    ) -> T:
        """Run a coroutine on the loop from an actor thread; lost connections are BusUnavailable."""
        try:
            return self.loop.call(coro, timeout_s or self.request_timeout_s * 3, give_up=give_up)
        except DISCONNECTED as err:
            raise BusUnavailable(f"NATS unavailable: {err!r}") from err

    # --- set-up -------------------------------------------------------------------------

    def setup(self) -> None:
        """Create every stream and bucket if missing (idempotent, safe to race)."""
        self.call(self._setup(), timeout_s=60.0)

    async def _setup(self) -> None:
        for spec in STREAMS:
            config = js_api.StreamConfig(
                name=spec.name,
                subjects=spec.subjects,
                retention=(
                    js_api.RetentionPolicy.WORK_QUEUE
                    if spec.work_queue
                    else js_api.RetentionPolicy.LIMITS
                ),
                storage=js_api.StorageType.FILE,
                max_age=spec.max_age_s,
                max_msgs=spec.max_msgs,
                duplicate_window=DUPLICATE_WINDOW_S,
                num_replicas=self.replicas,
            )
            await retry_js(functools.partial(self._ensure_stream, config))
        for bucket in (*BUCKETS, *INDEX_BUCKETS):
            await retry_js(functools.partial(self._ensure_bucket, bucket))

    async def _ensure_stream(self, config: js_api.StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError as err:
            if err.err_code in FORMING_CODES:  # a cluster still forming: retry_js waits
                raise
            # Exists with a different config (an older version): keep the data, update.
            info = await self.js.stream_info(config.name or "")
            replicas = max(self.replicas, info.config.num_replicas or 1)
            await self.js.update_stream(dataclasses.replace(config, num_replicas=replicas))

    async def _ensure_bucket(self, bucket: str) -> None:
        try:
            info = await self.js.stream_info(f"KV_{bucket}")
        except nats.js.errors.NotFoundError:
            await self.js.create_key_value(
                js_api.KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    storage=js_api.StorageType.FILE,
                    replicas=self.replicas,
                    direct=False,
                )
            )
            return
        # Decisions read through the stream leader (a follower may not have the last write
        # yet); never fewer copies than there are (lowering them is an operator's act).
        replicas = max(self.replicas, info.config.num_replicas or 1)
        if info.config.num_replicas != replicas or info.config.allow_direct:
            await self.js.update_stream(
                dataclasses.replace(info.config, num_replicas=replicas, allow_direct=False)
            )

    def store(self, bucket: str, value_type: type[S]) -> Store[S]:
        """A typed KV store over `bucket`."""
        kv = self.call(self.js.key_value(bucket))
        return Store(self, kv, value_type)

    # --- publishing -----------------------------------------------------------------------

    def publish(self, subject: str, msg: msgspec.Struct, *, msg_id: str = "") -> None:
        """Publish durably to JetStream; the same `msg_id` is stored once."""
        headers = {**self.write_stamp(), **({MSG_ID: msg_id} if msg_id else {})} or None
        data = encode(msg)
        self.write(lambda _try: self.js.publish(subject, data, headers=headers), what=subject)

    def write(self, op: Callable[[int], Awaitable[T]], *, what: str = "") -> T:
        """Run a JetStream write from a thread, the same write again while unanswered.

        See `bus.writes`: up to `write_retry_s`, so a leaderless window is waited out.
        """
        return self.call(
            retry_write(
                fence.refenced(op, self.write_stamp), budget_s=self.write_retry_s, what=what
            ),
            timeout_s=self.write_retry_s + self.request_timeout_s + 2.0,
        )

    def emit(self, msg: Message, *, msg_id: str) -> None:
        """Publish `msg` on its type's subject: durably under `msg_id`, or on core NATS."""
        if subjects.is_durable(msg):
            self.publish(subjects.subject_for(msg), msg, msg_id=msg_id)
        else:
            self.publish_core(subjects.subject_for(msg), msg)

    def publish_core(self, subject: str, msg: msgspec.Struct) -> None:
        """Publish on core NATS (fire and forget, for heartbeats and kill orders)."""
        self.write_stamp()
        self.loop.submit(self.nc.publish(subject, encode(msg)))

    def request(
        self,
        subject: str,
        payload: bytes,
        timeout_s: float | None = None,
        *,
        give_up: Callable[[], bool] | None = None,
    ) -> bytes:
        """Core NATS request-reply from a thread; `give_up` True ends the wait early.

        A micro service's error reply raises (`bus.endpoints.service_error`).
        """

        async def _req() -> bytes:
            try:
                reply = await self.nc.request(
                    subject, payload, timeout=timeout_s or self.request_timeout_s
                )
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as err:
                raise BusUnavailable(f"no answer on {subject}: {err!r}") from err
            failed = service_error(subject, reply.headers)
            if failed is not None:
                raise failed
            return bytes(reply.data)

        return self.call(
            _req(), timeout_s=(timeout_s or self.request_timeout_s) + 2, give_up=give_up
        )

    # --- consuming ------------------------------------------------------------------------

    def consume(
        self,
        stream: str,
        durable: str,
        filter_subjects: Sequence[str],
        decoder: msgspec.json.Decoder[T],
        handler: Callable[[Delivery[T]], None],
        *,
        capacity: Callable[[], int] | None = None,
        ack_wait_s: float | None = None,
    ) -> None:
        """Feed a durable pull consumer's messages to `handler` (which must not block).

        A message handed over is kept alive (`in_progress`) until the handler's side
        acks it, so `ack_wait` only runs out for a process that died holding it.
        """

        async def _start() -> None:
            config = js_api.ConsumerConfig(
                durable_name=durable,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=ack_wait_s or self.inflight.ack_wait_s,
                max_ack_pending=1000,
                filter_subjects=list(filter_subjects) if len(filter_subjects) > 1 else None,
                filter_subject=filter_subjects[0] if len(filter_subjects) == 1 else None,
            )
            if capacity is None:
                await retry_js(lambda: self.js.add_consumer(stream, config))
                puller = pull.Puller(
                    self.nc,
                    pull.next_subject(stream, durable),
                    functools.partial(self._hand_over, decoder=decoder, handler=handler),
                    lambda: self._stopping,
                )
                task = asyncio.ensure_future(puller.run())
            else:
                sub = await retry_js(lambda: self._bind(stream, durable, config))
                self._subs.append(sub)
                task = asyncio.ensure_future(self._pull(sub, decoder, handler, capacity))
            self._tasks.append(task)
            if not self._keeping_alive:
                self._keeping_alive = True
                beat = self.inflight.keep_alive(lambda: self._stopping)
                self._tasks.append(asyncio.ensure_future(beat))

        self.call(_start(), timeout_s=30.0)

    async def _bind(self, stream: str, durable: str, config: js_api.ConsumerConfig) -> Any:
        # add_consumer is idempotent for an identical config, and updates a changed one.
        await self.js.add_consumer(stream, config)
        return await self.js.pull_subscribe_bind(durable, stream=stream)

    async def _pull(
        self,
        sub: Any,
        decoder: msgspec.json.Decoder[T],
        handler: Callable[[Delivery[T]], None],
        capacity: Callable[[], int] | None,
    ) -> None:
        while not self._stopping:
            if capacity is not None and capacity() <= 0:
                await asyncio.sleep(0.05)
                continue
            try:
                # batch=1: nats-py's fetch holds early messages until the batch fills or
                # the request expires; one at a time hands each over the moment it lands.
                msgs = await sub.fetch(batch=1, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a broken fetch must not end consumption
                if not self._stopping:
                    log.warning("bus.fetch_failed", error=repr(err))
                    await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                self._hand_over(msg, decoder=decoder, handler=handler)

    def _hand_over(
        self,
        msg: Msg,
        *,
        decoder: msgspec.json.Decoder[T],
        handler: Callable[[Delivery[T]], None],
    ) -> None:
        """Decode a delivered message and hand it to `handler`; one that does not decode ends."""
        try:
            body = decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("bus.message_rejected", subject=msg.subject, error=str(err))
            self.loop.submit(msg.term())
            return
        self.inflight.hold(msg)
        handler(Delivery(self, msg, body))

    def subscribe_core(
        self, subject: str, decoder: msgspec.json.Decoder[T], handler: Callable[[T], None]
    ) -> None:
        """Feed core NATS messages on `subject` to `handler`."""

        async def _cb(msg: Msg) -> None:
            try:
                body = decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                log.warning("bus.message_rejected", subject=msg.subject, error=str(err))
                return
            handler(body)

        async def _sub() -> None:
            self._subs.append(await self.nc.subscribe(subject, cb=_cb))

        self.call(_sub())

    # --- services -------------------------------------------------------------------------

    def add_service(
        self,
        name: str,
        version: str,
        description: str,
        endpoints: Sequence[tuple[str, str, Handler]],
    ) -> None:
        """Register a NATS micro service; handlers run as `bus.endpoints.serving` says."""
        from nats import micro  # imported late: only processes that serve need it

        async def _add() -> None:
            service = await micro.add_service(
                self.nc, name=name, version=version, description=description
            )
            for ep_name, subject, func in endpoints:
                await service.add_endpoint(
                    name=ep_name, subject=subject, handler=serving(func, self.loop.loop, self._pool)
                )
            self.services.append(service)

        self.call(_add())

    # --- shutdown -------------------------------------------------------------------------

    def quiesce(self) -> None:
        """Stop delivering: consumers and services end, the connection stays for acks."""
        self._stopping = True

        async def _quiesce() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for service in self.services:
                with contextlib.suppress(Exception):
                    await service.stop()

        with contextlib.suppress(Exception):
            self.loop.call(_quiesce(), timeout_s=10.0)

    def close(self) -> None:
        """Stop delivering, drain and close the connection, stop the loop."""
        if not self._stopping:
            self.quiesce()

        async def _close() -> None:
            # Everything that must survive was published with a JetStream ack already;
            # flush what core messages remain and close without a slow drain.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.flush(), timeout=2.0)
            with contextlib.suppress(Exception):
                await self.nc.close()

        with contextlib.suppress(Exception):
            self.loop.call(_close(), timeout_s=10.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.loop.stop()
