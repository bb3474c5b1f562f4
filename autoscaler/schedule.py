"""Scheduled capacity floors: at least ``min`` instances for ``duration`` from
each time a cron expression matches (a known quiz, a daily batch).

In the policy's configuration::

    [[policy.schedule]]
    cron = "0 9 * * 1-5"      # minute hour day-of-month month day-of-week, UTC
    min = 4
    duration = "2h"           # or "90m", "1h30m", "45s", or seconds as a number

The five fields are the standard ones: minute 0-59, hour 0-23, day of month
1-31, month 1-12, day of week 0-7 (0 and 7 are Sunday). Each is ``*``, a
number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma-separated
list of those; names (``MON``, ``JAN``) are not accepted. As in cron, when
both day fields are restricted a day matches either; times are UTC. A window
opens at each matching minute and stays open ``duration`` seconds; windows
that overlap give the highest ``min``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12))
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def _values(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    """The values one cron field allows; :class:`ValueError` naming what is wrong."""
    out: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() else 0 if step_text else 1
        if step < 1:
            raise ValueError(f"{name}: bad step in {part!r}")
        if body == "*":
            first, last = lo, hi
        elif re.fullmatch(r"\d+-\d+", body):
            first, last = (int(v) for v in body.split("-"))
        elif body.isdigit():
            first = last = int(body)
            if step_text:
                last = hi  # "a/n": from a to the end, every n
        else:
            raise ValueError(f"{name}: {part!r} is not *, a number, a range or a step")
        if not lo <= first <= last <= hi:
            raise ValueError(f"{name}: {part!r} is outside {lo}-{hi}")
        out.update(range(first, last + 1, step))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed five-field cron expression."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday ... 6 = Sunday (Python's)
    any_day: bool  # day of month is *
    any_weekday: bool  # day of week is *

    @classmethod
    def parse(cls, text: str) -> Cron:
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(
                f"cron {text!r}: needs 5 fields (minute hour day-of-month month day-of-week)"
            )
        minutes, hours, days, months = (
            _values(f, *spec) for f, spec in zip(fields[:4], _FIELDS, strict=True)
        )
        cron_days = _values(fields[4], "day of week", 0, 7)  # 0 and 7: Sunday
        weekdays = frozenset((d - 1) % 7 for d in cron_days)
        return cls(
            minutes=minutes,
            hours=hours,
            days=days,
            months=months,
            weekdays=weekdays,
            any_day=fields[2] == "*",
            any_weekday=fields[4] == "*",
        )

    def day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        by_date, by_weekday = day.day in self.days, day.weekday() in self.weekdays
        if self.any_day or self.any_weekday:
            return by_date and by_weekday
        return by_date or by_weekday  # both restricted: either, as in cron

    def last_at_or_before(self, when: datetime, *, within: timedelta) -> datetime | None:
        """The latest matching minute at or before ``when``, no earlier than
        ``when - within``; ``None`` when there is none."""
        earliest = when - within
        day = when.replace(hour=0, minute=0, second=0, microsecond=0)
        while day + timedelta(days=1) > earliest:
            if self.day_matches(day):
                for hour in sorted(self.hours, reverse=True):
                    for minute in sorted(self.minutes, reverse=True):
                        at = day.replace(hour=hour, minute=minute)
                        if at <= when:
                            return at if at >= earliest else None
            day -= timedelta(days=1)
        return None


def parse_duration(value: str | float) -> float:
    """Seconds from a number or ``"2h"``, ``"90m"``, ``"1h30m"``, ``"45s"``."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.fullmatch(value.strip())
        if not value.strip() or m is None:
            raise ValueError(f"duration {value!r}: a number of seconds or e.g. '2h', '1h30m'")
        h, mins, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mins * 60 + s
    if not seconds > 0:
        raise ValueError(f"duration {value!r} must be positive")
    return seconds


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduledFloor:
    """At least ``min`` instances for ``duration`` from each time ``cron`` matches (UTC)."""

    cron: str
    min: int
    duration: str | float

    def __post_init__(self) -> None:
        Cron.parse(self.cron)
        parse_duration(self.duration)
        if self.min < 0:
            raise ValueError("min must not be negative")

    def open_at(self, now: float) -> bool:
        """Whether a window of this entry is open at ``now`` (seconds since the epoch)."""
        seconds = parse_duration(self.duration)
        when = datetime.fromtimestamp(now, tz=UTC)
        start = Cron.parse(self.cron).last_at_or_before(when, within=timedelta(seconds=seconds))
        return start is not None and (when - start).total_seconds() < seconds


def scheduled_floor(entries: Sequence[ScheduledFloor], now: float) -> tuple[int, str]:
    """The highest ``min`` of the entries whose window is open at ``now`` (0:
    none), and the cron expression that sets it."""
    best, why = 0, ""
    for entry in entries:
        if entry.min > best and entry.open_at(now):
            best, why = entry.min, entry.cron
    return best, why


__all__ = ["Cron", "ScheduledFloor", "parse_duration", "scheduled_floor"]
