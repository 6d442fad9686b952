"""Start-up audit of the buckets no actor loads whole, from a cursor.

Control reads the effects bucket at start so that a record there that does not decode
is reported then (`bus.kv.quarantine`), not first when a step needs it. Reading the
whole bucket at every start cost the most of a restart (about five effects per task:
500,000 records at 100,000 tasks). A record that was audited once was reported then,
so a start reads only the writes after the sequence the last audit reached, kept in
`conveyor_index` under `audit.<bucket>`. Without that cursor (data of an older
version, or one that does not decode) the audit reads the bucket once, in batches,
and writes it.
"""

from __future__ import annotations

import msgspec

from bus import subjects
from bus.bridge import Bus
from bus.kv import Quarantined, Store
from conveyor.logs import get_logger

log = get_logger(__name__)

AUDIT_BATCH = 5000
"""Records one walk decodes at a time, so the first audit's memory stays bounded."""


class AuditCursor(msgspec.Struct, frozen=True):
    """The bucket stream's sequence up to which every write was audited."""

    seq: int = 0


def audit_since(bus: Bus, bucket: str, value_type: type[msgspec.Struct]) -> int:
    """Decode the writes to `bucket` after its cursor (bad ones are quarantined); how many."""
    cursors: Store[AuditCursor] = bus.store(subjects.BUCKET_INDEX, AuditCursor)
    key = f"audit.{bucket}"
    try:
        found = cursors.get(key)
    except Quarantined:
        found = None  # derived state: audit everything once more
    seq = found.value.seq if found is not None else 0
    store: Store[msgspec.Struct] = bus.store(bucket, value_type)
    read = 0
    while True:
        writes, last = store.walk(seq, limit=AUDIT_BATCH)
        read += len(writes)
        seq = max(seq, last)
        if len(writes) < AUDIT_BATCH:
            break
    cursors.put(key, AuditCursor(seq=seq))
    log.info("janitor.audited", bucket=bucket, read=read, seq=seq)
    return read
