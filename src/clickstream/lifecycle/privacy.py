"""Erasure of a user, the pure part: the keyed hash that stands for an id, and which raw
payloads name a user.

An erasure record must prove what was erased without keeping who: it keeps
HMAC-SHA256(`privacy.hash_key`, user id). Without the key nobody can test a guessed id
against it (a plain hash of `user-346` is one guess away), and with it the live view can
recognise the erased user among the ids it holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
from typing import Any

import orjson

__all__ = ["named_ids", "names_user", "needles", "user_hash"]


def user_hash(key: str, userid: str) -> str:
    """The keyed hash kept in place of a user id, as hex."""
    return hmac.new(key.encode(), userid.encode(), hashlib.sha256).hexdigest()


def needles(userid: str) -> list[bytes]:
    """The byte strings a payload naming the user contains: the id as UTF-8, and as JSON
    writes it inside a string (escaped quotes and backslashes, `\\uXXXX` for non-ASCII)."""
    forms = {
        userid.encode(),
        orjson.dumps(userid)[1:-1],
        json.dumps(userid, ensure_ascii=True)[1:-1].encode(),
    }
    return sorted(forms)


# What may border an id written without quotes in a payload that is not JSON: the end, white
# space, quotes or JSON punctuation. `user-3` in `user-30` or `m-37` is not `37`.
_EDGE = rb"\s\"'{}\[\],:=;"
_TOKEN = re.compile(rb"[^" + _EDGE + rb"]+")
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def _mentions(value: Any, userid: str) -> bool:
    if type(value) is str:
        return value == userid
    if type(value) is int:  # "userid": 37
        return str(value) == userid
    if type(value) is dict:
        return any(k == userid or _mentions(v, userid) for k, v in value.items())
    if type(value) is list:
        return any(_mentions(v, userid) for v in value)
    return False


def names_user(payload: bytes, userid: str) -> bool:
    """True when the payload names the user: in JSON, any string or integer equal to the id
    (a key or a value, at any depth); in anything that is not JSON, the id between quotes
    or written bare, bordered by white space, quotes or punctuation (`{"userid": user-37,`).

    Exact, not a substring: erasing `user-3` keeps the payloads of `user-30`.
    """
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return any(
            re.search(
                rb"(?<![^" + _EDGE + rb"])" + re.escape(needle) + rb"(?![^" + _EDGE + rb"])",
                payload,
            )
            for needle in needles(userid)
        )
    return _mentions(document, userid)


def _strings(value: Any, found: set[str]) -> None:
    if type(value) is str:
        found.add(value)
    elif type(value) is int:
        found.add(str(value))
    elif type(value) is dict:
        found.update(value)
        for item in value.values():
            _strings(item, found)
    elif type(value) is list:
        for item in value:
            _strings(item, found)


def named_ids(payload: bytes) -> set[str]:
    """Every id the payload may name, as `names_user` finds them: in JSON its strings and
    integers; otherwise its quoted strings and its bare words. What the ingest hashes to
    recognise a bad record of an erased user."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        found = set()
        for raw in (*_QUOTED.findall(payload), *_TOKEN.findall(payload)):
            text = raw.decode("utf-8", "replace")
            found.add(text)
            with contextlib.suppress(orjson.JSONDecodeError):
                found.add(orjson.loads(b'"' + raw + b'"'))
        return found
    found: set[str] = set()
    _strings(document, found)
    return found
