"""The business day: a cutoff time in a time zone, and the window of UTC instants each day covers.

Business day D runs from the previous calendar day's cutoff (included) to D's cutoff (excluded), both in
local time. With 22:00 Europe/Paris, day 2026-03-29 is [2026-03-28 22:00 CET, 2026-03-29 22:00 CEST): 23 hours,
because the clocks went forward that night; day 2026-10-25 is 25 hours. A transaction at exactly 22:00:00
belongs to the next day. A cutoff that falls in a gap of the local clock moves forward by the gap
(02:30 on the night the clocks go from 02:00 to 03:00 is taken as 03:30), as Python's zoneinfo reads it.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from processor.errors import InvalidRequest

DEFAULT_CUTOFF = "22:00"
DEFAULT_TIMEZONE = "Europe/Paris"


def parse_cutoff(text: str) -> dt.time:
    """'22:00' or '22:00:30' -> time; one clear error otherwise."""
    try:
        parts = [int(p) for p in text.split(":")]
        if len(parts) not in (2, 3):
            raise ValueError
        return dt.time(*parts)
    except (ValueError, TypeError):
        raise InvalidRequest(f"cutoff {text!r} is not a time of day; write it as HH:MM, e.g. 22:00") from None


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(f"time zone {name!r} is unknown; use an IANA name such as Europe/Paris") from None


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except (ValueError, TypeError):
        raise InvalidRequest(f"date {text!r} is not a date; write it as YYYY-MM-DD") from None


@functools.lru_cache(maxsize=4096)
def _cutoff_utc(cutoff: str, timezone: str, day: dt.date) -> dt.datetime:
    """The UTC instant of `day`'s cutoff; a day of a million transactions asks for the same few days."""
    # fold=0: an ambiguous time (clocks back) is its first occurrence; a time in a gap moves forward.
    return dt.datetime.combine(day, parse_cutoff(cutoff), tzinfo=ZoneInfo(timezone)).astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    """Cutoff and time zone; maps instants to business days and days to UTC windows."""

    cutoff: str = DEFAULT_CUTOFF
    timezone: str = DEFAULT_TIMEZONE

    def __post_init__(self) -> None:
        parse_cutoff(self.cutoff)
        parse_timezone(self.timezone)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _cutoff_at(self, day: dt.date) -> dt.datetime:
        return _cutoff_utc(self.cutoff, self.timezone, day)

    def window(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        """[start, end) of business day `day`, in UTC."""
        return self._cutoff_at(day - dt.timedelta(days=1)), self._cutoff_at(day)

    def day_of(self, instant: dt.datetime) -> dt.date:
        """The business day an instant (timezone-aware) belongs to."""
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=dt.UTC)
        day = instant.astimezone(self.zone).date()
        start, end = self.window(day)
        if instant >= end:
            return day + dt.timedelta(days=1)
        if instant < start:
            return day - dt.timedelta(days=1)
        return day

    def hours(self, day: dt.date) -> float:
        start, end = self.window(day)
        return (end - start).total_seconds() / 3600
