"""Bytes and text from events shown to a person: escaped, never interpreted.

A payload can hold anything, terminal escape sequences and bidirectional overrides
included; what reaches a terminal or a log is printable text where every other character
is an escape, and a backslash is doubled, so the escapes cannot be confused with the data.
"""

from __future__ import annotations

__all__ = ["preview", "printable"]

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    if char.isprintable():
        return char
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` with every non-printable character escaped."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(char) for char in text)


def preview(payload: bytes, limit: int) -> str:
    """The first `limit` bytes of a payload as printable text; bytes that are not UTF-8
    (and a character cut at the limit) are shown as `\\xNN`, and an ellipsis says more
    follows."""
    text = printable(payload[:limit].decode("utf-8", "surrogateescape"))
    return text + "…" if len(payload) > limit else text
