"""A generated dataset of about 100,000 events, checked against pandas over the same files.

The events are spread over three hours (a few exactly on the boundaries), some products are
left out of the catalog, and part of the traffic is delivered twice. The expected files are
computed here from the generated files alone, with pandas and without any project code.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import orjson
import pandas as pd
import pytest

from clickstream.generate import generate, write_dataset
from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.reports.hourly import write_reports
from clickstream.reports.hours import parse_hour
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect
from clickstream.store.writer import write_batch

START = datetime(2026, 11, 24, 10, tzinfo=UTC)
HOURS = ["2026-11-24T10", "2026-11-24T11", "2026-11-24T12"]


def _with_timestamps(lines: list[bytes], rng: np.random.Generator) -> list[bytes]:
    """Stamp events over three hours and a little beyond, some exactly on hour boundaries."""
    base = np.datetime64(START.replace(tzinfo=None), "ms")
    offsets = rng.integers(-60_000, 3 * 3_600_000 + 60_000, size=len(lines))
    offsets[::97] = rng.integers(0, 4, size=offsets[::97].size) * 3_600_000
    stamps = np.datetime_as_string(base + offsets.astype("timedelta64[ms]"), unit="ms")
    out = []
    for line, stamp in zip(lines, stamps, strict=True):
        event = orjson.loads(line)
        event["timestamp"] = f"{stamp}Z"
        out.append(orjson.dumps(event))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    rng = np.random.default_rng(5)
    data = generate(users=3000, products=800, categories=30, views=92_000, orders=8_000, seed=5)
    folder = tmp_path_factory.mktemp("generated")
    paths = write_dataset(data, folder)
    paths["views"].write_bytes(b"\n".join(_with_timestamps(data.views, rng)) + b"\n")
    paths["orders"].write_bytes(b"\n".join(_with_timestamps(data.orders, rng)) + b"\n")
    catalog = data.catalog[::-1][: int(len(data.catalog) * 0.97)]  # the rest: not listed
    paths["catalog"].write_text(
        "productid,categoryid\n" + "".join(f"{p},{c}\n" for p, c in catalog)
    )
    return paths


def _ingest(settings, paths) -> None:
    catalog = pd.read_csv(paths["catalog"])
    views = paths["views"].read_bytes().splitlines()
    orders = paths["orders"].read_bytes().splitlines()
    with connect(settings) as conn:
        for start in range(0, max(len(views), len(orders)), 20_000):
            raw = [
                RawEvent(Kind.VIEW, "v", 0, start + i, line, None)
                for i, line in enumerate(views[start : start + 20_000])
            ] + [
                RawEvent(Kind.ORDER, "o", 0, start + i, line, None)
                for i, line in enumerate(orders[start : start + 20_000])
            ]
            batch = clean_batch(raw)
            assert not batch.rejects
            write_batch(conn, batch)
            if start == 20_000:
                write_batch(conn, batch)  # a redelivered batch changes nothing
        upsert_products(conn, list(catalog.itertuples(index=False, name=None)))


# -- the independent computation ------------------------------------------------------------


def _number(identifier: str) -> int:
    return int(identifier.rsplit("-", 1)[1])


def _frames(paths):
    views = pd.DataFrame(
        [
            (e["userid"], e["properties"]["productid"], e["timestamp"])
            for e in map(orjson.loads, paths["views"].read_bytes().splitlines())
        ],
        columns=["user", "product", "time"],
    )
    lines = pd.DataFrame(
        [
            (e["userid"], item["productid"], e["timestamp"])
            for e in map(orjson.loads, paths["orders"].read_bytes().splitlines())
            for item in e["lineitems"]
        ],
        columns=["user", "product", "time"],
    )
    catalog = pd.read_csv(paths["catalog"]).rename(
        columns={"productid": "product", "categoryid": "category"}
    )
    for frame in (views, lines):
        frame["hour"] = pd.to_datetime(frame["time"], utc=True).dt.strftime("%Y-%m-%dT%H")
    return views, lines, catalog


def _top_csv(events: pd.DataFrame, catalog: pd.DataFrame) -> str:
    listed = events.merge(catalog, on="product")
    users = listed.groupby(["category", "product"])["user"].nunique().reset_index()
    users["number"] = users["product"].map(_number)
    out = io.StringIO()
    out.write("category,1,2,3,4,5,6,7,8,9,10\n")
    for category in sorted(users["category"].unique(), key=_number):
        ranked = users[users["category"] == category].sort_values(
            ["user", "number"], ascending=[False, True]
        )
        products = list(ranked["product"][:10])
        out.write(",".join([category, *products, *[""] * (10 - len(products))]) + "\n")
    return out.getvalue()


def _conversion_csv(views: pd.DataFrame, lines: pd.DataFrame, catalog: pd.DataFrame) -> str:
    seen = views.merge(catalog, on="product").groupby("category").size()
    bought = lines.merge(catalog, on="product").groupby("category").size()
    rows = ["category,views,purchases,conversion_rate\n"]
    for category in sorted(set(seen.index) | set(bought.index), key=_number):
        v, p = int(seen.get(category, 0)), int(bought.get(category, 0))
        rate = ""
        if v:
            rate = str((Decimal(p) / Decimal(v)).quantize(Decimal("0.0001"), ROUND_HALF_UP))
        rows.append(f"{category},{v},{p},{rate}\n")
    return "".join(rows)


def _expected(paths, hour: str | None) -> dict[str, str]:
    views, lines, catalog = _frames(paths)
    if hour is not None:
        views, lines = views[views["hour"] == hour], lines[lines["hour"] == hour]
    suffix = hour or "all"
    return {
        f"category_viewed_{suffix}.csv": _top_csv(views, catalog),
        f"category_bought_{suffix}.csv": _top_csv(lines, catalog),
        f"conversion_rates_{suffix}.csv": _conversion_csv(views, lines, catalog),
    }


def test_reports_of_generated_hours_match_pandas(pipeline, files, tmp_path):
    _ingest(pipeline.settings, files)
    for hour in [*HOURS, None]:
        summary = write_reports(
            pipeline.settings, None if hour is None else parse_hour(hour), tmp_path
        )
        expected = _expected(files, hour)
        for name, content in expected.items():
            assert (tmp_path / name).read_text() == content, name
        rows = list(csv.reader(io.StringIO(expected[f"conversion_rates_{hour or 'all'}.csv"])))
        assert summary.categories == len(rows) - 1
        assert summary.left_out_products > 0
    assert len(list(tmp_path.iterdir())) == 3 * (len(HOURS) + 1)
