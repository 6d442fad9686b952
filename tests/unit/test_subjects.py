"""Subjects live in one module and their builders never widen a subscription."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import subjects
from bus.messages import Alert, BusMessage, JobsCancelled, KillJob, RunHeartbeat, StageChanged, Tick
from conveyor.errors import InvalidField

ROOT = Path(__file__).resolve().parents[2]
SUBJECT_LITERAL = re.compile(r"^conveyor\.(cmd|status|jobs|launch|stage|alerts|events|webhooks)\b")


def _string_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


@pytest.mark.parametrize("package", ["actors", "bus", "conveyor", "gateways"])
def test_no_module_but_bus_subjects_spells_a_subject(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        if path == ROOT / "bus" / "subjects.py":
            continue
        spelled = [s for s in _string_literals(path) if SUBJECT_LITERAL.match(s)]
        assert spelled == [], f"{path.relative_to(ROOT)} spells {spelled}"


@given(st.text(min_size=1, max_size=20))
def test_builders_reject_tokens_that_could_widen_a_subscription(token: str) -> None:
    if re.fullmatch(r"[A-Za-z0-9_-]+", token):
        assert subjects.status_task(token).endswith(f".{token}")
        return
    with pytest.raises(InvalidField):
        subjects.status_task(token)
    with pytest.raises(InvalidField):
        subjects.stage_changed(token)


@pytest.mark.parametrize("bad", ["*", ">", "a.b", "a b", "", "DEMO-1.>"])
def test_wildcards_dots_and_spaces_are_refused(bad: str) -> None:
    with pytest.raises(InvalidField):
        subjects.status_actor(bad)


def test_every_published_message_type_has_a_subject() -> None:
    changed = StageChanged(
        task_id="DEMO-1", repo="demo", old="a", new="b", cause="c", revision=1, at=0.0
    )
    assert subjects.subject_for(changed) == subjects.stage_changed("DEMO-1")
    assert subjects.subject_for(Alert(level="info", text="x")) == subjects.ALERTS
    assert subjects.subject_for(KillJob(job_id="J")) == subjects.LAUNCH_KILL
    for message_type in get_args(BusMessage):
        assert message_type is StageChanged or message_type in subjects.ROUTES


def test_only_kill_orders_and_heartbeats_go_on_core_nats() -> None:
    assert not subjects.is_durable(KillJob(job_id="J"))
    assert not subjects.is_durable(RunHeartbeat(job_id="J", attempt=1, launcher="l", at=0.0))
    assert subjects.is_durable(Alert(level="info", text="x"))
    assert subjects.is_durable(JobsCancelled(task_id="DEMO-1"))


def test_a_message_without_a_subject_is_refused() -> None:
    with pytest.raises(TypeError, match="Tick"):
        subjects.subject_for(Tick(now=0.0))
