"""`clickstream realtime`: the dashboard's three panels in the terminal, redrawn every second.

It reads Kafka itself through the same `RealtimeSource` and window as the server, so an
operator needs no server to see the live view. Names come from events and the catalog: they
go into `Text` objects, never through Rich's markup (`[red]ios` is shown as written).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.layout import Layout
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from clickstream.config import Settings
from clickstream.realtime.source import LiveState, RealtimeSource

__all__ = ["render", "run_terminal", "sparkline"]

SPARKLINE_POINTS = 120
_BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[int]) -> str:
    """One character a value, scaled to the largest."""
    top = max(values, default=0)
    if top <= 0:
        return _BLOCKS[1] * len(values)
    return "".join(_BLOCKS[1 + round(v / top * (len(_BLOCKS) - 2))] for v in values)


def _bars(rows: list[tuple[str, int]], limit: int, colour: str) -> Table:
    table = Table.grid(padding=(0, 1), expand=True)
    # min_width: a name of zero cells (a lone combining mark) would otherwise lose its column
    table.add_column(no_wrap=True, min_width=1, max_width=24)
    table.add_column(ratio=1, no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    top = max((n for _, n in rows), default=1)
    for name, views in rows[:limit]:
        width = max(1, round(views / top * 30))
        table.add_row(Text(name), Text("█" * width, style=colour), f"{views:,}")
    if not rows:
        table.add_row(Text("no views in the window", style="dim"), "", "")
    elif len(rows) > limit:
        table.add_row(Text(f"and {len(rows) - limit} more", style="dim"), "", "")
    return table


def render(state: LiveState, history: list[int], height: int = 30) -> Layout:
    """The header and three panels for one snapshot."""
    snap = state.snapshot
    as_of = datetime.fromtimestamp(snap.as_of_ms / 1000, UTC).strftime("%H:%M:%S UTC")
    status = (
        "[yellow]catching up[/]"
        if state.catching_up
        else ("[green]live[/]" if state.connected else "[red]connecting[/]")
    )
    header = Text.from_markup(
        f"[b]Live view[/b] · last {snap.window_ms // 1000}s   {status}   as of {as_of}   "
        f"[b]{snap.views:,}[/b] views   [b dark_orange]{snap.late:,}[/] late   "
        f"[b]{snap.future:,}[/b] future   [b]{snap.duplicates:,}[/b] duplicates"
    )
    rows = max(3, height - 8)
    users = Text(", ".join(snap.users[: rows * 6]), style="cyan", overflow="ellipsis")
    more = len(snap.users) - rows * 6
    users_panel = Group(
        Text.from_markup(f"[b]{len(snap.users):,}[/b] distinct users"),
        Text(sparkline(history[-SPARKLINE_POINTS:]), style="blue"),
        Text(""),
        users,
        Text(f"and {more:,} more" if more > 0 else "", style="dim"),
    )
    layout = Layout()
    layout.split_column(Layout(header, size=2), Layout(name="panels"))
    layout["panels"].split_row(
        Layout(Panel(users_panel, title="Active users")),
        Layout(Panel(_bars(snap.categories, rows, "blue"), title="Views per category")),
        Layout(Panel(_bars(snap.platforms, rows, "green"), title="Views per platform")),
    )
    return layout


def run_terminal(
    settings: Settings, stop: threading.Event, *, once: bool = False, console: Console | None = None
) -> None:
    """Show the live view until `stop` is set; with `once`, print it once caught up."""
    console = console or Console()
    history: deque[int] = deque(maxlen=SPARKLINE_POINTS)
    with RealtimeSource(settings) as source:
        if once:
            source.wait_caught_up(30)
            state = source.state()
            history.append(len(state.snapshot.users))
            console.print(render(state, list(history), height=20), height=20)
            return
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                state = source.state()
                history.append(len(state.snapshot.users))
                live.update(render(state, list(history), console.size.height), refresh=True)
                if stop.wait(1.0 - time.time() % 1.0):
                    return
