"""The event formats and the cleaning rules: one pure function over a batch.

`clean_batch` takes raw Kafka records and returns rows ready for storage plus rejects with a
reason. It does no I/O and keeps no state, so the stream consumer, a backfill and a Spark
job all apply exactly the same rules.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

import msgspec
import orjson

from clickstream.ingest.event_time import DEFAULT_RULE, BatchTimes, EventTimeRule, to_epoch_ms
from clickstream.ingest.raw import Kind, RawEvent

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_QUANTITY",
    "CleanBatch",
    "Kind",
    "OrderLineRow",
    "RawEvent",
    "Reason",
    "Reject",
    "ViewRow",
    "clean_batch",
]

MAX_ID_LENGTH = 128
MAX_QUANTITY = 10_000
# C0 and C1 control characters, DEL, and lone surrogates (which PostgreSQL cannot store).
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


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


def _plain_view(raw: RawEvent, max_event_bytes: int, times: BatchTimes) -> ViewRow | None:
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
    now_ms = to_epoch_ms(now or datetime.now(UTC))
    batch = CleanBatch()
    times = BatchTimes(now_ms, rule or DEFAULT_RULE, batch.replaced_times)
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
