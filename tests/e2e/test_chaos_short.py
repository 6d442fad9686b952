"""A short run of `bench/chaos.py`: random kill -9 every few seconds, nothing lost or doubled.

The bench measures and never asserts; this CI version runs a few items under the
same chaos (control, launcher, nats-server or an agent killed every 3-6 s and
restarted) and asserts what must hold whatever the timing: every item done,
none lost, every pull request opened and merged exactly once, no tracker comment
posted twice. Recovery times are printed, not asserted (they depend on the
machine).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def _load_bench() -> ModuleType:
    """Import bench/chaos.py by path (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("conveyor_bench_chaos", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


ITEMS = 4


@pytest.mark.timeout(300)
def test_random_kills_lose_nothing_and_double_no_effect(tmp_path: Path) -> None:
    chaos = _load_bench()

    # Given 4 items over 2 repositories, while a random process is killed -9 every 3-6 s
    report = chaos.run(
        items=ITEMS,
        repos=2,
        kill_min_s=3.0,
        kill_max_s=6.0,
        deadline_s=200.0,
        seed=20240604,
        workdir=tmp_path,
        agent_s=1.5,
        say=print,
    )
    print(report.render())

    # Then the chaos really happened (each round kills every kind once, an agent if one
    # is running), and the bench itself did not break
    killed = {kill.victim for kill in report.kills}
    assert {"control", "launcher", "nats-server"} <= killed, report.kills
    assert not report.errors, report.errors
    # and every item is done: none lost, none escalated
    assert not report.lost, report.lost
    assert not report.escalated, report.escalated
    assert sorted(report.done) == ["R1-1", "R1-2", "R2-1", "R2-2"]
    # and every external effect happened exactly once
    assert report.effects["pr_opened"] == ITEMS, report.effects
    assert report.effects["pr_merged"] == ITEMS, report.effects
    assert report.duplicated_effects == 0, report.duplicate_details
    assert report.duplicated_comments == 0, report.comment_details
