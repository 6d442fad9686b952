"""Writes fenced by a leader lease: the stamp hook every write calls, and stamped KV writes.

`Bus.write_stamp` is called right before every KV write and publish (and again
before each retry of one): by default it stamps nothing; a leader-lease holder
sets it to its fence (`actors.leader`), which raises `Fenced` once the lease may
have run out and otherwise gives the headers carrying its epoch. nats-py's
`KeyValue.create` and `update` take no headers, so a stamped KV write is the same
publish they make (`Nats-Expected-Last-Subject-Sequence` on the key's subject)
with the stamp added. Without a stamp they are used as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.js.errors
from nats.js import api
from nats.js.kv import KV_DEL, KV_OP, KeyValue

T = TypeVar("T")

WRONG_LAST_SEQUENCE = (10071, 10164)


def no_stamp() -> dict[str, str]:
    """The stamp of a process that holds no leader lease: nothing, never refused."""
    return {}


def refenced(
    op: Callable[[int], Awaitable[T]], stamp: Callable[[], dict[str, str]]
) -> Callable[[int], Awaitable[T]]:
    """`op`, fenced again before each retry: the writer's lease may have run out meanwhile."""

    def _op(attempt: int) -> Awaitable[T]:
        if attempt:
            stamp()
        return op(attempt)

    return _op


async def update(kv: KeyValue, key: str, data: bytes, last: int, stamp: dict[str, str]) -> int:
    """`kv.update(key, data, last=last)` carrying `stamp` in its headers."""
    if not stamp:
        return int(await kv.update(key, data, last=last))
    headers = {**stamp, api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
    try:
        ack = await kv._js.publish(f"{kv._pre}{key}", data, headers=headers)
    except nats.js.errors.APIError as err:
        if err.err_code in WRONG_LAST_SEQUENCE:
            raise nats.js.errors.KeyWrongLastSequenceError(description=err.description) from err
        raise
    return int(ack.seq)


async def delete(kv: KeyValue, key: str, last: int, stamp: dict[str, str]) -> int:
    """`kv.delete(key, last=last)` carrying `stamp`; the delete marker's revision.

    nats-py's `delete` drops the marker's revision, which a writer creating the key
    again needs to expect (see `Store.create`'s `over`).
    """
    headers = {**stamp, KV_OP: KV_DEL}
    if last > 0:
        headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(last)
    try:
        ack = await kv._js.publish(f"{kv._pre}{key}", headers=headers)
    except nats.js.errors.APIError as err:
        if err.err_code in WRONG_LAST_SEQUENCE:
            raise nats.js.errors.KeyWrongLastSequenceError(description=err.description) from err
        raise
    return int(ack.seq)


async def create(kv: KeyValue, key: str, data: bytes, stamp: dict[str, str]) -> int:
    """`kv.create(key, data)` carrying `stamp`: over nothing, or over a deleted key."""
    if not stamp:
        return int(await kv.create(key, data))
    try:
        return await update(kv, key, data, 0, stamp)
    except nats.js.errors.KeyWrongLastSequenceError:
        try:
            # `_get`, as nats-py's own `create` does: `get` hides the deletion as not-found.
            await kv._get(key)
        except nats.js.errors.KeyDeletedError as deleted:
            # A delete marker is the key's last message: creating over it expects it.
            return await update(kv, key, data, int(deleted.entry.revision or 0), stamp)
        raise
