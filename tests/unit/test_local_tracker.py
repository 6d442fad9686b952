"""The local tracker: one JSON file per work item, effects once per key."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from conveyor.clock import FakeClock
from conveyor.errors import InvalidField
from gateways.tracker import LocalTracker, Tracker

ITEM = "DEMO-1"


@pytest.fixture
def tracker(tmp_path: Path) -> LocalTracker:
    return LocalTracker(tmp_path / "tracker", clock=FakeClock(start=500.0))


def effects(tracker: LocalTracker) -> list[dict[str, object]]:
    if not tracker.effects_path.exists():
        return []
    return [json.loads(line) for line in tracker.effects_path.read_text().splitlines()]


def test_local_tracker_satisfies_the_tracker_protocol(tracker: LocalTracker):
    implementation: Tracker = tracker
    assert implementation.state(ITEM) is None


def test_an_unknown_work_item_has_no_state_and_no_comments(tracker: LocalTracker):
    assert tracker.state(ITEM) is None
    assert tracker.comments(ITEM) == []


def test_a_comment_with_the_same_key_is_posted_once(tracker: LocalTracker):
    tracker.comment(ITEM, "PR opened", key="pr-opened:1")
    tracker.comment(ITEM, "PR opened (replayed)", key="pr-opened:1")
    assert tracker.comments(ITEM) == ["PR opened"]
    assert [(e["kind"], e["key"]) for e in effects(tracker)] == [("comment_posted", "pr-opened:1")]


def test_comments_with_different_keys_are_kept_in_order(tracker: LocalTracker):
    tracker.comment(ITEM, "first", key="a")
    tracker.comment(ITEM, "second", key="b")
    tracker.comment("DEMO-2", "elsewhere", key="a")
    assert tracker.comments(ITEM) == ["first", "second"]
    assert tracker.comments("DEMO-2") == ["elsewhere"]


def test_the_work_item_file_holds_state_and_keyed_comments(tmp_path: Path, tracker: LocalTracker):
    tracker.set_state(ITEM, "In Progress", key="s1")
    tracker.comment(ITEM, "hello", key="k1")
    stored = json.loads((tmp_path / "tracker" / f"{ITEM}.json").read_text())
    assert stored["state"] == "In Progress"
    assert stored["comments"] == [{"key": "k1", "text": "hello", "ts": 500.0}]


def test_set_state_is_idempotent_by_key_and_a_replay_does_not_undo_a_later_change(
    tracker: LocalTracker,
):
    tracker.set_state(ITEM, "In Progress", key="stage:development")
    tracker.set_state(ITEM, "In Review", key="stage:review")
    # When the first event is replayed, Then the later state stands
    tracker.set_state(ITEM, "In Progress", key="stage:development")
    assert tracker.state(ITEM) == "In Review"
    assert [e["state"] for e in effects(tracker)] == ["In Progress", "In Review"]


def test_setting_the_current_state_again_records_no_effect(tracker: LocalTracker):
    tracker.set_state(ITEM, "Done", key="a")
    tracker.set_state(ITEM, "Done", key="b")
    assert len(effects(tracker)) == 1


def test_two_threads_posting_the_same_key_post_once(tracker: LocalTracker):
    barrier = threading.Barrier(8)

    def post(n: int) -> None:
        barrier.wait()
        tracker.comment(ITEM, f"from {n}", key="same")

    threads = [threading.Thread(target=post, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(tracker.comments(ITEM)) == 1
    assert len(effects(tracker)) == 1


def test_two_trackers_on_one_root_share_state(tmp_path: Path, tracker: LocalTracker):
    other = LocalTracker(tmp_path / "tracker")
    tracker.comment(ITEM, "once", key="k")
    other.comment(ITEM, "twice", key="k")
    assert other.comments(ITEM) == ["once"]


@pytest.mark.parametrize("item", ["demo-1", "../DEMO-1", "DEMO-0", "DEMO-1/x", "", "DEMO-1\n"])
def test_invalid_work_item_ids_are_rejected_before_touching_disk(tmp_path: Path, item: str):
    tracker = LocalTracker(tmp_path / "tracker")
    with pytest.raises(InvalidField) as caught:
        tracker.comment(item, "x", key="k")
    assert caught.value.field == "work_item_id"
    with pytest.raises(InvalidField):
        tracker.set_state(item, "Done", key="k")
    with pytest.raises(InvalidField):
        tracker.state(item)
    with pytest.raises(InvalidField):
        tracker.comments(item)
    assert not (tmp_path / "tracker").exists()


@pytest.mark.parametrize(("text", "key"), [("", "k"), ("ok", ""), ("bad\x00text", "k")])
def test_empty_or_control_character_comments_and_keys_are_rejected(
    tracker: LocalTracker, text: str, key: str
):
    with pytest.raises(InvalidField):
        tracker.comment(ITEM, text, key=key)
    assert tracker.comments(ITEM) == []
