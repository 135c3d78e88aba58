"""The business day: cutoff and time zone, DST days, the instant exactly at the cutoff."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.errors import InvalidRequest
from processor.settlement.calendar import BusinessCalendar

PARIS = BusinessCalendar("22:00", "Europe/Paris")


def test_an_ordinary_day_is_24_hours_from_the_previous_cutoff() -> None:
    start, end = PARIS.window(dt.date(2026, 11, 29))
    assert start == dt.datetime(2026, 11, 28, 21, 0, tzinfo=dt.UTC)  # 22:00 CET
    assert end == dt.datetime(2026, 11, 29, 21, 0, tzinfo=dt.UTC)


def test_spring_forward_day_is_23_hours_and_fall_back_day_25() -> None:
    assert PARIS.hours(dt.date(2026, 3, 29)) == 23
    assert PARIS.hours(dt.date(2026, 10, 25)) == 25
    assert PARIS.hours(dt.date(2026, 3, 30)) == 24


def test_a_transaction_exactly_at_the_cutoff_belongs_to_the_next_day() -> None:
    cutoff = dt.datetime(2026, 11, 29, 21, 0, tzinfo=dt.UTC)
    assert PARIS.day_of(cutoff) == dt.date(2026, 11, 30)
    assert PARIS.day_of(cutoff - dt.timedelta(microseconds=1)) == dt.date(2026, 11, 29)


def test_cutoff_inside_the_dst_gap_moves_forward_by_the_gap() -> None:
    early = BusinessCalendar("02:30", "Europe/Paris")
    start, end = early.window(dt.date(2026, 3, 29))
    assert end == dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC)  # 03:30 CEST
    assert early.window(dt.date(2026, 3, 30))[0] == end


@pytest.mark.parametrize("cutoff, zone", [("25:00", "UTC"), ("22h", "UTC"), ("22:00", "Mars/Olympus")])
def test_bad_settings_are_refused_with_a_reason(cutoff: str, zone: str) -> None:
    with pytest.raises(InvalidRequest):
        BusinessCalendar(cutoff, zone)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 12, 31)),
    st.sampled_from(["00:00", "06:30", "22:00", "23:59"]),
    st.sampled_from(["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]),
)
def test_every_instant_falls_in_exactly_the_window_of_its_day(naive: dt.datetime, cutoff: str, zone: str) -> None:
    calendar = BusinessCalendar(cutoff, zone)
    instant = naive.replace(tzinfo=dt.UTC)
    day = calendar.day_of(instant)
    start, end = calendar.window(day)
    assert start <= instant < end
    # Consecutive days tile time: no gap, no overlap.
    assert calendar.window(day + dt.timedelta(days=1))[0] == end
