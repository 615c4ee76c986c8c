"""Report windows: one UTC hour `[H, H+1h)` or all time, and the names of their files."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = [
    "HOUR",
    "FILE_KINDS",
    "file_names",
    "hours_between",
    "last_complete_hour",
    "parse_hour",
    "suffix",
]

HOUR = timedelta(hours=1)
HOUR_FORMAT = "%Y-%m-%dT%H"
_HOUR_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}")
FILE_KINDS = ("viewed", "bought", "conversion")
_PREFIXES = {
    "viewed": "category_viewed",
    "bought": "category_bought",
    "conversion": "conversion_rates",
}


def parse_hour(text: str) -> datetime:
    """`2026-11-24T13` as the UTC hour it starts; ValueError names the expected form."""
    problem = ValueError(f"expected an hour as YYYY-MM-DDTHH (UTC), got {text!r}")
    if not _HOUR_TEXT.fullmatch(text):
        raise problem
    try:
        moment = datetime.strptime(text, HOUR_FORMAT)
    except ValueError:
        raise problem from None
    return moment.replace(tzinfo=UTC)


def last_complete_hour(now: datetime) -> datetime:
    """The latest hour that has ended at `now`."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - HOUR


def hours_between(first: datetime, last: datetime) -> list[datetime]:
    """Every hour from `first` to `last`, both included."""
    hours = []
    while first <= last:
        hours.append(first)
        first += HOUR
    return hours


def suffix(hour: datetime | None) -> str:
    """The part of the file names that says which window: `2026-11-24T13`, or `all`."""
    return "all" if hour is None else hour.astimezone(UTC).strftime(HOUR_FORMAT)


def file_names(hour: datetime | None) -> dict[str, str]:
    """The three files of one window, by kind."""
    return {kind: f"{prefix}_{suffix(hour)}.csv" for kind, prefix in _PREFIXES.items()}
