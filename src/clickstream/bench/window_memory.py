"""`clickstream bench realtime` (c): the live window's memory per view it holds.

The window is filled through `SlidingWindow.add` in a process of its own (so nothing else
the benchmark did sits in its memory), with views spread evenly over one 5-minute window and
every string made per event, as a reader decoding JSON makes them; the figure is the growth
of the process's resident memory divided by the views held.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random

from clickstream.errors import ClickstreamError

__all__ = ["MEMORY_PRODUCTS", "MEMORY_USERS", "MEMORY_VIEWS", "window_bytes_per_view"]

MEMORY_VIEWS = 2_000_000
MEMORY_USERS = 200_000
MEMORY_PRODUCTS = 20_000
_WINDOW_MS = 300_000
_BATCH = 500
_PLATFORMS = ("ios", "android", "web", "mobile-web")


def window_bytes_per_view(
    views: int = MEMORY_VIEWS, users: int = MEMORY_USERS, products: int = MEMORY_PRODUCTS
) -> float:
    """Resident bytes a view costs in a window holding `views` views."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_fill, (views, users, products))


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fill(views: int, users: int, products: int) -> float:
    from clickstream.realtime.window import SlidingWindow

    rng = random.Random(20)
    start = 1_795_525_200_000
    gc.collect()
    before = _resident()
    window = SlidingWindow(_WINDOW_MS)
    for first in range(0, views, _BATCH):
        last = min(views, first + _BATCH)
        batch = []
        for index in range(first, last):
            digits = f"{rng.getrandbits(128):032x}"
            batch.append(
                (
                    f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}",
                    f"user-{rng.randrange(users)}",
                    f"product-{rng.randrange(products)}",
                    "".join(_PLATFORMS[index % len(_PLATFORMS)]),  # a string of its own
                    start + index * _WINDOW_MS // views,
                )
            )
        window.add(batch, start + (last - 1) * _WINDOW_MS // views)
    del batch
    gc.collect()
    held = len(window)
    if held != views:
        raise ClickstreamError(f"the window holds {held:,} views, expected {views:,}")
    return (_resident() - before) / held
