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
  (`clickstream.ingest.cleaning.event_time`), which already replaced a stamp too far ahead of its
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

Memory: a window of 5 minutes holds millions of views at a busy shop's rate, so an event
keeps no object of its own. Each user, product and platform in the window is kept once, with
a small number and a count of its views (`_Tally`); a bucket is one `bytes` of fixed-size
records (the event's id in 16 bytes, the three numbers), and the ids of the visible events
are 16-byte keys packed in shards (`_MessageIds`). What grows per event is those 44 bytes
plus its share of its millisecond's bucket; the rest follows the distinct users, products
and platforms. The answer stays exact: a canonical UUID (the form the producers send) and its
16 bytes are one-to-one, and any other id is kept as it came.
"""

from __future__ import annotations

import bisect
import heapq
import struct
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from clickstream.ingest.event_time import DEFAULT_MAX_AHEAD_MS
from clickstream.realtime.tally import MessageIds, Tally, find, name_of, sort_text, uuid_key
from clickstream.util.natural import natural_key

__all__ = [
    "Snapshot",
    "SlidingWindow",
    "View",
    "ranked",
]

_REBUILD_AFTER = 256  # users who joined or left since the last snapshot
# A bucket's record: the event's id (its UUID's 16 bytes, or the number of an id of any
# other form, flagged in the platform's number), and the numbers of user, product, platform.
_RECORD = struct.Struct("<16sIII")
_OTHER_ID = 1 << 31


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
        self._views = 0
        self._buckets: dict[int, bytes] = {}  # event time -> its views' records
        self._in_order: deque[int] = deque()
        self._out_of_order: list[int] = []
        self._uuids = MessageIds()
        self._other_ids = Tally()  # ids that are not canonical UUIDs, kept as they came
        self._users = Tally()
        self._user_keys: list[str | None] = []  # `sort_text` by user number, made once
        # The users' sort keys in natural order as of the last snapshot, and who joined or
        # left since: a snapshot places the few newcomers instead of sorting everybody.
        self._listed: list[str] = []
        self._changed: list[str] = []
        self._rebuild = False  # too many changed to place one by one: sort afresh
        self._products = Tally()
        self._platforms = Tally()
        self._now_ms: int | None = None

    def __len__(self) -> int:
        """Events visible now (as of the last `add` or `advance`)."""
        return self._views

    def add(self, views: Iterable[View], now_ms: int) -> int:
        """Place a batch of views that arrived at `now_ms`; return how many became visible."""
        self.advance(now_ms)
        cutoff = now_ms - self.window_ms
        horizon = now_ms + self.max_skew_ms
        buckets, in_order, pack = self._buckets, self._in_order, _RECORD.pack
        uuids, others = self._uuids, self._other_ids
        shards, mask = uuids.shards, uuids.mask
        users, products, platforms = self._users, self._products, self._platforms
        user_ids, product_ids, platform_ids = users.ids, products.ids, platforms.ids
        user_counts, product_counts, platform_counts = (
            users.counts,
            products.counts,
            platforms.counts,
        )
        accepted = packed = 0
        for messageid, userid, product, platform, at in views:
            if at <= cutoff:
                self.late += 1
                continue
            if at > now_ms:
                if at > horizon:
                    self.future += 1
                    continue
                at = now_ms
            key = uuid_key(messageid)
            if key is None:
                if messageid in others.ids:
                    self.duplicates += 1
                    continue
                key, flag = others.new(messageid).to_bytes(16, "little"), _OTHER_ID
            else:
                shard = shards[hash(key) & mask]
                found = shard.find(key)
                if found >= 0 and (not found & 15 or find(shard, key) >= 0):
                    self.duplicates += 1
                    continue
                shard += key
                packed += 1
                flag = 0
            user = user_ids.get(userid)
            if user is None:
                user = self._new_user(userid)
            user_counts[user] += 1
            item = product_ids.get(product)
            if item is None:
                item = products.new(product)
            product_counts[item] += 1
            source = platform_ids.get(platform)
            if source is None:
                source = platforms.new(platform)
            platform_counts[source] += 1
            record = pack(key, user, item, source | flag)
            bucket = buckets.get(at)
            if bucket is None:
                buckets[at] = record
                if not in_order or at > in_order[-1]:
                    in_order.append(at)
                else:
                    heapq.heappush(self._out_of_order, at)
            else:
                buckets[at] = bucket + record
            accepted += 1
        self._views += accepted
        uuids.resize(packed)
        self._note_many_changes()
        return accepted

    def _new_user(self, userid: str) -> int:
        number = self._users.new(userid)
        keys = self._user_keys
        if number == len(keys):
            keys.append(None)
        keys[number] = sort_text(userid)
        self._changed.append(userid)
        return number

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
        self._take_out(_RECORD.iter_unpack(self._buckets.pop(at)))

    def _take_out(self, records: Iterable[tuple[bytes, int, int, int]]) -> None:
        uuids, others = self._uuids, self._other_ids
        shards, mask = uuids.shards, uuids.mask
        users, products, platforms = self._users, self._products, self._platforms
        user_counts, product_counts, platform_counts = (
            users.counts,
            products.counts,
            platforms.counts,
        )
        taken = unpacked = 0
        for key, user, item, source in records:
            if source & _OTHER_ID:
                others.drop(int.from_bytes(key, "little"))
                source ^= _OTHER_ID
            else:
                shard = shards[hash(key) & mask]
                found = find(shard, key)
                del shard[found : found + 16]
                unpacked += 1
            left = user_counts[user] - 1
            user_counts[user] = left
            if not left:
                self._user_keys[user] = None
                self._changed.append(users.drop(user))
            left = product_counts[item] - 1
            product_counts[item] = left
            if not left:
                products.drop(item)
            left = platform_counts[source] - 1
            platform_counts[source] = left
            if not left:
                platforms.drop(source)
            taken += 1
        self._views -= taken
        uuids.resize(-unpacked)
        self._note_many_changes()

    @property
    def users(self) -> list[str]:
        """The users with a view in the window, in no particular order."""
        return list(self._users.ids)

    def forget(self, users: Collection[str], until_ms: int) -> int:
        """Take out every view of these users with an event time up to `until_ms` (their
        erasure); return how many. It reads the whole window: erasures are rare."""
        numbers = {self._users.ids[user] for user in users if user in self._users.ids}
        if not numbers:
            return 0
        gone: list[tuple[bytes, int, int, int]] = []
        for at, bucket in self._buckets.items():
            if at > until_ms:
                continue
            records = list(_RECORD.iter_unpack(bucket))
            keep = [record for record in records if record[1] not in numbers]
            if len(keep) != len(records):
                gone += [record for record in records if record[1] in numbers]
                self._buckets[at] = b"".join(_RECORD.pack(*record) for record in keep)
        self._take_out(gone)
        return len(gone)

    def snapshot(self, now_ms: int, category: Callable[[str], str] | None = None) -> Snapshot:
        """The window as of `now_ms` (which expires what aged out by then), its products
        counted per `category(product)` (without a mapping: per product)."""
        self.advance(now_ms)
        products = self._products.counted()
        if category is None:
            categories = products
        else:
            categories = {}
            for product, views in products.items():
                name = category(product)
                categories[name] = categories.get(name, 0) + views
        return Snapshot(
            as_of_ms=self._now_ms if self._now_ms is not None else now_ms,
            window_ms=self.window_ms,
            users=self._users_in_order(),
            categories=ranked(categories),
            platforms=ranked(self._platforms.counted()),
            views=self._views,
            late=self.late,
            future=self.future,
            duplicates=self.duplicates,
        )

    def _users_in_order(self) -> list[str]:
        ids, keys, listed = self._users.ids, self._user_keys, self._listed
        changed = dict.fromkeys(self._changed)  # each once, whatever they did since
        self._changed.clear()
        if self._rebuild or len(changed) > _REBUILD_AFTER:
            # Placing each costs a shift of the list: past a few hundred, sort afresh.
            self._listed = listed = sorted(key for key in keys if key is not None)
            self._rebuild = False
        else:
            for user in changed:
                number = ids.get(user)
                key = sort_text(user) if number is None else keys[number]
                at = bisect.bisect_left(listed, key)
                was = at < len(listed) and listed[at] == key
                if number is not None and not was:
                    listed.insert(at, key)
                elif was and number is None:
                    del listed[at]
        return [name_of(key) for key in listed]
