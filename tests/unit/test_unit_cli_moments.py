"""`--since`, `--until` and `--older-than`: what the command line accepts as a moment or
an age, and the one line it says about the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest

from orchestration.cli.moments import AGE, MOMENT, parse_age


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        ("30d", timedelta(days=30)),
        (" 2w ", timedelta(weeks=2)),
    ],
)
def test_ages(text: str, age: timedelta) -> None:
    assert parse_age(text) == age
    assert AGE.convert(text, None, None) == age


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("30 days", "not a duration"),
        ("-3d", "not a duration"),
        ("0d", "more than 0"),
        ("99999w", "at most 100 years"),
    ],
)
def test_bad_ages(text: str, problem: str) -> None:
    with pytest.raises(click.BadParameter, match=problem):
        AGE.convert(text, None, None)


def test_a_moment_is_an_age_ago_or_an_iso_date_utc_unless_it_says() -> None:
    before = datetime.now(UTC)
    ago = MOMENT.convert("24h", None, None)
    assert before - timedelta(hours=24, seconds=5) < ago <= datetime.now(UTC) - timedelta(hours=24)
    assert MOMENT.convert("2026-12-01", None, None) == datetime(2026, 12, 1, tzinfo=UTC)
    assert MOMENT.convert("2026-12-01T08:00+02:00", None, None) == datetime(
        2026, 12, 1, 6, tzinfo=UTC
    )
    with pytest.raises(click.BadParameter, match="neither a duration ago"):
        MOMENT.convert("yesterday", None, None)
