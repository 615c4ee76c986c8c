"""Erasure of a user, the pure part: the keyed hash that stands for an id, and which raw
payloads name a user.

An erasure record must prove what was erased without keeping who: it keeps
HMAC-SHA256(`privacy.hash_key`, user id). Without the key nobody can test a guessed id
against it (a plain hash of `user-346` is one guess away), and with it the live view can
recognise the erased user among the ids it holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import orjson

__all__ = ["needles", "names_user", "user_hash"]


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


def _mentions(value: Any, userid: str) -> bool:
    if type(value) is str:
        return value == userid
    if type(value) is dict:
        return any(k == userid or _mentions(v, userid) for k, v in value.items())
    if type(value) is list:
        return any(_mentions(v, userid) for v in value)
    return False


def names_user(payload: bytes, userid: str) -> bool:
    """True when the payload names the user: in JSON, any string equal to the id (a key or a
    value, at any depth); in anything that is not JSON, the id between double quotes.

    Exact, not a substring: erasing `user-3` keeps the payloads of `user-30`.
    """
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return any(b'"' + needle + b'"' in payload for needle in needles(userid))
    return _mentions(document, userid)
