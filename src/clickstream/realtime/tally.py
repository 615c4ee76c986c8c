"""Compact pieces of the live window: what it keeps per distinct name and per visible event.

A window of 5 minutes holds millions of views at a busy shop's rate; as Python objects
(a tuple, its strings, a set entry for its id) each view cost about 450 bytes. These keep a
name once however many views carry it, and an event's id in 16 bytes.
"""

from __future__ import annotations

import re
from array import array

__all__ = ["KEYS_PER_SHARD", "MessageIds", "Tally", "find", "name_of", "sort_text", "uuid_key"]

_DIGITS = re.compile(r"([0-9]+)")  # as in clickstream.util.natural

_FIRST_SHARDS = 1024
KEYS_PER_SHARD = 32  # a search reads 512 bytes at most on average: beyond, shards double


class Tally:
    """Names with a number each and how many visible views carry them.

    `ids` maps a name to its number; the window's loops read it and count in `counts`
    themselves (a call per event costs more than the work), `new` and `drop` are the rarer
    paths. Numbers are reused, so the lists follow the most names held at once.
    """

    __slots__ = ("counts", "ids", "names", "_free")

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str | None] = []
        self.counts = array("Q")
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    def new(self, name: str) -> int:
        """Number a name not held yet (its count starts at 0)."""
        if self._free:
            number = self._free.pop()
            self.names[number] = name
        else:
            number = len(self.names)
            self.names.append(name)
            self.counts.append(0)
        self.ids[name] = number
        return number

    def drop(self, number: int) -> str:
        """Forget a name whose count fell to 0 (the caller counts); return it."""
        name = self.names[number]
        self.names[number] = None
        del self.ids[name]
        self._free.append(number)
        return name

    def counted(self) -> dict[str, int]:
        counts = self.counts
        return {name: counts[number] for name, number in self.ids.items()}


def sort_text(name: str) -> str:
    """`natural_key(name)` as one string that sorts the same way: the tuple of tuples costs
    five objects a user, this one.

    Each text part is followed by NUL (NUL and SOH inside it escaped, order kept), each
    number is its digits without leading zeros after a character giving their count (so
    fewer digits sort first); a NUL then separates the parts from the whole name, which
    breaks ties between names equal as numbers (`user-01`, `user-1`) as `natural_key` does.
    """
    pieces = []
    for index, part in enumerate(_DIGITS.split(name)):
        if index % 2:
            digits = part.lstrip("0") or "0"
            pieces += (chr(len(digits) + 1), digits)
        else:
            pieces += (_escape(part), "\x00")
    pieces += ("\x00", _escape(name))
    return "".join(pieces)


def name_of(text: str) -> str:
    """The name `sort_text` was made from."""
    name = text[text.rindex("\x00") + 1 :]
    if "\x01" in name:
        return name.replace("\x01\x01", "\x00").replace("\x01\x02", "\x01")
    return name


def _escape(text: str) -> str:
    if "\x00" in text or "\x01" in text:
        return text.replace("\x01", "\x01\x02").replace("\x00", "\x01\x01")
    return text


def uuid_key(messageid: str) -> bytes | None:
    """The 16 bytes of a canonical UUID in lower case, else None.

    Only that one spelling is packed (the bytes spelled back must give the same digits), so
    two ids are equal exactly when their keys are: `A...` and `a...` are different ids.
    """
    if len(messageid) == 36 and messageid[8:24:5] == "----":
        digits = messageid.replace("-", "")
        try:
            key = bytes.fromhex(digits)
        except ValueError:
            return None
        if len(key) == 16 and key.hex() == digits:
            return key
    return None


class MessageIds:
    """A set of 16-byte keys packed in `bytearray` shards chosen by the key's hash: 16 bytes
    a key instead of a string and a set entry (about 120). A shard is searched with
    `find`; the shards double once they hold `KEYS_PER_SHARD` keys on average.

    The window's loops search and append to `shards` themselves (a call per event costs
    more than the search) and then `resize` with the count they added or took.
    """

    __slots__ = ("mask", "shards", "_size")

    def __init__(self) -> None:
        self.shards = [bytearray() for _ in range(_FIRST_SHARDS)]
        self.mask = _FIRST_SHARDS - 1
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def resize(self, added: int) -> None:
        """Count `added` keys more (fewer when negative); double the shards when full."""
        self._size += added
        if self._size > len(self.shards) * KEYS_PER_SHARD:
            shards = [bytearray() for _ in range(2 * len(self.shards))]
            mask = len(shards) - 1
            for shard in self.shards:
                for at in range(0, len(shard), 16):
                    key = bytes(shard[at : at + 16])
                    shards[hash(key) & mask] += key
            self.shards, self.mask = shards, mask


def find(shard: bytearray, key: bytes) -> int:
    """Where `key` starts in `shard` on a 16-byte boundary, or -1."""
    at = shard.find(key)
    while at > 0 and at & 15:
        at = shard.find(key, at + 1)
    return at
