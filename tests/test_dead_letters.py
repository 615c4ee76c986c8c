"""Dead letters through a real broker and database: listed safely, replayed exactly once,
exported to fix by hand and sent back."""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import orjson
import psycopg
import pytest
from conftest import Pipeline, settings_env

from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.lifecycle.replay import CHUNK, ndjson_line, replay
from clickstream.store.db import connect
from clickstream.store.dead_letters import Selection
from clickstream.store.recompute import differences
from clickstream.store.writer import write_batch
from clickstream.util.printable import preview

SMALL = 300  # ingest.max_event_bytes while the events arrive


def view(messageid: str, user: str, product: str, padding: int = 0) -> bytes:
    event = {
        "event": "ProductView",
        "messageid": messageid,
        "userid": user,
        "properties": {"productid": product},
        "context": {"source": "web"},
    }
    if padding:
        event["note"] = "x" * padding
    return orjson.dumps(event)


@pytest.fixture
def arrived(pipeline) -> Pipeline:
    """Views through Kafka under a small size limit: five oversize ones (one of them an
    event whose messageid is also stored in a small form), two other bad records, three good."""
    small = dataclasses.replace(pipeline.settings, ingest_max_event_bytes=SMALL)
    p = Pipeline(small, pipeline.bootstrap)
    p.produce_views(
        [view(f"big-{i}", f"user-{i}", "product-1", padding=400) for i in range(4)]
        + [view("twice", "user-9", "product-2", padding=400), view("twice", "user-9", "product-2")]
        + [b'{"event": "ProductView", "messageid": "broken"', b"\x1b[31m\xff not utf-8"]
        + [view(f"ok-{i}", "user-5", "product-3") for i in range(3)]
    )
    stats = p.consume()
    assert (stats.views, stats.dead_letters) == (4, 7)
    return p


def outcomes(p: Pipeline) -> dict[str, str | None]:
    rows = p.query(
        "SELECT split_part(reason, ':', 1), replay_outcome, payload FROM dead_letters ORDER BY id"
    )
    found: dict[str, str | None] = {}
    for code, outcome, payload in rows:
        try:
            key = orjson.loads(bytes(payload))["messageid"]
        except orjson.JSONDecodeError:
            key = code
        found[key] = outcome
    return found


def test_replay_stores_each_oversize_event_once_and_leaves_the_rest(arrived):
    p = arrived
    raised = Pipeline(dataclasses.replace(p.settings, ingest_max_event_bytes=65536), p.bootstrap)

    result = raised.cli("dead-letters", "replay", "--reason", "oversize")
    assert result.returncode == 0, result.stderr
    assert "replayed 5 dead letters: 4 stored, 1 already stored, 0 still rejected" in result.stdout
    ids = [row[0] for row in p.query("SELECT messageid FROM product_views ORDER BY 1")]
    assert ids == ["big-0", "big-1", "big-2", "big-3", "ok-0", "ok-1", "ok-2", "twice"]
    assert outcomes(p) == {
        **{f"big-{i}": "stored" for i in range(4)},
        "twice": "duplicate",
        "bad-json": None,
        "bad-utf8": None,
    }
    # the derived tables followed, as at ingest
    with connect(p.settings, autocommit=True) as conn:
        assert differences(conn) == []
    assert p.query("SELECT sum(views)::int, sum(viewers)::int FROM report_view_hours") == p.query(
        "SELECT count(*)::int, count(DISTINCT (userid, productid,"
        " date_trunc('hour', viewed_at, 'UTC')))::int FROM product_views"
    )
    assert p.query(
        "SELECT userid, productid FROM user_product_hours WHERE productid <> 'product-3' ORDER BY 1"
    ) == [(f"user-{i}", "product-1") for i in range(4)] + [("user-9", "product-2")]

    marked = p.query("SELECT id, replayed_at FROM dead_letters ORDER BY id")
    again = raised.cli("dead-letters", "replay", "--reason", "oversize")
    assert again.returncode == 0, again.stderr
    assert "nothing to replay" in again.stdout
    everything = raised.cli("dead-letters", "replay")
    assert "replayed 2 dead letters: 0 stored, 0 already stored, 2 still rejected" in (
        everything.stdout
    )
    assert p.query("SELECT count(*)::int FROM product_views") == [(8,)]
    assert p.query(
        "SELECT id, replayed_at FROM dead_letters WHERE replay_outcome IN"
        " ('stored', 'duplicate') ORDER BY id"
    ) == [row for row in marked if row[1] is not None]
    assert outcomes(p)["bad-json"].startswith("still-rejected: bad-json: ")


def test_replay_under_the_same_limit_keeps_them_pending(arrived):
    result = arrived.cli("dead-letters", "replay", "--reason", "oversize")
    # "twice" is still too big, but its messageid is stored: nothing left to do for it
    assert "replayed 5 dead letters: 0 stored, 1 already stored, 4 still rejected" in (
        result.stdout
    )
    assert "still rejected as oversize: 4 (kept, pending)" in result.stdout
    assert arrived.query("SELECT count(*)::int FROM product_views") == [(4,)]
    assert outcomes(arrived)["big-0"] == "still-rejected: oversize: 576 bytes, the limit is 300"
    again = arrived.cli("dead-letters", "replay", "--reason", "oversize")
    assert "replayed 4 dead letters" in again.stdout  # still pending, tried again


def test_list_counts_by_reason_then_shows_the_newest_escaped(arrived):
    result = arrived.cli("dead-letters", "list", "--limit", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "7 dead letters by reason (pending / replayed):"
    assert lines[1].split() == ["oversize", "5", "0"]
    assert sorted(line.split()[0] for line in lines[2:4]) == ["bad-json", "bad-utf8"]
    assert len(lines) == 5 + 2 * 2  # two entries of two lines each
    shown = arrived.cli("dead-letters", "list", "--reason", "bad-utf8").stdout
    assert "\x1b" not in shown
    assert shown.splitlines()[-1].strip() == "16 bytes: \\x1b[31m\\xff not utf-8"

    listed = orjson.loads(
        arrived.cli("dead-letters", "list", "--json", "--reason", "bad-utf8").stdout
    )
    assert listed["counts"] == [{"reason": "bad-utf8", "pending": 1, "replayed": 0}]
    (entry,) = listed["entries"]
    assert entry["payload_head"] == "\\x1b[31m\\xff not utf-8"
    assert entry["topic"] == arrived.settings.kafka_views_topic
    assert entry["payload_bytes"] == 16


def test_export_fix_and_produce_back(arrived, tmp_path):
    p = arrived
    out = tmp_path / "oversize.json"
    result = p.cli("dead-letters", "export", "--reason", "oversize", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == 5
    fixed = []
    for line in lines:
        event = orjson.loads(line)
        del event["note"]  # the fix: drop the field that made it too big
        fixed.append(orjson.dumps(event))
    out.write_bytes(b"\n".join(fixed) + b"\n")
    sent = p.cli(
        "produce",
        str(out),
        "--topic",
        p.settings.kafka_views_topic,
        "--max-speed",
        "--keep-timestamps",
    )
    assert sent.returncode == 0, sent.stderr
    assert p.consume().views == 4  # "twice" was stored already
    replayed = p.cli("dead-letters", "replay", "--reason", "oversize")
    assert "replayed 5 dead letters: 0 stored, 5 already stored" in replayed.stdout
    assert p.query("SELECT count(*)::int FROM product_views") == [(8,)]


def test_export_refuses_to_mix_topics_and_bad_arguments_exit_2(arrived, tmp_path):
    p = arrived
    p.produce_orders([b"not an order"])
    p.consume()
    mixed = p.cli("dead-letters", "export", "--out", str(tmp_path / "x.json"))
    assert mixed.returncode == 2
    assert "export one topic at a time with --topic" in mixed.stderr
    assert len(mixed.stderr.strip().splitlines()) == 1
    for args in (
        ["list", "--since", "yesterday"],
        ["list", "--reason", "nonsense"],
        ["replay", "--reason", "oversize", "--id", "1"],
        ["replay", "--id", "999999"],
    ):
        result = p.cli("dead-letters", *args)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "payload,line",
    [
        (b'{"a": 1}', b'{"a": 1}'),
        (b'{"a":\n 1,\r\n "b": "x"}', b'{"a":  1,   "b": "x"}'),
        (b"not json\nat all", None),
        (b'{"a": "\xff"}', None),
        (b"   ", None),
        (b"plain text", b"plain text"),
    ],
)
def test_an_export_line_is_the_payload_or_nothing(payload, line):
    assert ndjson_line(payload) == line


def test_preview_escapes_whatever_the_bytes():
    assert preview(b"ok \\ \x1b[2J\xe2\x80\xae\xc5\x9f\xff", 64) == "ok \\\\ \\x1b[2J\\u202eş\\xff"
    assert preview(b"abcdef", 3) == "abc…"
    assert preview("ş".encode() * 2, 3) == "ş\\xc5…"


def test_an_oversize_order_is_replayed_whole_with_its_counters(pipeline):
    p = pipeline
    order = orjson.dumps(
        {
            "event": "OrderEvent",
            "messageid": "order-1",
            "userid": "user-1",
            "orderid": 7,
            "lineitems": [{"productid": f"product-{i}", "quantity": 1} for i in range(40)],
            "timestamp": "2026-11-24T13:30:00.000Z",
        }
    )
    # the second has no timestamp of its own: the Kafka record's time, kept, is its time
    unstamped = orjson.loads(order) | {"messageid": "order-2"}
    del unstamped["timestamp"]
    record_ms = int(datetime(2026, 11, 18, 8, 26, 40, tzinfo=UTC).timestamp() * 1000)
    topic = p.settings.kafka_orders_topic
    raw = [
        RawEvent(Kind.ORDER, topic, 0, 0, order, None),
        RawEvent(Kind.ORDER, topic, 0, 1, orjson.dumps(unstamped), record_ms),
    ]
    with connect(p.settings, autocommit=True) as conn:
        write_batch(conn, clean_batch(raw, max_event_bytes=1000))
        raised = dataclasses.replace(p.settings, ingest_max_event_bytes=65536)
        summary = replay(conn, raised, Selection(reason="oversize"))
        assert (summary.stored, summary.duplicate, summary.still_rejected) == (2, 0, {})
        assert differences(conn) == []
        again = replay(conn, raised, Selection(reason="oversize"))
        assert again.total == 0
    assert p.query(
        "SELECT messageid, count(*)::int, min(ordered_at) = max(ordered_at),"
        " to_char(min(ordered_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
        " FROM order_lines GROUP BY 1 ORDER BY 1"
    ) == [
        ("order-1", 40, True, "2026-11-24 13:30:00"),
        ("order-2", 40, True, "2026-11-18 08:26:40"),
    ]
    assert p.query("SELECT sum(order_lines)::int, sum(buyers)::int FROM report_order_hours") == [
        (80, 80)
    ]


def test_an_event_the_database_refuses_on_replay_stays_pending_and_the_rest_is_stored(pipeline):
    p = pipeline
    topic = p.settings.kafka_views_topic
    raw = [
        RawEvent(Kind.VIEW, topic, 0, i, view(f"m-{i}", "user-1", product, padding=400), None)
        for i, product in enumerate(["product-1", "refused", "product-2"])
    ]
    with connect(p.settings, autocommit=True) as conn:
        write_batch(conn, clean_batch(raw, max_event_bytes=SMALL))
        conn.execute(
            "ALTER TABLE product_views ADD CONSTRAINT no_refused CHECK (productid <> 'refused')"
        )
        raised = dataclasses.replace(p.settings, ingest_max_event_bytes=65536)
        summary = replay(conn, raised, Selection(reason="oversize"))
        assert (summary.stored, summary.still_rejected) == (2, {"rejected-by-database": 1})
        assert differences(conn) == []
    assert p.query("SELECT messageid FROM product_views ORDER BY 1") == [("m-0",), ("m-2",)]
    (outcome,) = p.query('SELECT replay_outcome FROM dead_letters WHERE "offset" = 1')[0]
    assert outcome.startswith("still-rejected: rejected-by-database: ")
    assert "no_refused" in outcome


def _event_table_reads(conn) -> int:
    """Scans of any partition of the event tables so far, as the statistics count them."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    (reads,) = conn.execute(
        "SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)::int"
        " FROM pg_stat_user_tables"
        " WHERE relname LIKE 'product\\_views\\_p%' OR relname LIKE 'order\\_lines\\_p%'"
    ).fetchone()
    return reads


def test_replay_asks_the_key_tables_and_keys_agree_with_rows(arrived):
    """Is this messageid stored: the indexed key tables answer, no event partition is read
    (they are partitioned by day and have no index by messageid); keys and rows agree."""
    p = arrived
    raised = dataclasses.replace(p.settings, ingest_max_event_bytes=65536)
    with connect(p.settings, autocommit=True) as conn, connect(p.settings) as stats:
        conn.execute("SELECT pg_stat_force_next_flush()")
        before = _event_table_reads(stats)
        summary = replay(conn, raised, Selection())
        conn.execute("SELECT pg_stat_force_next_flush()")
        assert (summary.stored, summary.duplicate) == (4, 1)
        assert _event_table_reads(stats) == before
    assert p.query(
        "SELECT messageid, (viewed_at AT TIME ZONE 'UTC')::date FROM product_views ORDER BY 1"
    ) == p.query("SELECT messageid, day FROM view_messageids ORDER BY 1")


# -- concurrent and interrupted replays ----------------------------------------------------------

MANY = 5_000  # oversize dead letters: three chunks of a replay


def _many_oversize(p: Pipeline) -> Pipeline:
    """MANY oversize views dead-lettered (each a distinct event; every tenth user the same
    product, so the derived tables and counters see repeats); the settings that replay them."""
    topic = p.settings.kafka_views_topic
    raw = [
        RawEvent(Kind.VIEW, topic, n % 4, n, view(f"m-{n}", f"user-{n % 50}", "p-1", 400), None)
        for n in range(MANY)
    ]
    with connect(p.settings, autocommit=True) as conn:
        written = write_batch(conn, clean_batch(raw, max_event_bytes=SMALL))
    assert written.dead_letters == MANY
    return Pipeline(dataclasses.replace(p.settings, ingest_max_event_bytes=65536), p.bootstrap)


def _replay_process(p: Pipeline) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clickstream", "dead-letters", "replay"],
        env=settings_env(p.settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stored_exactly_once(p: Pipeline) -> None:
    assert p.query("SELECT count(*), count(DISTINCT messageid) FROM product_views") == [
        (MANY, MANY)
    ]
    assert p.query("SELECT replay_outcome, count(*) FROM dead_letters GROUP BY 1") == [
        ("stored", MANY)
    ]
    with connect(p.settings, autocommit=True) as conn:
        assert differences(conn) == []
    assert p.query("SELECT sum(views)::int, sum(viewers)::int FROM report_view_hours") == [
        (MANY, 50)
    ]


def test_two_replays_at_once_store_each_event_once(pipeline):
    """Two processes replay the same dead letters at the same time: they share them out
    (each takes what the other has not locked), and every event is stored once."""
    raised = _many_oversize(pipeline)
    first, second = _replay_process(raised), _replay_process(raised)
    outputs = [process.communicate(timeout=300) for process in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), outputs
    stored = 0
    for stdout, _ in outputs:
        found = re.search(r"replayed [\d,]+ dead letters: ([\d,]+) stored", stdout)
        stored += int(found.group(1).replace(",", "")) if found else 0
    assert stored == MANY, outputs
    _stored_exactly_once(raised)


def test_a_replay_killed_in_the_middle_of_a_chunk_then_run_again_stores_each_once(pipeline):
    """SIGKILL while a chunk's transaction is open (held on a key the test locks): nothing
    of that chunk is committed, and the next replay stores every event exactly once."""
    raised = _many_oversize(pipeline)
    with psycopg.connect(raised.settings.database_url) as blocker:
        # An uncommitted key of one event of the second chunk: that chunk's write waits on it.
        blocker.execute("INSERT INTO view_messageids (messageid, day) VALUES ('m-2500', now())")
        killed = _replay_process(raised)
        try:
            deadline = time.monotonic() + 120
            while not raised.query(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )[0][0]:
                assert killed.poll() is None, killed.communicate()
                assert time.monotonic() < deadline, "the replay never reached the locked key"
                time.sleep(0.05)
            killed.send_signal(signal.SIGKILL)
            killed.communicate(timeout=30)
        finally:
            if killed.poll() is None:
                killed.kill()
        blocker.rollback()
    first_chunk = raised.query("SELECT count(*) FROM product_views")[0][0]
    assert first_chunk == CHUNK  # the chunk before the killed one was committed
    result = raised.cli("dead-letters", "replay")
    assert result.returncode == 0, result.stderr
    assert f"{MANY - first_chunk:,} stored" in result.stdout
    _stored_exactly_once(raised)
