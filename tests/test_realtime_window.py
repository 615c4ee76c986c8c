"""The live view's sliding window, read as timelines, and checked against brute force."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.event_time import EventTimeRule, TimeFix, epoch_ms, format_timestamp
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.realtime.window import SlidingWindow, View, ranked
from clickstream.util.natural import natural_key

W = 10_000  # a 10-second window keeps the timelines readable; times are in ms


def view(
    at: int,
    user: str = "user-1",
    category: str = "category-1",
    platform: str = "ios",
    *,
    mid: str | None = None,
) -> View:
    return View(mid or f"m-{user}-{at}", user, category, platform, at)


def shown(window: SlidingWindow, now: int) -> dict:
    snap = window.snapshot(now)
    return {
        "users": snap.users,
        "categories": dict(snap.categories),
        "platforms": dict(snap.platforms),
    }


# -- scenarios ------------------------------------------------------------------------------


def test_an_event_is_shown_until_exactly_one_window_after_its_time():
    # t(s):  0    5    10   15   20
    #        a---------|               a visible for (0, 10]: gone at 10 exactly
    #             b---------|          b visible for (5, 15]
    window = SlidingWindow(W)
    window.add([view(0, "user-a")], now_ms=0)
    window.add([view(5_000, "user-b", platform="web")], now_ms=5_000)
    assert shown(window, 5_000)["users"] == ["user-a", "user-b"]
    assert shown(window, 9_999)["users"] == ["user-a", "user-b"]
    assert shown(window, 10_000) == {
        "users": ["user-b"],
        "categories": {"category-1": 1},
        "platforms": {"web": 1},
    }
    assert shown(window, 14_999)["users"] == ["user-b"]
    assert shown(window, 15_000) == {"users": [], "categories": {}, "platforms": {}}


def test_categories_come_from_the_mapping_at_snapshot_time():
    # t(s):  0    1    2
    #        p1   p2   p1      p1 moves from category-1 to category-2 at 2.5 s
    window = SlidingWindow(W)
    window.add([view(0, "user-a", "p1"), view(1_000, "user-b", "p2")], now_ms=1_000)
    window.add([view(2_000, "user-c", "p1")], now_ms=2_000)
    before = {"p1": "category-1", "p2": "category-2"}
    after = {"p1": "category-2", "p2": "category-2"}
    assert window.snapshot(2_000, before.__getitem__).categories == [
        ("category-1", 2),
        ("category-2", 1),
    ]
    assert window.snapshot(2_500, after.__getitem__).categories == [("category-2", 3)]
    # it expires per product, whatever the mapping says now
    assert window.snapshot(10_500, after.__getitem__).categories == [("category-2", 2)]


def test_forget_takes_a_users_views_out_up_to_the_erasure():
    # t(s):  0    1    2    3
    #        a    b    a    a      a erased at 2 s: the views at 0 and 2 go, 3 stays
    window = SlidingWindow(W)
    window.add([view(0, "user-a"), view(1_000, "user-b", platform="web")], now_ms=1_000)
    window.add([view(2_000, "user-a"), view(3_000, "user-a", "category-2")], now_ms=3_000)
    assert window.forget({"user-a"}, until_ms=2_000) == 2
    assert shown(window, 3_000) == {
        "users": ["user-a", "user-b"],
        "categories": {"category-1": 1, "category-2": 1},
        "platforms": {"ios": 1, "web": 1},
    }
    assert window.forget({"user-a"}, until_ms=3_000) == 1
    assert shown(window, 3_000)["users"] == ["user-b"]
    assert window.forget({"user-z"}, until_ms=3_000) == 0
    # what was taken out does not come back when its time expires
    assert shown(window, 11_000) == {"users": [], "categories": {}, "platforms": {}}
    assert len(window) == 0


def test_the_window_empties_when_traffic_stops():
    # t(s):  0  1  2 ...................... 60
    #        a  b  c      (no more events)  ^ asked here: nothing left
    window = SlidingWindow(W)
    window.add([view(0, "user-a"), view(1_000, "user-b"), view(2_000, "user-c")], now_ms=2_000)
    assert len(shown(window, 2_000)["users"]) == 3
    assert shown(window, 60_000) == {"users": [], "categories": {}, "platforms": {}}
    assert len(window) == 0


def test_an_out_of_order_event_expires_by_its_own_time():
    # t(s):  0    2    4    6    8    10   12   14
    #                       b (arrives at 6)
    #             a (arrives at 8, event time 2): visible (8, 12], gone at 12, before b
    window = SlidingWindow(W)
    window.add([view(6_000, "user-b")], now_ms=6_000)
    window.add([view(2_000, "user-a")], now_ms=8_000)
    assert shown(window, 8_000)["users"] == ["user-a", "user-b"]
    assert shown(window, 11_999)["users"] == ["user-a", "user-b"]
    assert shown(window, 12_000)["users"] == ["user-b"]
    assert shown(window, 16_000)["users"] == []


def test_an_event_older_than_the_window_on_arrival_is_late_not_shown():
    # t(s):  0  1  2      10   12
    #        a  .  .......|....^ a arrives at 12: it left the window at 10
    #           .  b (time 3) arrives at 12: still inside (3 > 12 - 10)
    #           c (time 2) arrives at 12: exactly on the edge, so already out
    window = SlidingWindow(W)
    window.add([view(0, "user-a"), view(3_000, "user-b"), view(2_000, "user-c")], now_ms=12_000)
    assert shown(window, 12_000)["users"] == ["user-b"]
    assert window.late == 2
    assert shown(window, 12_999)["users"] == ["user-b"]
    assert shown(window, 13_000)["users"] == []


def test_a_user_counts_once_however_many_views():
    # t(s):  0    1    2
    #        a    a    a (three views, three categories, two platforms)
    window = SlidingWindow(W)
    window.add(
        [
            view(0, "user-a", "category-2", "ios"),
            view(1_000, "user-a", "category-10", "ios"),
            view(2_000, "user-a", "category-2", "web"),
        ],
        now_ms=2_000,
    )
    snap = window.snapshot(2_000)
    assert snap.users == ["user-a"]
    assert snap.categories == [("category-2", 2), ("category-10", 1)]
    assert snap.platforms == [("ios", 2), ("web", 1)]
    assert snap.views == 3
    # the first view expires; the user stays while any of their views is inside
    assert window.snapshot(10_000).users == ["user-a"]
    assert window.snapshot(10_000).categories == [("category-2", 1), ("category-10", 1)]
    assert window.snapshot(12_000).users == []


def test_a_duplicate_read_from_another_partition_counts_once():
    # t(s):  0    3
    #        m1 (partition 0)
    #             m1 again (partition 2, after a restart re-read): not counted again
    window = SlidingWindow(W)
    window.add([view(0, "user-a", mid="m1")], now_ms=0)
    window.add([view(0, "user-a", mid="m1")], now_ms=3_000)
    snap = window.snapshot(3_000)
    assert snap.views == 1
    assert snap.duplicates == 1
    # both in one batch too
    window.add([view(3_000, "user-b", mid="m2"), view(3_000, "user-b", mid="m2")], now_ms=3_000)
    assert window.snapshot(3_000).views == 2
    assert window.duplicates == 2


def test_a_slightly_fast_clock_is_shown_at_once_a_broken_one_is_counted():
    # The window alone, given event times the rule already let through (below: both).
    # now = 20s
    #   a stamped 22s (2 s ahead, within the 5 s skew): shown now, placed at 20
    #   b stamped 60s (40 s ahead): counted as future, never shown
    window = SlidingWindow(W, max_skew_ms=5_000)
    window.add([view(22_000, "user-a"), view(60_000, "user-b")], now_ms=20_000)
    assert shown(window, 20_000)["users"] == ["user-a"]
    assert window.future == 1
    assert shown(window, 29_999)["users"] == ["user-a"]
    assert shown(window, 30_000)["users"] == []
    assert shown(window, 61_000)["users"] == []


def _cleaned(now_ms: int, *stamped: tuple[str, str | None, int]) -> tuple[list[View], Counter]:
    """Views (messageid, stamp, record time) through the consumer's rules, as the live
    view's readers clean them on a clock at `now_ms`."""
    raw = [
        RawEvent(
            Kind.VIEW,
            "product-views",
            0,
            offset,
            orjson.dumps(
                {
                    "event": "ProductView",
                    "messageid": mid,
                    "userid": f"user-{mid}",
                    "properties": {"productid": "product-1"},
                    "context": {"source": "ios"},
                    "timestamp": stamp,
                }
            ),
            record_ms,
        )
        for offset, (mid, stamp, record_ms) in enumerate(stamped)
    ]
    now = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=now_ms)
    batch = clean_batch(raw, now=now, rule=EventTimeRule(max_ahead_ms=5_000))
    views = [
        View(v.messageid, v.userid, "category-1", v.source, epoch_ms(v.viewed_at))
        for v in batch.views
    ]
    return views, Counter({fix: n for (_, fix), n in batch.replaced_times.items()})


def test_the_window_places_views_by_the_one_event_time_rule():
    # Server clock T; the rule first judges each stamp against its Kafka record's time,
    # then the window judges what the rule lets through against the server's clock.
    #
    #   stamp:   T-20s        T-1s   T     T+3s      T+8s         2099
    #   record:  T            T-1s         T+2.5s    T+4s         T-1s
    #            late         shown        shown     future       replaced by T-1s: shown
    #            (window)                  at T      (window)     (rule, counted)
    T = 1_795_525_200_000  # 2026-11-24T13:00:00Z
    window = SlidingWindow(W, max_skew_ms=5_000)
    views, replaced = _cleaned(
        T,
        ("late", _at(T - 20_000), T),
        ("now", _at(T - 1_000), T - 1_000),
        ("fast-broker", _at(T + 3_000), T + 2_500),
        ("too-fast", _at(T + 8_000), T + 4_000),
        ("y2099", "2099-01-01T00:00:00.000Z", T - 1_000),
    )
    window.add(views, now_ms=T)
    assert shown(window, T)["users"] == ["user-fast-broker", "user-now", "user-y2099"]
    assert (window.late, window.future) == (1, 1)
    assert replaced == Counter({TimeFix.AHEAD: 1})
    # The 2099 view leaves one window after its record time, like any other.
    assert shown(window, T + W - 1_000)["users"] == ["user-fast-broker"]
    # A record far ahead of this clock is no reference: the clock's own time is.
    views, replaced = _cleaned(T, ("skewed", _at(T + 60_000), T + 60_000))
    assert [v.at_ms for v in views] == [T] and replaced == Counter({TimeFix.AHEAD: 1})


def _at(ms: int) -> str:
    return format_timestamp(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms))


def test_ranking_is_counts_descending_then_natural_name():
    assert ranked({"category-10": 2, "category-2": 2, "category-1": 5, "b": 1, "a": 1}) == [
        ("category-1", 5),
        ("category-2", 2),
        ("category-10", 2),
        ("a", 1),
        ("b", 1),
    ]
    assert sorted(["user-10", "user-9", "user-100", "admin"], key=natural_key) == [
        "admin",
        "user-9",
        "user-10",
        "user-100",
    ]


def test_the_clock_never_goes_backwards():
    window = SlidingWindow(W)
    window.add([view(0, "user-a")], now_ms=0)
    assert window.snapshot(10_000).users == []
    assert window.snapshot(5_000).as_of_ms == 10_000
    assert window.snapshot(5_000).users == []


# -- against brute force --------------------------------------------------------------------


@dataclass
class Arrival:
    now: int
    views: list[View]


def brute_force(arrivals: list[Arrival], ask: int, window_ms: int, skew_ms: int) -> dict:
    """Replay the rules literally: keep every accepted event, filter at the end."""
    accepted: list[tuple[int, View]] = []
    late = future = duplicates = 0
    clock = None
    for arrival in arrivals:
        clock = arrival.now if clock is None else max(clock, arrival.now)
        for v in arrival.views:
            at = v.at_ms
            if at <= clock - window_ms:
                late += 1
                continue
            if at > clock + skew_ms:
                future += 1
                continue
            at = min(at, clock)
            if any(m.messageid == v.messageid and t > clock - window_ms for t, m in accepted):
                duplicates += 1
                continue
            accepted.append((at, v))
    ask = ask if clock is None else max(ask, clock)
    inside = [v for t, v in accepted if ask - window_ms < t <= ask]
    users = sorted({v.userid for v in inside}, key=natural_key)
    categories: dict[str, int] = {}
    platforms: dict[str, int] = {}
    for v in inside:
        categories[v.product] = categories.get(v.product, 0) + 1
        platforms[v.platform] = platforms.get(v.platform, 0) + 1
    return {
        "users": users,
        "categories": ranked(categories),
        "platforms": ranked(platforms),
        "views": len(inside),
        "late": late,
        "future": future,
        "duplicates": duplicates,
    }


SMALL_WINDOW = 1_000


@st.composite
def streams(draw):
    """Arrivals with jittered event times: in order, out of order, late, early, duplicated."""
    clock = draw(st.integers(0, 5_000))
    arrivals = []
    sent: list[View] = []
    for _ in range(draw(st.integers(1, 25))):
        clock += draw(st.sampled_from([0, 1, 7, 250, 999, 1_000, 1_001, 3_000]))
        batch = []
        for _ in range(draw(st.integers(0, 6))):
            if sent and draw(st.integers(0, 5)) == 0:
                batch.append(draw(st.sampled_from(sent)))  # the same event read again
                continue
            offset = draw(
                st.one_of(
                    st.integers(-1_200, 0),
                    st.sampled_from([-SMALL_WINDOW, -SMALL_WINDOW + 1, 0, 1, 200, 201, 5_000]),
                )
            )
            v = View(
                f"m{len(sent)}",
                draw(st.sampled_from(["user-1", "user-2", "user-10", "user-x"])),
                draw(st.sampled_from(["category-1", "category-2", "category-10"])),
                draw(st.sampled_from(["ios", "android", "web"])),
                clock + offset,
            )
            sent.append(v)
            batch.append(v)
        arrivals.append(Arrival(clock, batch))
    later = draw(st.sampled_from([0, 1, 500, 999, 1_000, 1_001, 2_000]))
    return arrivals, clock + later


@settings(max_examples=400, deadline=None)
@given(streams())
def test_the_window_equals_a_brute_force_recomputation(stream):
    arrivals, ask = stream
    window = SlidingWindow(SMALL_WINDOW, max_skew_ms=200)
    for arrival in arrivals:
        window.add(arrival.views, now_ms=arrival.now)
    snap = window.snapshot(ask)
    assert {
        "users": snap.users,
        "categories": snap.categories,
        "platforms": snap.platforms,
        "views": snap.views,
        "late": snap.late,
        "future": snap.future,
        "duplicates": snap.duplicates,
    } == brute_force(arrivals, ask, SMALL_WINDOW, 200)


@settings(max_examples=100, deadline=None)
@given(streams())
def test_every_intermediate_snapshot_matches_too(stream):
    arrivals, _ = stream
    window = SlidingWindow(SMALL_WINDOW, max_skew_ms=200)
    for index, arrival in enumerate(arrivals):
        window.add(arrival.views, now_ms=arrival.now)
        expected = brute_force(arrivals[: index + 1], arrival.now, SMALL_WINDOW, 200)
        snap = window.snapshot(arrival.now)
        assert (snap.users, snap.categories, snap.platforms, snap.views) == (
            expected["users"],
            expected["categories"],
            expected["platforms"],
            expected["views"],
        )


def test_memory_follows_the_events_inside_the_window():
    window = SlidingWindow(SMALL_WINDOW)
    for second in range(100):
        now = second * 1_000
        window.add([view(now - i, f"user-{i}", mid=f"{now}-{i}") for i in range(50)], now_ms=now)
    assert len(window) == 50
    assert len(window._buckets) == 50
    assert len(window._in_order) + len(window._out_of_order) == 50


@pytest.mark.parametrize("views_per_step", [3, 300])
def test_users_stay_in_natural_order_as_they_come_and_go(views_per_step):
    """Between snapshots a few users (placed one by one) or many (sorted afresh) join and
    leave, some more than once; each snapshot lists exactly the users in the window."""
    rng = random.Random(views_per_step)
    steps = [
        [
            (
                f"m-{step}-{i}",
                f"user-{rng.randrange(2_000)}",
                "c",
                "p",
                step * 100 - rng.randrange(50),
            )
            for i in range(views_per_step)
        ]
        for step in range(40)
    ]
    window = SlidingWindow(1_000)
    for step, views in enumerate(steps):
        now = step * 100
        window.add(views, now)
        for ask in (now, now + 1):
            expected = {
                user
                for seen in steps[: step + 1]
                for _, user, _, _, at in seen
                if ask - 1_000 < at <= ask
            }
            assert window.snapshot(ask).users == sorted(expected, key=natural_key)
