"""KV writes that carry headers: the epoch of the leader lease the writer holds.

nats-py's `KeyValue.create` and `update` take no headers, so a stamped write is
the same publish they make (`Nats-Expected-Last-Subject-Sequence` on the key's
subject) with the stamp added. Without a stamp they are used as they are.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue

WRONG_LAST_SEQUENCE = (10071, 10164)


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
