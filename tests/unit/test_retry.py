"""The one back-off function, `Retry-After` parsing and the msgspec error parser."""

from __future__ import annotations

from email.utils import formatdate

import msgspec
import pytest

from conveyor import retry, validate

NOW = 1_700_000_000.0


def test_backoff_doubles_from_the_base_and_stops_at_the_cap() -> None:
    assert [retry.backoff_s(0.5, 8.0, n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert retry.backoff_s(2.0, 60.0, 10_000) == 60.0
    assert retry.backoff_s(2.0, 60.0, -3) == 2.0


def test_jitter_takes_its_share_off_the_delay() -> None:
    assert retry.backoff_s(0.5, 8.0, 2, jitter=0.25) == 1.5
    assert retry.backoff_s(0.5, 8.0, 9, jitter=0.5) == 4.0


@pytest.mark.parametrize("jitter", [-0.1, 1.0, 2.0])
def test_jitter_outside_zero_to_one_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        retry.backoff_s(0.5, 8.0, 1, jitter)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry.retry_after_s("12", NOW) == 12.0
    assert retry.retry_after_s(" 1.5 ", NOW) == 1.5
    assert retry.retry_after_s(formatdate(NOW + 40, usegmt=True), NOW) == 40.0
    assert retry.retry_after_s(formatdate(NOW - 40, usegmt=True), NOW) == 0.0
    assert retry.retry_after_s("-5", NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "Mon, 99 Foo 2024"])
def test_an_unusable_retry_after_is_none(value: str | None) -> None:
    assert retry.retry_after_s(value, NOW) is None


class Inner(msgspec.Struct):
    count: int


class Outer(msgspec.Struct):
    items: list[Inner]


def _message(data: bytes) -> str:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(data, type=Outer)
    return str(caught.value)


def test_msgspec_errors_split_into_a_field_path_and_the_problem() -> None:
    assert validate.msgspec_error(_message(b'{"items": [{"count": "x"}]}')) == (
        "items[0].count",
        "Expected `int`, got `str`",
    )
    assert validate.msgspec_error(_message(b'{"items": [{}]}')) == ("items[0].count", "missing")
    assert validate.msgspec_error(_message(b"{}")) == ("items", "missing")
    assert validate.msgspec_error(_message(b"[]")) == ("", "Expected `object`, got `array`")
