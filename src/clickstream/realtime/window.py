"""The live view's sliding window: exact, by event time, ending at the clock's now.

Pure logic: the caller passes every event's time and the current time, so the window can be
tested against a brute-force recomputation and replayed deterministically.

Semantics, all times in integer milliseconds, window length `W`, arrival time `now`:

- An event is *visible* at time `q` while `q - W < t <= q`, with `t` its (effective) event
  time: it appears the moment it arrives and leaves exactly `W` after its event time, even
  when it arrived out of order. Nothing else moves the window: asking at a later `q` expires
  what has aged out, so the window empties when traffic stops.
- *Late*: an event whose time is already out of the window on arrival (`t <= now - W`) is
  counted in `late` and never shown.
- *Future* (clock skew): `t` is the event time of the one event-time rule
  (`clickstream.events.event_time`), which already replaced a stamp too far ahead of its
  Kafka record's time; what it lets through can still be ahead of this server's clock when
  the producer's or the broker's clock runs fast. Up to `max_skew_ms` (the rule's own
  `max_ahead_ms`, so one tolerance holds everywhere) it is shown at once, placed at its
  arrival time (`t = now`). Further ahead, the clocks disagree by more than the rule
  tolerates: the event is counted in `future` and not shown (holding it would make it pop up
  at some arbitrary later moment).
- *Duplicates*: an event whose `messageid` is already visible (the same event read twice,
  e.g. re-read from another partition or after a restart) is counted in `duplicates` and
  shown once.
- *Categories* are looked up when a snapshot is taken, not when a view arrives: the window
  counts views per product, and `snapshot` sums them per category with the mapping it is
  given, so a catalog change shows at once for every view in the window.
- *Erasure*: `forget` removes a user's views from the window, as if they had never arrived.

Cost: events are kept in buckets of one millisecond; a bucket's key goes on a deque when it
is the newest so far (the usual case) and on a heap otherwise, so an event costs amortised
O(1) dictionary updates, plus O(log n) only for an out-of-order millisecond not seen yet.
Memory is proportional to the events inside the window.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from clickstream.event_time import DEFAULT_MAX_AHEAD_MS
from clickstream.natural import natural_key

__all__ = [
    "Snapshot",
    "SlidingWindow",
    "View",
    "ranked",
]

_REBUILD_AFTER = 256  # users who joined or left since the last snapshot


def ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Counts descending, then the name in natural order."""
    return sorted(counts.items(), key=lambda item: (-item[1], natural_key(item[0])))


class View(NamedTuple):
    """One product view as the window needs it; `at_ms` is the event time in epoch ms.

    Any 5-tuple in this order will do: the source builds plain tuples, which is cheaper.
    """

    messageid: str
    userid: str
    product: str
    platform: str
    at_ms: int


@dataclass(frozen=True)
class Snapshot:
    """What the window holds at `as_of_ms`; counts ranked, users in natural order."""

    as_of_ms: int
    window_ms: int
    users: list[str]
    categories: list[tuple[str, int]]
    platforms: list[tuple[str, int]]
    views: int
    late: int
    future: int
    duplicates: int


def _remove(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class SlidingWindow:
    """Distinct users, views per category and per platform over the last `window_ms`."""

    def __init__(self, window_ms: int, *, max_skew_ms: int = DEFAULT_MAX_AHEAD_MS) -> None:
        if window_ms <= 0:
            raise ValueError("the window must be longer than 0 ms")
        if max_skew_ms < 0:
            raise ValueError("the accepted clock skew cannot be negative")
        self.window_ms = window_ms
        self.max_skew_ms = max_skew_ms
        self.late = 0
        self.future = 0
        self.duplicates = 0
        self._buckets: dict[int, list[View]] = {}
        self._in_order: deque[int] = deque()
        self._out_of_order: list[int] = []
        self._messageids: set[str] = set()
        self._users: dict[str, int] = {}
        self._user_keys: dict[str, tuple] = {}  # sort keys, computed once per active user
        # The users' sort keys in natural order as of the last snapshot, and who joined or
        # left since: a snapshot places the few newcomers instead of sorting everybody.
        self._listed: list[tuple] = []
        self._listed_ids: set[str] = set()
        self._changed: list[str] = []
        self._rebuild = False  # too many changed to place one by one: sort afresh
        self._products: dict[str, int] = {}
        self._platforms: dict[str, int] = {}
        self._now_ms: int | None = None

    def __len__(self) -> int:
        """Events visible now (as of the last `add` or `advance`)."""
        return len(self._messageids)

    def add(self, views: Iterable[View], now_ms: int) -> int:
        """Place a batch of views that arrived at `now_ms`; return how many became visible."""
        self.advance(now_ms)
        cutoff = now_ms - self.window_ms
        horizon = now_ms + self.max_skew_ms
        buckets, messageids = self._buckets, self._messageids
        users, products, platforms = self._users, self._products, self._platforms
        in_order = self._in_order
        accepted = 0
        user_keys = self._user_keys
        for view in views:
            messageid, userid, product, platform, at = view
            if at <= cutoff:
                self.late += 1
                continue
            if at > now_ms:
                if at > horizon:
                    self.future += 1
                    continue
                at = now_ms
            if messageid in messageids:
                self.duplicates += 1
                continue
            messageids.add(messageid)
            bucket = buckets.get(at)
            if bucket is None:
                buckets[at] = [view]
                if not in_order or at > in_order[-1]:
                    in_order.append(at)
                else:
                    heapq.heappush(self._out_of_order, at)
            else:
                bucket.append(view)
            seen = users.get(userid)
            if seen is None:
                users[userid] = 1
                user_keys[userid] = natural_key(userid)
                self._changed.append(userid)
            else:
                users[userid] = seen + 1
            products[product] = products.get(product, 0) + 1
            platforms[platform] = platforms.get(platform, 0) + 1
            accepted += 1
        self._note_many_changes()
        return accepted

    def advance(self, now_ms: int) -> None:
        """Move the window's end to `now_ms` (never backwards), expiring what aged out."""
        if self._now_ms is not None and now_ms < self._now_ms:
            now_ms = self._now_ms
        self._now_ms = now_ms
        cutoff = now_ms - self.window_ms
        in_order, out_of_order = self._in_order, self._out_of_order
        while in_order and in_order[0] <= cutoff:
            self._expire(in_order.popleft())
        while out_of_order and out_of_order[0] <= cutoff:
            self._expire(heapq.heappop(out_of_order))
        self._note_many_changes()

    def _note_many_changes(self) -> None:
        """Forget who changed once a sort afresh is due anyway: no snapshot may come for
        hours, and the list must not grow meanwhile."""
        if len(self._changed) > _REBUILD_AFTER:
            self._changed.clear()
            self._rebuild = True

    def _expire(self, at: int) -> None:
        self._take_out(self._buckets.pop(at))

    def _take_out(self, views: Iterable[View]) -> None:
        messageids = self._messageids
        users, products, platforms = self._users, self._products, self._platforms
        user_keys = self._user_keys
        for messageid, userid, product, platform, _ in views:
            messageids.discard(messageid)
            left = users[userid] - 1
            if left:
                users[userid] = left
            else:
                del users[userid]
                del user_keys[userid]
                self._changed.append(userid)
            _remove(products, product)
            _remove(platforms, platform)
        self._note_many_changes()

    @property
    def users(self) -> list[str]:
        """The users with a view in the window, in no particular order."""
        return list(self._users)

    def forget(self, users: Collection[str], until_ms: int) -> int:
        """Take out every view of these users with an event time up to `until_ms` (their
        erasure); return how many. It reads the whole window: erasures are rare."""
        if not users or not any(user in self._users for user in users):
            return 0
        gone: list[View] = []
        for at, bucket in self._buckets.items():
            if at > until_ms:
                continue
            keep = [view for view in bucket if view[1] not in users]
            if len(keep) != len(bucket):
                gone += [view for view in bucket if view[1] in users]
                bucket[:] = keep
        self._take_out(gone)
        return len(gone)

    def snapshot(self, now_ms: int, category: Callable[[str], str] | None = None) -> Snapshot:
        """The window as of `now_ms` (which expires what aged out by then), its products
        counted per `category(product)` (without a mapping: per product)."""
        self.advance(now_ms)
        if category is None:
            categories = self._products
        else:
            categories = {}
            for product, views in self._products.items():
                name = category(product)
                categories[name] = categories.get(name, 0) + views
        return Snapshot(
            as_of_ms=self._now_ms if self._now_ms is not None else now_ms,
            window_ms=self.window_ms,
            users=self._users_in_order(),
            categories=ranked(categories),
            platforms=ranked(self._platforms),
            views=len(self._messageids),
            late=self.late,
            future=self.future,
            duplicates=self.duplicates,
        )

    def _users_in_order(self) -> list[str]:
        users, listed, listed_ids = self._users, self._listed, self._listed_ids
        changed = dict.fromkeys(self._changed)  # each once, whatever they did since
        self._changed.clear()
        if self._rebuild or len(changed) > _REBUILD_AFTER:
            # Placing each costs a shift of the list: past a few hundred, sort afresh.
            self._listed = listed = sorted(self._user_keys.values())
            self._listed_ids = set(users)
            self._rebuild = False
        else:
            for user in changed:
                present, was = user in users, user in listed_ids
                if present and not was:
                    bisect.insort(listed, self._user_keys[user])
                    listed_ids.add(user)
                elif was and not present:
                    del listed[bisect.bisect_left(listed, natural_key(user))]
                    listed_ids.discard(user)
        return [key[-1] for key in listed]
