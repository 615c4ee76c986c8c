"""The product catalog file: `productid,categoryid` CSV, validated before anything is loaded."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from clickstream.errors import UsageError
from clickstream.ingest.cleaning import MAX_ID_LENGTH

__all__ = ["read_catalog"]

_MAX_ERRORS_SHOWN = 5


def _problem(value: str, name: str) -> str | None:
    if not value:
        return f"{name} is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{name} is longer than {MAX_ID_LENGTH} characters"
    if any(ord(ch) < 32 or 127 <= ord(ch) <= 159 for ch in value):
        return f"{name} contains control characters"
    return None


def read_catalog(path: Path) -> list[tuple[str, str]]:
    """Parse and validate the whole file; raise UsageError naming the bad lines.

    A catalog is all or nothing: loading half a file would silently move products between
    "in the catalog" and "left out of the reports". A product listed twice keeps its last
    category, as an upsert of the file line by line would.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != ["productid", "categoryid"]:
        raise UsageError(f"{path}: the first line must be the header 'productid,categoryid'")
    rows: dict[str, str] = {}
    errors = []
    for number, record in enumerate(reader, start=2):
        if not record:
            continue
        if len(record) != 2:
            errors.append(f"line {number}: expected 2 fields, found {len(record)}")
            continue
        productid, categoryid = (field.strip() for field in record)
        problem = _problem(productid, "productid") or _problem(categoryid, "categoryid")
        if problem:
            errors.append(f"line {number}: {problem}")
            continue
        rows[productid] = categoryid
    if errors:
        shown = "; ".join(errors[:_MAX_ERRORS_SHOWN])
        more = (
            f" (and {len(errors) - _MAX_ERRORS_SHOWN} more)"
            if len(errors) > _MAX_ERRORS_SHOWN
            else ""
        )
        raise UsageError(f"{path}: nothing loaded, {len(errors)} bad lines: {shown}{more}")
    return list(rows.items())
