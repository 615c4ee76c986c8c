"""Natural order, the one order ids are shown in: `product-2` before `product-10`."""

from __future__ import annotations

import re

__all__ = ["natural_key"]

_DIGITS = re.compile(r"([0-9]+)")


def natural_key(text: str) -> tuple:
    """Order ids as people read them: `product-2` before `product-10`.

    Runs of ASCII digits compare as numbers, the rest as text; ids equal as numbers
    (`product-01`, `product-1`) fall back to plain text order, so the order is total.
    """
    parts = _DIGITS.split(text)
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text)
