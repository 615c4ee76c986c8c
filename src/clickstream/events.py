"""The event formats and the cleaning rules: one pure function over a batch.

`clean_batch` takes raw Kafka records and returns rows ready for storage plus rejects with a
reason. It does no I/O and keeps no state, so the stream consumer, a backfill and a Spark
job all apply exactly the same rules.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import msgspec
import orjson

__all__ = [
    "DEFAULT_MAX_AHEAD_MS",
    "DEFAULT_MAX_BEHIND_MS",
    "EARLIEST_MS",
    "MAX_ID_LENGTH",
    "MAX_QUANTITY",
    "DEFAULT_RULE",
    "CleanBatch",
    "EventTimeRule",
    "Kind",
    "OrderLineRow",
    "RawEvent",
    "Reason",
    "Reject",
    "TimeFix",
    "ViewRow",
    "clean_batch",
    "epoch_ms",
    "event_time",
    "format_timestamp",
]

MAX_ID_LENGTH = 128
MAX_QUANTITY = 10_000
# The event-time rule's defaults (settings events.max_ahead_seconds, events.max_behind_seconds)
# and the earliest time an event can have: nothing this pipeline sees happened before 2000.
DEFAULT_MAX_AHEAD_MS = 5_000
DEFAULT_MAX_BEHIND_MS = 7 * 86_400_000
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z

# C0 and C1 control characters, DEL, and lone surrogates (which PostgreSQL cannot store).
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class Kind(StrEnum):
    """What a topic carries; the consumer knows it from the topic name."""

    VIEW = "ProductView"
    ORDER = "OrderEvent"


_VIEW = Kind.VIEW  # an enum member looked up once: class attribute access is slow in 3.11


class Reason(StrEnum):
    """Why an event was dead-lettered. Stored as `code: detail`."""

    OVERSIZE = "oversize"
    EMPTY = "empty"
    BAD_UTF8 = "bad-utf8"
    BAD_JSON = "bad-json"
    NOT_AN_OBJECT = "not-an-object"
    WRONG_EVENT = "wrong-event"
    MISSING_FIELD = "missing-field"
    BAD_FIELD = "bad-field"
    BAD_LINEITEMS = "bad-lineitems"
    REJECTED_BY_DATABASE = "rejected-by-database"


class RawEvent(NamedTuple):
    kind: Kind
    topic: str
    partition: int
    offset: int
    value: bytes | None
    kafka_timestamp_ms: int | None


class ViewRow(NamedTuple):
    messageid: str
    userid: str
    productid: str
    source: str
    viewed_at: str


class OrderLineRow(NamedTuple):
    messageid: str
    line: int
    orderid: str
    userid: str
    productid: str
    quantity: int
    ordered_at: str


class Reject(NamedTuple):
    topic: str
    partition: int
    offset: int
    payload: bytes
    reason: str
    # The record's own time, kept so that a replay cleans the payload as it was received.
    kafka_timestamp_ms: int | None = None


@dataclass
class CleanBatch:
    """Rows to store, rejects to dead-letter, and how many stored events' own timestamps
    were replaced by their record's, per (topic, `TimeFix`)."""

    views: list[ViewRow] = field(default_factory=list)
    order_lines: list[OrderLineRow] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    orders: int = 0
    replaced_times: Counter[tuple[str, str]] = field(default_factory=Counter)


class _Invalid(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")


def format_timestamp(moment: datetime) -> str:
    """The one timestamp format of the project: UTC, milliseconds, `Z`."""
    # isoformat keeps four digits for years before 1000, which PostgreSQL needs: it reads
    # "1-01-01" as the year 2001.
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


def _ident(container: dict[str, Any], key: str, path: str) -> str:
    value = container.get(key)
    # The common case, checked by two C calls: printable ASCII has no control characters.
    if (
        type(value) is str
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isascii()
        and value.isprintable()
    ):
        return value
    if value is None:
        raise _Invalid(Reason.MISSING_FIELD, path)
    if type(value) is not str:
        raise _Invalid(Reason.BAD_FIELD, f"{path} must be a string, got {_type_name(value)}")
    if not value:
        raise _Invalid(Reason.BAD_FIELD, f"{path} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise _Invalid(Reason.BAD_FIELD, f"{path} is longer than {MAX_ID_LENGTH} characters")
    if _FORBIDDEN.search(value):
        raise _Invalid(Reason.BAD_FIELD, f"{path} contains control characters")
    return value


def _type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


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


def _format_ms(ms: int) -> str:
    return format_timestamp(_EPOCH + ms * _MS)


class _EventTimes:
    """The rule as one batch applies it: one clock reading, and the replacements counted."""

    __slots__ = ("now_ms", "replaced", "rule")

    def __init__(self, now_ms: int, rule: EventTimeRule, replaced: Counter) -> None:
        self.now_ms = now_ms
        self.rule = rule
        self.replaced = replaced

    def of(self, stamp: Any, raw: RawEvent) -> str:
        # `event_time`'s common case inlined, per event: a canonical stamp of a second seen
        # before, near a plausible record time.
        record_ms = raw[5]
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
                    return stamp
        at, fix = event_time(stamp, record_ms, self.now_ms, self.rule)
        if fix is not None:
            self.replaced[raw.topic, fix] += 1
        return at


def _parse(raw: RawEvent, max_event_bytes: int) -> dict[str, Any]:
    value = raw.value
    if not value:
        raise _Invalid(Reason.EMPTY, "the record has no value")
    if len(value) > max_event_bytes:
        raise _Invalid(Reason.OVERSIZE, f"{len(value)} bytes, the limit is {max_event_bytes}")
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise _Invalid(Reason.BAD_UTF8, f"invalid byte at position {uexc.start}") from None
        raise _Invalid(Reason.BAD_JSON, str(exc)) from None
    if type(event) is not dict:
        raise _Invalid(Reason.NOT_AN_OBJECT, f"got a JSON {_type_name(event)}")
    kind = event.get("event")
    if kind != raw.kind:  # a StrEnum compares as its text
        shown = repr(kind) if type(kind) is str else _type_name(kind)
        raise _Invalid(Reason.WRONG_EVENT, f"expected {raw.kind} on {raw.topic}, got {shown}")
    return event


def _orderid(event: dict[str, Any]) -> str:
    orderid = event.get("orderid")
    if orderid is None:
        raise _Invalid(Reason.MISSING_FIELD, "orderid")
    if type(orderid) is int:
        return str(orderid)
    if type(orderid) is str:
        return _ident(event, "orderid", "orderid")
    raise _Invalid(
        Reason.BAD_FIELD, f"orderid must be a string or an integer, got {_type_name(orderid)}"
    )


def _lineitems(event: dict[str, Any]) -> list[tuple[str, int]]:
    items = event.get("lineitems")
    if items is None:
        raise _Invalid(Reason.MISSING_FIELD, "lineitems")
    if type(items) is not list:
        raise _Invalid(Reason.BAD_LINEITEMS, f"lineitems must be an array, got {_type_name(items)}")
    if not items:
        raise _Invalid(Reason.BAD_LINEITEMS, "lineitems is empty")
    lines = []
    for index, item in enumerate(items):
        path = f"lineitems[{index}]"
        if type(item) is not dict:
            raise _Invalid(
                Reason.BAD_LINEITEMS, f"{path} must be an object, got {_type_name(item)}"
            )
        productid = _ident(item, "productid", f"{path}.productid")
        quantity = item.get("quantity")
        if type(quantity) is not int:
            raise _Invalid(
                Reason.BAD_LINEITEMS,
                f"{path}.quantity must be an integer, got {_type_name(quantity)}",
            )
        if not 1 <= quantity <= MAX_QUANTITY:
            raise _Invalid(
                Reason.BAD_LINEITEMS, f"{path}.quantity {quantity} is outside 1..{MAX_QUANTITY}"
            )
        lines.append((productid, quantity))
    return lines


class _Product(msgspec.Struct, forbid_unknown_fields=True):
    productid: str


class _Source(msgspec.Struct, forbid_unknown_fields=True):
    source: str


class _PlainView(msgspec.Struct, forbid_unknown_fields=True):
    """A view with exactly the contract's fields, each of its type: nearly every view."""

    event: str
    messageid: str
    userid: str
    properties: _Product
    context: _Source
    timestamp: str | None = None


_PLAIN_VIEW = msgspec.json.Decoder(_PlainView)


def _plain_view(raw: RawEvent, max_event_bytes: int, times: _EventTimes) -> ViewRow | None:
    """The row of a plain view, decoded straight into its fields; None when it is not plain.

    It costs about half of what the general rules do, and they decide anything unusual: an
    ASCII payload with no field beyond the contract's can only give the same answer both ways
    (a decoder that skips unknown fields would not check them as `orjson` does), and a test
    checks it.
    """
    value = raw.value
    if not value or len(value) > max_event_bytes or not value.isascii():
        return None
    try:
        view = _PLAIN_VIEW.decode(value)
    except msgspec.MsgspecError:
        return None
    messageid, userid = view.messageid, view.userid
    productid, source = view.properties.productid, view.context.source
    if (
        view.event == _VIEW
        and 0 < len(messageid) <= MAX_ID_LENGTH
        and 0 < len(userid) <= MAX_ID_LENGTH
        and 0 < len(productid) <= MAX_ID_LENGTH
        and 0 < len(source) <= MAX_ID_LENGTH
        and messageid.isprintable()
        and userid.isprintable()
        and productid.isprintable()
        and source.isprintable()
    ):
        at = times.of(view.timestamp, raw)
        # tuple.__new__: the named tuple's own constructor is a Python call, per view
        return tuple.__new__(ViewRow, (messageid, userid, productid, source, at))
    return None


def clean_batch(
    records: list[RawEvent],
    *,
    max_event_bytes: int = 65536,
    now: datetime | None = None,
    rule: EventTimeRule | None = None,
) -> CleanBatch:
    """Split a batch into storable rows and rejects; never raises for bad input.

    Event times follow `event_time` with `rule`; `now` (default: the clock) stands in for
    the record's time where that is no usable reference.
    """
    now_ms = ((now or datetime.now(UTC)) - _EPOCH) // _MS
    batch = CleanBatch()
    times = _EventTimes(now_ms, rule or DEFAULT_RULE, batch.replaced_times)
    views, order_lines = batch.views, batch.order_lines
    for raw in records:
        if raw.kind is _VIEW:
            row = _plain_view(raw, max_event_bytes, times)
            if row is not None:
                views.append(row)
                continue
        try:
            event = _parse(raw, max_event_bytes)
            messageid = _ident(event, "messageid", "messageid")
            userid = _ident(event, "userid", "userid")
            if raw.kind is _VIEW:
                properties = event.get("properties")
                context = event.get("context")
                if type(properties) is not dict:
                    raise _Invalid(Reason.MISSING_FIELD, "properties.productid")
                if type(context) is not dict:
                    raise _Invalid(Reason.MISSING_FIELD, "context.source")
                productid = _ident(properties, "productid", "properties.productid")
                source = _ident(context, "source", "context.source")
                at = times.of(event.get("timestamp"), raw)
                views.append(ViewRow(messageid, userid, productid, source, at))
            else:
                orderid = _orderid(event)
                lines = _lineitems(event)
                at = times.of(event.get("timestamp"), raw)
                batch.orders += 1
                for line, (productid, quantity) in enumerate(lines, start=1):
                    order_lines.append(
                        OrderLineRow(messageid, line, orderid, userid, productid, quantity, at)
                    )
        except _Invalid as exc:
            batch.rejects.append(
                Reject(
                    raw.topic,
                    raw.partition,
                    raw.offset,
                    raw.value or b"",
                    str(exc),
                    raw.kafka_timestamp_ms,
                )
            )
    return batch
