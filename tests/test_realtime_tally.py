"""The live window's compact pieces: each must answer exactly as the plain Python it replaces."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream.realtime.tally import (
    KEYS_PER_SHARD,
    MessageIds,
    find,
    name_of,
    sort_text,
    uuid_key,
)
from clickstream.realtime.window import SlidingWindow
from clickstream.util.natural import natural_key

names = st.text(alphabet=st.sampled_from("ab-_ \x00\x01\x02é0123456789"), max_size=12)


@settings(max_examples=500, deadline=None)
@given(st.lists(names, max_size=20))
def test_sort_text_orders_as_natural_key_and_gives_the_name_back(batch):
    assert sorted(batch, key=sort_text) == sorted(batch, key=natural_key)
    assert [name_of(sort_text(name)) for name in batch] == batch


def test_sort_text_on_the_usual_ids():
    ids = ["user-10", "user-9", "user-01", "user-1", "user-1a", "user-", "admin", "user-100"]
    assert sorted(ids, key=sort_text) == sorted(ids, key=natural_key)
    assert sorted(ids, key=sort_text) == [
        "admin",
        "user-",
        "user-01",
        "user-1",
        "user-1a",
        "user-9",
        "user-10",
        "user-100",
    ]


def test_only_the_canonical_uuid_spelling_is_packed():
    text = str(uuid.UUID("0123abcd-4567-89ef-0123-456789abcdef"))
    assert uuid_key(text) == bytes.fromhex(text.replace("-", ""))
    for other in (
        text.upper(),  # another id: only one of the two spellings may be packed
        text.replace("-", ""),
        "{" + text[1:-1] + "}",
        text[:8] + " " + text[9:],
        text[:-2] + " f",  # fromhex would skip the space
        text[:-1] + "g",
        "m1",
    ):
        assert uuid_key(other) is None, other


def test_the_packed_ids_survive_the_shards_doubling():
    ids = MessageIds()
    keys = [uuid.UUID(int=n * 7919).bytes for n in range(len(ids.shards) * KEYS_PER_SHARD * 3)]
    for key in keys:
        shard = ids.shards[hash(key) & ids.mask]
        assert find(shard, key) == -1
        shard += key
        ids.resize(1)
    assert len(ids.shards) >= 4 * 1024 and len(ids) == len(keys)
    assert all(find(ids.shards[hash(key) & ids.mask], key) >= 0 for key in keys)


def test_a_key_found_across_two_packed_keys_is_not_a_match():
    shard = bytearray(bytes(range(16)) + bytes(range(16, 32)))
    assert find(shard, bytes(range(8, 24))) == -1
    assert find(shard, bytes(range(16, 32))) == 16


def test_uuid_and_other_ids_are_told_apart_in_the_window():
    # 16 zero bytes: the zero UUID packed, and the number 0 of the first id kept as it came.
    window = SlidingWindow(1_000)
    zero = "00000000-0000-0000-0000-000000000000"  # packed as 16 zero bytes
    ids = [zero, "0000000a-0000-0000-0000-000000000000", "0000000A-0000-0000-0000-000000000000"]
    window.add([(mid, "u", "p", "web", 10) for mid in ids + ids], now_ms=10)
    assert (len(window), window.duplicates) == (3, 3)
    window.advance(1_010)
    assert len(window) == 0
    window.add([(mid, "u", "p", "web", 1_020) for mid in ids], now_ms=1_020)
    assert (len(window), window.duplicates) == (3, 3)
