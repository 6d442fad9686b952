"""`conveyor status` names the active control and the standbys when the leader lease is on."""

from __future__ import annotations

import pytest

from conveyor.app.render import print_overview


def _overview(control: object) -> dict[str, object]:
    return {"version": "x", "healthy": True, "actors": {}, "control": control}


def test_the_active_control_and_the_standbys_are_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    active = {"id": "a-1", "host": "hosta", "since": 1.7e9, "epoch": 20}
    print_overview(_overview({"active": active, "standbys": [{"id": "b-2", "host": "hostb"}]}), [])
    out = capsys.readouterr().out
    assert "Control: active a-1 on hosta since 2023-11-14T22:13:20Z, epoch 20" in out
    assert "standbys: b-2 on hostb" in out


def test_no_active_control_is_said_so(capsys: pytest.CaptureFixture[str]) -> None:
    print_overview(_overview({"active": None, "standbys": []}), [])
    assert "no active control" in capsys.readouterr().out


def test_without_the_leader_lease_there_is_no_control_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_overview(_overview({}), [])
    assert "Control:" not in capsys.readouterr().out


def test_a_draining_launcher_says_so_and_one_taking_orders_does_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    launcher = {"healthy": True, "name": "vm", "slots": 4, "busy": 1, "draining": True}
    print_overview({**_overview({}), "actors": {"launcher": launcher}}, [])
    assert "draining=True" in capsys.readouterr().out
    print_overview({**_overview({}), "actors": {"launcher": {**launcher, "draining": False}}}, [])
    assert "draining" not in capsys.readouterr().out
