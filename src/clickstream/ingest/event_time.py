"""The one event-time rule, shared by the consumer, the Spark engine, the live view and replay.

An event's time is the producer's `timestamp` when it is plausible next to the Kafka record's
own; otherwise the record's. One rule everywhere means a report hour, a recently-viewed list
and the live window always agree on when a view happened.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from clickstream.ingest.raw import RawEvent

__all__ = [
    "DEFAULT_MAX_AHEAD_MS",
    "DEFAULT_MAX_BEHIND_MS",
    "DEFAULT_RULE",
    "EARLIEST_MS",
    "EventTimeRule",
    "BatchTimes",
    "TimeFix",
    "epoch_ms",
    "event_time",
    "format_timestamp",
    "to_epoch_ms",
]

# The event-time rule's defaults (settings events.max_ahead_seconds, events.max_behind_seconds)
# and the earliest time an event can have: nothing this pipeline sees happened before 2000.
DEFAULT_MAX_AHEAD_MS = 5_000
DEFAULT_MAX_BEHIND_MS = 7 * 86_400_000
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z


def format_timestamp(moment: datetime) -> str:
    """The one timestamp format of the project: UTC, milliseconds, `Z`."""
    # isoformat keeps four digits for years before 1000, which PostgreSQL needs: it reads
    # "1-01-01" as the year 2001.
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


class EventTimeRule(NamedTuple):
    """How far a producer's `timestamp` may be from its Kafka record's own and still count.

    Ahead is tight: an event cannot be sent before it happened, so more than a clock's skew
    ahead is a broken clock (a stamp in 2099 would sit on top of a user's recently-viewed
    list and open report hours that have not happened). Behind is generous: late events are
    real, and an event re-sent later keeps its original time.
    """

    max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS
    max_behind_ms: int = DEFAULT_MAX_BEHIND_MS


DEFAULT_RULE = EventTimeRule()


class TimeFix(StrEnum):
    """Why an event's own `timestamp` was not used and its record's time was taken."""

    MISSING = "missing"
    BROKEN = "broken"
    TOO_OLD = "before-2000"
    AHEAD = "ahead"
    BEHIND = "behind"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_seconds_cache: dict[str, int] = {}


def epoch_ms(stamp: str) -> int | None:
    """`2026-11-24T13:00:00.123Z`, the canonical form, in epoch milliseconds; None when it
    is not a valid time in that form.

    The whole-second part is parsed once per second of event time, not once per event.
    """
    if not (
        len(stamp) == 24
        and stamp[-1] == "Z"
        and stamp[10] == "T"
        and stamp[19] == "."
        and stamp[4] == stamp[7] == "-"
        and stamp[13] == stamp[16] == ":"
        and stamp.isascii()
    ):
        return None
    head = stamp[:19]
    seconds = _seconds_cache.get(head)
    if seconds is None:
        try:
            moment = datetime.fromisoformat(head).replace(tzinfo=UTC)
        except ValueError:
            return None
        if len(_seconds_cache) >= 4096:
            _seconds_cache.clear()
        seconds = _seconds_cache[head] = (moment - _EPOCH) // timedelta(seconds=1)
    millis = stamp[20:23]
    return seconds * 1000 + int(millis) if millis.isdigit() else None


def _other_stamp(stamp: Any) -> tuple[int, str] | None:
    """Any other ISO-8601 text as (epoch ms, canonical form); None when it is not one."""
    if type(stamp) is not str or not 10 <= len(stamp) <= 40:
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:  # e.g. 0001-01-01T00:00+01:00 has no UTC form
        return (moment - _EPOCH) // _MS, format_timestamp(moment)
    except OverflowError:
        return None


def event_time(
    stamp: Any, record_ms: int | None, now_ms: int, rule: EventTimeRule | None = None
) -> tuple[str, TimeFix | None]:
    """The one event-time rule: (the event time, why the stamp was replaced or None).

    The producer's `timestamp` counts when it is an ISO-8601 time from the year 2000 on, at
    most `rule.max_ahead_ms` ahead of the Kafka record's timestamp and at most
    `rule.max_behind_ms` behind it. Otherwise the event takes the record's timestamp. A
    record time that is missing, before 2000 or ahead of `now_ms` (the clock of whoever
    applies the rule) by more than `max_ahead_ms` is no reference: then `now_ms` bounds the
    stamp ahead, nothing but the year 2000 bounds it behind, and replaces it when unusable.
    """
    rule = rule or DEFAULT_RULE
    max_behind_ms = rule.max_behind_ms
    if record_ms is None or not EARLIEST_MS <= record_ms <= now_ms + rule.max_ahead_ms:
        # No record time to judge by: the clock bounds the stamp ahead, and nothing behind
        # (an old event cleaned again later, say replayed from the dead letters, is old).
        record_ms = now_ms
        max_behind_ms = record_ms - EARLIEST_MS
    at = epoch_ms(stamp) if type(stamp) is str else None
    if at is not None:
        text = stamp
    else:
        other = _other_stamp(stamp)
        if other is None:
            fix = TimeFix.MISSING if stamp is None else TimeFix.BROKEN
            return _format_ms(record_ms), fix
        at, text = other
    if at < EARLIEST_MS:
        return _format_ms(record_ms), TimeFix.TOO_OLD
    if at > record_ms + rule.max_ahead_ms:
        return _format_ms(record_ms), TimeFix.AHEAD
    if at < record_ms - max_behind_ms:
        return _format_ms(record_ms), TimeFix.BEHIND
    return text, None


def to_epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS


def _format_ms(ms: int) -> str:
    return format_timestamp(_EPOCH + ms * _MS)


class BatchTimes:
    """The rule as one batch applies it: one clock reading, and the replacements counted."""

    __slots__ = ("_kept", "now_ms", "replaced", "rule")

    def __init__(self, now_ms: int, rule: EventTimeRule, replaced: Counter) -> None:
        self.now_ms = now_ms
        self.rule = rule
        self.replaced = replaced
        # The last (stamp, record time) kept as it was: a busy producer stamps hundreds of
        # events in the same millisecond, and the same pair gets the same answer.
        self._kept: tuple[Any, int | None] = ("", -1)

    def of(self, stamp: Any, raw: RawEvent) -> str:
        # `event_time`'s common case inlined, per event: a canonical stamp of a second seen
        # before, near a plausible record time.
        record_ms = raw[5]
        kept_stamp, kept_record = self._kept
        if record_ms == kept_record and stamp == kept_stamp:
            return stamp
        if type(stamp) is str and record_ms is not None and len(stamp) == 24:
            seconds = _seconds_cache.get(stamp[:19])
            millis = stamp[20:23]
            if (
                seconds is not None
                and stamp[19] == "."
                and stamp[23] == "Z"
                and millis.isdigit()
                and stamp.isascii()
            ):
                at = seconds * 1000 + int(millis)
                rule = self.rule
                if (
                    at >= EARLIEST_MS
                    and EARLIEST_MS <= record_ms <= self.now_ms + rule.max_ahead_ms
                    and record_ms - rule.max_behind_ms <= at <= record_ms + rule.max_ahead_ms
                ):
                    self._kept = (stamp, record_ms)
                    return stamp
        at, fix = event_time(stamp, record_ms, self.now_ms, self.rule)
        if fix is not None:
            self.replaced[raw.topic, fix] += 1
        return at
