"""Retention arithmetic: calendar units on the controller's wall clock, ISO instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from privacy_pipeline.processors.instants import (
    CalendarDuration,
    InstantError,
    end_of_calendar_year,
    format_instant,
    parse_instant,
)

STOCKHOLM = ZoneInfo("Europe/Stockholm")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=STOCKHOLM)  # type: ignore[misc]


# -- calendar durations --------------------------------------------------------------------


def test_one_month_after_january_31_is_february_29_in_a_leap_year() -> None:
    start = local(2024, 1, 31, 12, 0)
    end = CalendarDuration(months=1).after(start, STOCKHOLM)
    assert end.astimezone(STOCKHOLM) == local(2024, 2, 29, 12, 0)
    assert format_instant(end) == "2024-02-29T11:00:00Z"


def test_one_month_after_january_31_is_february_28_in_a_common_year() -> None:
    end = CalendarDuration(months=1).after(local(2023, 1, 31, 12, 0), STOCKHOLM)
    assert format_instant(end) == "2023-02-28T11:00:00Z"


def test_month_end_is_counted_on_the_local_calendar_not_the_utc_one() -> None:
    # 2024-01-31T23:30Z is already 2024-02-01 00:30 in Stockholm: one month on is March 1st.
    end = CalendarDuration(months=1).after(utc("2024-01-31T23:30:00+00:00"), STOCKHOLM)
    assert end.astimezone(STOCKHOLM) == local(2024, 3, 1, 0, 30)
    assert format_instant(end) == "2024-02-29T23:30:00Z"


def test_years_across_leap_day() -> None:
    leap_day = local(2024, 2, 29, 9, 0)
    assert CalendarDuration(years=1).after(leap_day, STOCKHOLM).astimezone(STOCKHOLM) == local(
        2025, 2, 28, 9, 0
    )
    assert CalendarDuration(years=4).after(leap_day, STOCKHOLM).astimezone(STOCKHOLM) == local(
        2028, 2, 29, 9, 0
    )
    # 7 years from a leap day lands on Feb 28 (no Feb 29 in 2031).
    assert format_instant(CalendarDuration(years=7).after(leap_day, STOCKHOLM)) == (
        "2031-02-28T08:00:00Z"
    )


def test_months_are_never_a_count_of_days() -> None:
    start = local(2024, 1, 15, 10, 0)
    assert CalendarDuration(months=24).after(start, STOCKHOLM).astimezone(STOCKHOLM) == local(
        2026, 1, 15, 10, 0
    )
    assert CalendarDuration(months=36).after(start, STOCKHOLM).astimezone(STOCKHOLM) == local(
        2027, 1, 15, 10, 0
    )


def test_six_months_from_winter_keeps_local_wall_time_across_dst() -> None:
    winter = utc("2024-01-15T09:00:00+00:00")  # 10:00 CET (UTC+1)
    summer = CalendarDuration(months=6).after(winter, STOCKHOLM)
    assert summer.astimezone(STOCKHOLM) == local(2024, 7, 15, 10, 0)  # 10:00 CEST (UTC+2)
    assert format_instant(summer) == "2024-07-15T08:00:00Z"
    assert winter.astimezone(STOCKHOLM).utcoffset() == timedelta(hours=1)
    assert summer.astimezone(STOCKHOLM).utcoffset() == timedelta(hours=2)
    assert summer.tzinfo is UTC


def test_one_day_across_spring_forward_is_23_hours_of_elapsed_time() -> None:
    before = utc("2024-03-30T12:00:00+00:00")  # 13:00 CET
    after = CalendarDuration(days=1).after(before, STOCKHOLM)
    assert format_instant(after) == "2024-03-31T11:00:00Z"  # 13:00 CEST
    assert after - before == timedelta(hours=23)


def test_weeks_and_days_add_up() -> None:
    span = CalendarDuration(weeks=1, days=2)
    assert format_instant(span.after(utc("2024-05-01T00:00:00+00:00"), STOCKHOLM)) == (
        "2024-05-10T00:00:00Z"
    )


def test_zero_duration_is_at_once_and_returns_the_same_instant() -> None:
    zero = CalendarDuration()
    at = utc("2024-05-01T10:11:12+00:00")
    assert zero.is_zero()
    assert zero.after(at, STOCKHOLM) == at
    assert zero.describe() == "at once"


def test_describe() -> None:
    assert CalendarDuration(months=24).describe() == "24 months"
    assert CalendarDuration(years=1).describe() == "1 year"
    assert CalendarDuration(years=5, months=1, days=2).describe() == "5 years, 1 month, 2 days"
    assert not CalendarDuration(hours=1).is_zero()


# -- end of calendar year ------------------------------------------------------------------


def test_end_of_calendar_year_in_stockholm() -> None:
    end = end_of_calendar_year(utc("2024-07-01T00:00:00+00:00"), STOCKHOLM)
    assert end == utc("2024-12-31T23:00:00+00:00")
    assert format_instant(end) == "2024-12-31T23:00:00Z"


def test_end_of_calendar_year_uses_the_local_year() -> None:
    # 2024-12-31T23:30Z is 2025-01-01 00:30 in Stockholm: its year is 2025.
    end = end_of_calendar_year(utc("2024-12-31T23:30:00+00:00"), STOCKHOLM)
    assert format_instant(end) == "2025-12-31T23:00:00Z"
    # 2024-12-31T22:59Z is still 2024 locally.
    end = end_of_calendar_year(utc("2024-12-31T22:59:00+00:00"), STOCKHOLM)
    assert format_instant(end) == "2024-12-31T23:00:00Z"


def test_bookkeeping_act_end_seven_years_after_the_calendar_year() -> None:
    invoice = utc("2024-03-02T10:00:00+00:00")
    end = CalendarDuration(years=7).after(end_of_calendar_year(invoice, STOCKHOLM), STOCKHOLM)
    assert format_instant(end) == "2031-12-31T23:00:00Z"


# -- parse and format ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:00:00Z", "2024-01-15T10:00:00Z"),
        ("2024-01-15T10:00:00+01:00", "2024-01-15T09:00:00Z"),
        ("2024-07-15T10:00:00+02:00", "2024-07-15T08:00:00Z"),
        ("2024-01-15T10:00:00-05:30", "2024-01-15T15:30:00Z"),
        ("2024-01-15T10:00:00.250Z", "2024-01-15T10:00:00.250Z"),
    ],
)
def test_parse_instant_returns_utc(text: str, expected: str) -> None:
    value = parse_instant(text)
    assert value.tzinfo is UTC
    assert format_instant(value) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-15T10:00:00",  # naive
        "2024-01-15",  # a date, no zone
        "yesterday",
        "",
        "2024-13-01T00:00:00Z",
        "2024-01-15T25:00:00Z",
        "anna@example.se",
    ],
)
def test_parse_instant_rejects_naive_or_garbage(text: str) -> None:
    with pytest.raises(InstantError):
        parse_instant(text)


def test_parse_instant_rejects_non_strings() -> None:
    with pytest.raises(InstantError):
        parse_instant(12345)  # type: ignore[arg-type]


def test_parse_instant_error_names_the_problem_not_the_value() -> None:
    with pytest.raises(InstantError) as info:
        parse_instant("2024-01-15T10:00:00")
    assert "zone" in str(info.value)
    assert "2024-01-15" not in str(info.value)


def test_format_instant_uses_z_and_seconds() -> None:
    assert format_instant(datetime(2024, 1, 15, 10, 0, tzinfo=UTC)) == "2024-01-15T10:00:00Z"


def test_format_instant_converts_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    assert format_instant(datetime(2024, 1, 15, 10, 0, tzinfo=cet)) == "2024-01-15T09:00:00Z"
    assert format_instant(local(2024, 7, 15, 10, 0)) == "2024-07-15T08:00:00Z"


def test_format_instant_milliseconds_only_when_present() -> None:
    assert format_instant(datetime(2024, 1, 15, 10, 0, 0, 123000, tzinfo=UTC)) == (
        "2024-01-15T10:00:00.123Z"
    )
    assert format_instant(datetime(2024, 1, 15, 10, 0, 0, 5000, tzinfo=UTC)) == (
        "2024-01-15T10:00:00.005Z"
    )


def test_parse_then_format_round_trips() -> None:
    for text in ("2030-12-31T23:59:59Z", "2020-02-29T00:00:00.001Z"):
        assert format_instant(parse_instant(text)) == text


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_parse_instant_out_of_range_is_an_instant_error(text: str) -> None:
    # Valid ISO 8601 whose UTC form falls outside datetime's range: OverflowError today.
    with pytest.raises(InstantError):
        parse_instant(text)
