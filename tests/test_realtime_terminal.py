"""`clickstream realtime`'s panels: whatever an event or the catalog names is shown as written.

User ids and platforms reach the terminal view through the consumer's own cleaning rules,
categories through the catalog's; both allow brackets, quotes, `<script>` and emoji, none
of which may ever be read as Rich markup or crash the view.
"""

from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from conftest import missing_dependency, screenshot_path
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.event_time import epoch_ms, format_timestamp
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.realtime.source import LiveState
from clickstream.realtime.terminal import render
from clickstream.realtime.window import SlidingWindow
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect

HOSTILE = [
    "[/]",
    "[red]ios",
    "[bold]x[/bold]",
    "[link=x]a[/]",
    ":smile:",
    "\\[b]",
    "<script>",
    "</panel>",
    "'\"`",
    "🛒🇹🇷",
    "[/red",
]


def shown(user: str, category: str, platform: str) -> str | None:
    """The terminal view of one view, cleaned as the consumer does, as plain text; None
    when cleaning rejects the view (it is dead-lettered, never shown)."""
    value = orjson.dumps(
        {
            "event": "ProductView",
            "messageid": "m-1",
            "userid": user,
            "properties": {"productid": "product-1"},
            "context": {"source": platform},
            "timestamp": format_timestamp(datetime.now(UTC)),
        }
    )
    return shown_raw(value, category, (user, platform))


def shown_raw(value: bytes, category: str, expected: tuple[str, str] | None = None) -> str | None:
    """The same for the raw bytes of a record, whatever they are."""
    batch = clean_batch([RawEvent(Kind.VIEW, "product-views", 0, 0, value, None)])
    if not batch.views:
        return None
    messageid, userid, _, source, at = batch.views[0]
    assert expected is None or (userid, source) == expected
    at_ms = epoch_ms(at)
    window = SlidingWindow(300_000)
    window.add([(messageid, userid, category, source, at_ms)], at_ms)
    state = LiveState(window.snapshot(at_ms), catching_up=False, connected=True, received=1)
    console = Console(width=240, record=True, file=io.StringIO(), color_system=None)
    console.print(render(state, [1], height=20), height=20)
    return console.export_text()


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_shown_as_written(name):
    text = shown(f"user-{name}", name, name)
    assert text is not None
    assert f"user-{name}" in text
    lines = text.splitlines()
    assert sum(name in line for line in lines) >= 2  # the category's and the platform's rows
    assert "1 distinct users" in text


# Ids of at most 10 characters fit the 24 cells of the names' column, emoji included; markup's
# own characters come up often.
CHARACTERS = st.characters(exclude_categories=["Cs"])  # no JSON can carry a lone surrogate
NAMES = st.text(st.sampled_from("[]/=:#\\<>'\"") | CHARACTERS, min_size=1, max_size=10)
# The catalog refuses C0 and C1 control characters; anything else may name a category.
CATEGORIES = NAMES.filter(lambda s: not any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in s))


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)
@given(user=NAMES, category=CATEGORIES, platform=NAMES)
def test_any_name_reaches_the_terminal_view_verbatim(user, category, platform):
    text = shown(user, category, platform)
    assume(text is not None)
    for name in (user, category, platform):
        assert name in text, (name, text)


TEMPLATE = (
    b'{"event": "ProductView", "messageid": "m-1", "userid": "%s",'
    b' "properties": {"productid": "product-1"}, "context": {"source": "%s"}}'
)


@hypothesis_settings(max_examples=150, deadline=None)
@given(user=st.binary(min_size=1, max_size=12), platform=st.binary(min_size=1, max_size=12))
def test_any_bytes_as_ids_are_dead_lettered_or_shown_verbatim(user, platform):
    """Bytes spliced into the JSON as they come: broken UTF-8, JSON or controls are
    rejected by cleaning; whatever passes is shown exactly as the JSON decodes it."""
    value = TEMPLATE % (user, platform)
    text = shown_raw(value, "category-1")
    if text is None:
        return
    event = orjson.loads(value)
    assert event["userid"] in text
    assert event["context"]["source"] in text


@hypothesis_settings(max_examples=100, deadline=None)
@given(value=st.binary(max_size=300))
def test_any_bytes_as_the_event_never_crash_the_view(value):
    assert shown_raw(value, "category-1") is None or b"ProductView" in value


def _tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def test_the_terminal_view_in_a_real_terminal_shows_the_live_panels(pipeline):
    """`clickstream realtime` in tmux, as an operator sees it: the three panels with the
    exact counts of what was produced. With CLICKSTREAM_SCREENSHOTS the pane is saved, in
    its colours, as the docs' image of the terminal view."""
    if shutil.which("tmux") is None:
        missing_dependency("tmux is not installed")
    with connect(pipeline.settings) as conn:
        upsert_products(conn, [(f"product-{n}", f"category-{n // 4 + 1}") for n in range(9)])
    now = format_timestamp(datetime.now(UTC))
    platforms = ["desktop", "desktop", "mobile-web", "ios", "android"]
    pipeline.produce_views(
        [
            orjson.dumps(
                {
                    "event": "ProductView",
                    "messageid": f"m-{n}",
                    "userid": f"user-{n % 12 + 1}",
                    "properties": {"productid": f"product-{n % 9}"},
                    "context": {"source": platforms[n % 5]},
                    "timestamp": now,
                }
            )
            for n in range(60)
        ]
    )
    session = f"clickstream-{uuid.uuid4().hex[:8]}"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in pipeline.env().items() if "CLICKSTREAM" in k)
    log = pipeline.settings.data_dir / f"{session}.log"  # its log lines, off the screen
    # The terminal's own size, not one the test runner's environment may carry.
    command = f"env -u COLUMNS -u LINES {env} {shlex.quote(sys.executable)} -m clickstream realtime"
    command += f" 2>{log}"
    _tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "22", command)
    try:
        deadline = time.monotonic() + 60
        pane = ""
        while "60 views" not in pane and time.monotonic() < deadline:
            time.sleep(0.5)
            pane = _tmux("capture-pane", "-p", "-t", session)
        assert "12 distinct users" in pane, pane
        for category, views in (("category-1", 28), ("category-2", 26), ("category-3", 6)):
            assert re.search(rf"{category}\b.*\b{views}\b", pane), pane
        assert re.search(r"desktop\b.*\b24\b", pane), pane
        if image := screenshot_path("realtime-terminal.svg"):
            coloured = _tmux("capture-pane", "-p", "-e", "-t", session)
            console = Console(width=100, record=True, file=io.StringIO())
            console.print(Text.from_ansi(coloured.rstrip()), crop=False)
            image.write_text(console.export_svg(title="clickstream realtime"))
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)
