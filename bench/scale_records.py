"""The stored tasks of the scale bench: a real finished item's records, copied N times.

Reads every record of the task, job, run and effect buckets (after one demo item
ran, they are that item's), and writes renamed copies straight into the buckets
with async nats-py, many writes in flight at once. A copy renames the item id in
the key and the value (records are JSON); a key that does not name the item gets
the copy's id as a suffix so copies never overwrite each other.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import nats
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyNotFoundError, NoKeysError

from bus import subjects

BUCKETS = (
    subjects.BUCKET_TASKS,
    subjects.BUCKET_JOBS,
    subjects.BUCKET_RUNS,
    subjects.BUCKET_EFFECTS,
)
IN_FLIGHT = 4096
ACK_TIMEOUT_S = 60.0
FLOOR_BUCKET = "bench_scale_floor"


@dataclass
class Template:
    """One finished item's records, by bucket: (key, value) pairs."""

    item: str
    records: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)

    def count(self) -> int:
        return sum(len(r) for r in self.records.values())


async def _read(url: str, item: str) -> Template:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        template = Template(item)
        for bucket in BUCKETS:
            kv = await js.key_value(bucket)
            try:
                keys = await kv.keys()
            except NoKeysError:
                keys = []
            pairs = []
            for key in keys:
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:
                    continue
                if entry.value:
                    pairs.append((key, _at_rest(entry.value)))
            template.records[bucket] = pairs
        return template
    finally:
        await nc.close()


def _at_rest(value: bytes) -> bytes:
    """A finished item's record as it rests, with an outbox still being flushed taken as sent.

    The template is read as soon as the item is seen done, which can be before its owner
    cleared the outbox it just published. Copied as is, every copy would be published
    again by its owner's start-up flush, which is not what stored finished tasks cost.
    """
    try:
        record = json.loads(value)
    except ValueError:
        return value
    if not isinstance(record, dict) or not record.get("outbox"):
        return value
    record["outbox"] = []
    return json.dumps(record, separators=(",", ":")).encode()


def read_template(url: str, item: str) -> Template:
    return asyncio.run(_read(url, item))


def _renamed(template: Template, new: str) -> dict[str, list[tuple[str, bytes]]]:
    old_b, new_b = template.item.encode(), new.encode()
    out = {}
    for bucket, pairs in template.records.items():
        copies = []
        for key, value in pairs:
            new_key = key.replace(template.item, new)
            if new_key == key:
                new_key = f"{key}.{new}"
            copies.append((new_key, value.replace(old_b, new_b)))
        out[bucket] = copies
    return out


async def _write(url: str, template: Template, ids: list[str]) -> int:
    """Publish every copy to its KV subject, up to `IN_FLIGHT` unacknowledged at a time.

    A KV put is a JetStream publish to `$KV.<bucket>.<key>`. Plain publishes with one
    reply inbox, acks counted by one subscription, cost a fraction of a future per write
    (`kv.put`), so the writer keeps up with a server that does not fsync each write.
    """
    nc = await nats.connect(url)
    acked = 0
    errors: list[bytes] = []
    room = asyncio.Event()
    sent = 0
    try:
        inbox = nc.new_inbox()

        async def on_ack(msg: Msg) -> None:
            nonlocal acked
            acked += 1
            if b'"error"' in msg.data:
                errors.append(msg.data)
            if sent - acked <= IN_FLIGHT // 2:
                room.set()

        await nc.subscribe(f"{inbox}.*", cb=on_ack)
        for new in ids:
            for bucket, pairs in _renamed(template, new).items():
                for key, value in pairs:
                    await nc.publish(f"$KV.{bucket}.{key}", value, reply=f"{inbox}.{sent}")
                    sent += 1
                    if sent - acked >= IN_FLIGHT:
                        room.clear()
                        await nc.flush()
                        await asyncio.wait_for(room.wait(), ACK_TIMEOUT_S)
        await nc.flush()
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while acked < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if errors or acked < sent:
            first = errors[0][:200] if errors else b""
            raise RuntimeError(
                f"{acked}/{sent} copies acknowledged, {len(errors)} refused {first!r}"
            )
    finally:
        await nc.close()
    return acked


def write_copies(url: str, template: Template, ids: list[str]) -> int:
    """Write a renamed copy of every template record per id; return how many were written."""
    return asyncio.run(_write(url, template, ids))


async def _bare_creates(url: str, record: bytes, item: str, ids: list[str]) -> list[float]:
    """Sequential KV creates of the task record, renamed, into a bucket like the tasks one."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        tasks = await js.key_value(subjects.BUCKET_TASKS)
        status = await tasks.status()
        info = status.stream_info.config
        kv = await js.create_key_value(
            KeyValueConfig(
                bucket=FLOOR_BUCKET,
                history=info.max_msgs_per_subject or 1,
                storage=info.storage,
            )
        )
        times = []
        for new in ids:
            started = time.perf_counter()
            await kv.create(new, record.replace(item.encode(), new.encode()))
            times.append(time.perf_counter() - started)
        return times
    finally:
        await nc.close()


def bare_create_rate(url: str, template: Template, ids: list[str]) -> float:
    """Creates a second of the task record, one at a time (as a client submits)."""
    record = dict(template.records[subjects.BUCKET_TASKS])[template.item]
    times = asyncio.run(_bare_creates(url, record, template.item, ids))
    return 1 / statistics.mean(times)
