"""Moments and ages on the command line: `--since 24h`, `--since 2026-12-01T08:00`,
`--older-than 30d`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Beyond this an age means nothing to a history, and datetime arithmetic overflows.
_LONGEST = timedelta(days=100 * 365)


def parse_age(text: str) -> timedelta | None:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` as a duration (None: not one)."""
    found = _DURATION.match(text)
    if found is None:
        return None
    return timedelta(seconds=float(found[1]) * _UNIT_SECONDS[found[2]])


class Age(click.ParamType[timedelta]):
    """A duration: a number and a unit, s, m, h, d or w."""

    name = "AGE"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        age = parse_age(str(value))
        if age is None:
            self.fail(f"{value!r} is not a duration such as 30m, 12h or 30d", param, ctx)
        if age <= timedelta(0) or age > _LONGEST:
            self.fail(f"{value!r} must be more than 0 and at most 100 years", param, ctx)
        return age


class Moment(click.ParamType[datetime]):
    """A moment: that long ago (``24h``, ``7d``), or an ISO 8601 date or time
    (``2026-12-01``, ``2026-12-01T08:00``; UTC unless it names its offset)."""

    name = "WHEN"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value)
        age = parse_age(text)
        if age is not None:
            if age > _LONGEST:
                self.fail(f"{text!r} is more than 100 years ago", param, ctx)
            return datetime.now(UTC) - age
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            self.fail(
                f"{text!r} is neither a duration ago (24h, 7d) nor an ISO date or time "
                "(2026-12-01, 2026-12-01T08:00)",
                param,
                ctx,
            )
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


AGE = Age()
MOMENT = Moment()
