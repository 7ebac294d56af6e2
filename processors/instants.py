"""Retention arithmetic: calendar durations in the controller's time zone, ISO instants.

Months and years are calendar units (2024-01-31 + 1 month = 2024-02-29), added to the
wall-clock time in the controller's zone and converted back to UTC, so a retention of
"24 months after the visit" ends at the same local time of day it began, across DST.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta


class InstantError(ValueError):
    """An instant that is not ISO 8601 with a zone."""


@dataclass(frozen=True, slots=True)
class CalendarDuration:
    """A span in calendar units; zero means 'at once'."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0

    def is_zero(self) -> bool:
        """True when the span is empty."""
        return not (self.years or self.months or self.weeks or self.days or self.hours)

    def after(self, instant: datetime, zone: ZoneInfo) -> datetime:
        """The instant this span after `instant`, counted on the wall clock of `zone`."""
        if self.is_zero():
            return instant
        local = instant.astimezone(zone)
        # relativedelta adds years and months to the date first, then the rest to the
        # wall time; doing the calendar part per date (cached) gives the same result.
        day = _shift_date(local.date(), self.years, self.months)
        wall = datetime.combine(day, local.time())
        if self.weeks or self.days or self.hours:
            wall += timedelta(weeks=self.weeks, days=self.days, hours=self.hours)
        return wall.replace(tzinfo=zone).astimezone(UTC)

    def describe(self) -> str:
        """Human words, e.g. '24 months' or '5 years'."""
        parts = [
            f"{n} {unit if n == 1 else unit + 's'}"
            for n, unit in (
                (self.years, "year"),
                (self.months, "month"),
                (self.weeks, "week"),
                (self.days, "day"),
                (self.hours, "hour"),
            )
            if n
        ]
        return ", ".join(parts) if parts else "at once"


@lru_cache(maxsize=65536)
def _shift_date(day: date, years: int, months: int) -> date:
    if not (years or months):
        return day
    shifted: date = day + relativedelta(years=years, months=months)
    return shifted


def end_of_calendar_year(instant: datetime, zone: ZoneInfo) -> datetime:
    """The first instant of the next calendar year in `zone`, as UTC."""
    year = instant.astimezone(zone).year
    return datetime(year + 1, 1, 1, tzinfo=zone).astimezone(UTC)


def parse_instant(text: str) -> datetime:
    """Parse an ISO 8601 instant that names its zone; return it in UTC."""
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise InstantError("not an ISO 8601 instant") from exc
    if value.tzinfo is None or value.utcoffset() is None:
        raise InstantError("ISO 8601 instant without a zone")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InstantError("ISO 8601 instant out of range") from None


def format_instant(instant: datetime) -> str:
    """UTC ISO 8601 with a Z; fractions (milli- or microseconds) only when present."""
    return _format(instant.astimezone(UTC))


@lru_cache(maxsize=65536)
def _format(instant: datetime) -> str:
    if instant.microsecond % 1000:
        text = instant.isoformat(timespec="microseconds")
    elif instant.microsecond:
        text = instant.isoformat(timespec="milliseconds")
    else:
        text = instant.isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_DAY = timedelta(days=1)
