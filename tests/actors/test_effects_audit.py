"""Control's start-up audit of the effects reads only the writes since the last audit."""

from __future__ import annotations

from typing import Any

import pytest

import bus.kv as kv_module
from actors import janitor_audit
from actors.janitor_audit import AuditCursor, audit_since
from bus import subjects
from bus.bridge import Bus
from bus.effects import DONE, Effect
from tests.kv_raw import put_raw

pytestmark = pytest.mark.timeout(30)

EFFECTS = subjects.BUCKET_EFFECTS
CURSOR = f"audit.{EFFECTS}"


def _effect(number: int) -> Effect:
    return Effect(key=f"DEMO-{number}.pr", status=DONE, started_at=1.0, done_at=2.0)


def _no_full_read(*_: Any, **__: Any) -> Any:
    raise AssertionError("read every effect")


def test_the_audit_reads_the_writes_since_its_cursor_and_reports_garbage_once(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[str] = []
    monkeypatch.setattr(kv_module, "quarantine", lambda _b, _bk, key, *_: reported.append(key))
    monkeypatch.setattr(kv_module.Store, "load_all", _no_full_read)
    effects = bus.store(EFFECTS, Effect)
    # As an older version left them: no cursor, a few effects and one that does not decode.
    for number in range(1, 6):
        effects.create(_effect(number).key, _effect(number))
    put_raw(bus, EFFECTS, "DEMO-9.pr", b"{not json")
    monkeypatch.setattr(janitor_audit, "AUDIT_BATCH", 2)  # the upgrade reads in batches

    assert audit_since(bus, EFFECTS, Effect) == 5
    assert reported == ["DEMO-9.pr"]
    cursor = bus.store(subjects.BUCKET_INDEX, AuditCursor).get(CURSOR)
    assert cursor is not None
    assert cursor.value.seq == effects.last_seq()

    # A restart with nothing new reads nothing; a write since is read, and only it.
    assert audit_since(bus, EFFECTS, Effect) == 0
    effects.create(_effect(7).key, _effect(7))
    put_raw(bus, EFFECTS, "DEMO-8.pr", b"\xff")
    assert audit_since(bus, EFFECTS, Effect) == 1
    assert reported == ["DEMO-9.pr", "DEMO-8.pr"]

    # A cursor that does not decode is derived state: everything is audited once more.
    put_raw(bus, subjects.BUCKET_INDEX, CURSOR, b"[garbage")
    assert audit_since(bus, EFFECTS, Effect) == 6
