"""The leader lease's decisions on a fake monotonic clock: renew, stand down, take over."""

from __future__ import annotations

from actors import leader_policy as policy
from actors.leader_policy import Holder, Seen
from conveyor.clock import FakeClock

TTL = 12.0


def _won_at(clock: FakeClock, revision: int = 7) -> policy.Held:
    return policy.won(revision, clock.monotonic())


def test_a_won_lease_is_renewed_every_third_of_the_ttl() -> None:
    clock = FakeClock()
    held = _won_at(clock)
    clock.advance(TTL / 3 - 0.1)
    assert not policy.renew_due(held, clock.monotonic(), TTL)
    clock.advance(0.1)
    assert policy.renew_due(held, clock.monotonic(), TTL)


def test_the_active_stands_down_a_quarter_ttl_before_expiry_counted_from_the_send() -> None:
    clock = FakeClock()
    held = _won_at(clock)
    clock.advance(TTL * 0.75 - 0.01)
    assert not policy.must_stand_down(held, clock.monotonic(), TTL)
    clock.advance(0.01)
    assert policy.must_stand_down(held, clock.monotonic(), TTL)


def test_an_acknowledged_renewal_moves_the_deadline_and_keeps_the_epoch() -> None:
    clock = FakeClock()
    held = _won_at(clock, revision=7)
    clock.advance(4.0)
    held = policy.renewed(held, 9, clock.monotonic())
    clock.advance(TTL * 0.75 - 1.0)
    assert not policy.must_stand_down(held, clock.monotonic(), TTL)
    assert (held.epoch, held.revision) == (7, 9)


def test_a_pause_past_the_ttl_means_standing_down_at_once_on_waking() -> None:
    # Given an active that renewed, then was frozen (SIGSTOP) for longer than the TTL
    clock = FakeClock()
    held = _won_at(clock)
    clock.advance(TTL + 30.0)
    # Then its first look at its own clock says stop, before any renewal is tried
    assert policy.must_stand_down(held, clock.monotonic(), TTL)


def test_a_standby_takes_over_only_a_key_nobody_holds() -> None:
    holder = Holder(id="a", host="h", epoch=3, role="active")
    assert not policy.may_take_over(Seen(kind="held", revision=4, holder=holder))
    for kind in ("absent", "expired", "released"):
        assert policy.may_take_over(Seen(kind=kind, revision=5))  # type: ignore[arg-type]


def test_only_an_expiry_makes_the_winner_wait_before_acting() -> None:
    assert policy.campaign_delay_s(Seen(kind="expired", revision=5), 2.0) == 2.0
    assert policy.campaign_delay_s(Seen(kind="released", revision=5), 2.0) == 0.0
    assert policy.campaign_delay_s(Seen(kind="absent"), 2.0) == 0.0


def test_an_unanswered_renewal_that_landed_is_adopted_from_its_send() -> None:
    clock = FakeClock()
    held = policy.won(7, clock.monotonic())
    clock.advance(5.0)
    sent = clock.monotonic()
    mine = Holder(id="me", host="h", epoch=7, role="active")
    after = policy.after_ambiguous(held, Seen(kind="held", revision=11, holder=mine), "me", sent)
    assert after == policy.Held(epoch=7, revision=11, sent_at=sent)


def test_an_unanswered_renewal_that_did_not_land_keeps_the_old_deadline() -> None:
    held = policy.won(7, 100.0)
    mine = Holder(id="me", host="h", epoch=7, role="active")
    seen = Seen(kind="held", revision=7, holder=mine)
    assert policy.after_ambiguous(held, seen, "me", 105.0) == held


def test_an_unanswered_renewal_over_another_holder_or_an_expiry_is_a_deposition() -> None:
    held = policy.won(7, 100.0)
    other = Holder(id="other", host="h", epoch=12, role="active")
    assert (
        policy.after_ambiguous(held, Seen(kind="held", revision=12, holder=other), "me", 1) is None
    )
    assert policy.after_ambiguous(held, Seen(kind="expired", revision=13), "me", 1.0) is None
    # Its own id at another epoch: this process lost the lease and won it again meanwhile.
    stale = Holder(id="me", host="h", epoch=20, role="active")
    assert (
        policy.after_ambiguous(held, Seen(kind="held", revision=21, holder=stale), "me", 1) is None
    )
