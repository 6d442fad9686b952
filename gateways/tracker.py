"""The tracker interface and the embedded local tracker (one JSON file per work item).

Comments and state changes carry an idempotency key: a replayed event with the
same key is a no-op, so a crash between "posted" and "acknowledged" never posts twice.
"""

from __future__ import annotations

import unicodedata
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import msgspec

from conveyor import validate
from conveyor.clock import Clock, SystemClock
from conveyor.errors import InvalidField
from conveyor.logs import get_logger
from gateways.forge import append_line, locked, write_atomic

log = get_logger(__name__)

MAX_KEY = 200


class Tracker(Protocol):
    """What Conveyor needs from an issue tracker (the local one, or Plane)."""

    def comment(self, work_item_id: str, text: str, *, key: str) -> None:
        """Post `text` on the work item once per `key`."""
        ...

    def set_state(self, work_item_id: str, state: str, *, key: str) -> None:
        """Move the work item to `state` once per `key`."""
        ...

    def comments(self, work_item_id: str) -> list[str]:
        """Texts of the work item's comments, oldest first."""
        ...

    def state(self, work_item_id: str) -> str | None:
        """The work item's state, or None when it has none."""
        ...


class Comment(msgspec.Struct, frozen=True, kw_only=True):
    """One comment on a work item, with the key that made it."""

    key: str
    text: str
    ts: float


class WorkItemRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the local tracker stores for one work item."""

    id: str
    state: str | None = None
    comments: tuple[Comment, ...] = ()
    state_keys: tuple[str, ...] = ()
    updated_at: float = 0.0


class LocalTracker:
    """A tracker on local disk: `root/<ID>.json` per work item, effects in `effects.jsonl`."""

    def __init__(self, root: Path, clock: Clock | None = None) -> None:
        self.root = root.resolve()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.effects_path = self.root / "effects.jsonl"

    def comment(self, work_item_id: str, text: str, *, key: str) -> None:
        validate.work_item_id(work_item_id, "work_item_id")
        text = validate.description(text, "text")
        if not text.strip():
            raise InvalidField("text", "must not be empty")
        _key(key)
        with self._lock(work_item_id):
            record = self._load(work_item_id)
            if any(c.key == key for c in record.comments):
                return
            now = self._clock.now()
            new = Comment(key=key, text=text, ts=now)
            self._save(
                msgspec.structs.replace(record, comments=(*record.comments, new), updated_at=now)
            )
            self._effect("comment_posted", work_item_id, key=key)
        log.info("tracker.commented", work_item_id=work_item_id, key=key)

    def set_state(self, work_item_id: str, state: str, *, key: str) -> None:
        validate.work_item_id(work_item_id, "work_item_id")
        state = validate.title(state, "state")
        _key(key)
        with self._lock(work_item_id):
            record = self._load(work_item_id)
            # A replay must not undo a later change, so the key decides, not the value.
            if key in record.state_keys:
                return
            now = self._clock.now()
            changed = record.state != state
            self._save(
                msgspec.structs.replace(
                    record,
                    state=state,
                    state_keys=(*record.state_keys, key),
                    updated_at=now,
                )
            )
            if changed:
                self._effect("state_set", work_item_id, key=key, state=state)
        if changed:
            log.info("tracker.state_set", work_item_id=work_item_id, state=state, key=key)

    def comments(self, work_item_id: str) -> list[str]:
        validate.work_item_id(work_item_id, "work_item_id")
        return [c.text for c in self._load(work_item_id).comments]

    def state(self, work_item_id: str) -> str | None:
        validate.work_item_id(work_item_id, "work_item_id")
        return self._load(work_item_id).state

    def _path(self, work_item_id: str) -> Path:
        return self.root / f"{work_item_id}.json"

    def _lock(self, work_item_id: str) -> AbstractContextManager[None]:
        return locked(self.root / "locks" / f"{work_item_id}.lock")

    def _load(self, work_item_id: str) -> WorkItemRecord:
        try:
            data = self._path(work_item_id).read_bytes()
        except FileNotFoundError:
            return WorkItemRecord(id=work_item_id)
        return msgspec.json.decode(data, type=WorkItemRecord)

    def _save(self, record: WorkItemRecord) -> None:
        write_atomic(self._path(record.id), msgspec.json.encode(record))

    def _effect(self, kind: str, work_item_id: str, **fields: object) -> None:
        record = {"kind": kind, "work_item_id": work_item_id, **fields, "ts": self._clock.now()}
        append_line(self.effects_path, msgspec.json.encode(record))


def _key(value: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_KEY
        or any(unicodedata.category(ch).startswith("C") for ch in value)
    ):
        raise InvalidField("key", f"must be 1-{MAX_KEY} printable characters")
    return value
