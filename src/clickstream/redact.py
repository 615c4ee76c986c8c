"""Passwords out of connection strings, before anything is printed, logged or answered.

PostgreSQL takes a password in three places, and a message can quote any of them: the URL's
userinfo (`postgresql://u:secret@h/db`), a query parameter (`?password=secret`,
`&sslpassword=...`) and a key=value conninfo (`password=secret host=h`, quoted
`password='se cret'`). One function covers them all, anywhere in a text.
"""

from __future__ import annotations

import re

__all__ = ["HIDDEN", "redact"]

HIDDEN = "***"

# scheme://user:PASSWORD@ — the password runs to the last @ before the host's / ? #
_USERINFO = re.compile(r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#]*(?=@)")
# ?password=... or &password=... up to the next & or #
_QUERY = re.compile(r"(?P<keep>[?&](?:ssl)?password=)[^&#\s]*", re.IGNORECASE)
# password=... as a conninfo word: a quoted value (with \' and \\ escapes) or up to a space
_CONNINFO = re.compile(
    r"(?P<keep>(?<![\w?&])(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s']\S*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with every password of a connection string in it replaced by `***`."""
    for pattern in (_USERINFO, _QUERY, _CONNINFO):
        text = pattern.sub(lambda m: m.group("keep") + HIDDEN, text)
    return text
