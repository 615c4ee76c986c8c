"""Passwords and secrets out of text, before anything is printed, logged or answered.

PostgreSQL takes a password in three places, and a message can quote any of them: the URL's
userinfo (`postgresql://u:secret@h/db`), a query parameter (`?password=secret`,
`&sslpassword=...`) and a key=value conninfo (`password=secret host=h`, quoted
`password='se cret'`). Kafka's are librdkafka properties (`sasl.password`,
`ssl.key.password`, `sasl.oauthbearer.client.secret`), written `name=value` or as a
mapping's `'name': 'value'`, and a JAAS line's `password="..."`. One function covers them
all, anywhere in a text; it also hides every secret setting's value wherever it appears
(`clickstream.config.remember_secrets`), for the messages no pattern foresees.
`RedactingFilter` applies it to every log record of a handler.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = ["HIDDEN", "RedactingFilter", "redact", "redact_logs", "remember"]

HIDDEN = "***"

# scheme://user:PASSWORD@ — the password runs to the last @ before the host's / ? #
_USERINFO = re.compile(r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#]*(?=@)")
# ?password=... or &password=... up to the next & or #
_QUERY = re.compile(r"(?P<keep>[?&](?:ssl)?password=)[^&#\s]*", re.IGNORECASE)
# password=... as a conninfo word: a quoted value (with \' and \\ escapes) or up to a space;
# JAAS (Java's SASL settings) quotes with "
_CONNINFO = re.compile(
    r"(?P<keep>(?<![\w?&])(?:ssl)?password\s*=\s*)"
    r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s'\"]\S*)",
    re.IGNORECASE,
)
# a librdkafka property holding a secret: name=value, or 'name': 'value' in a mapping
_PROPERTY = re.compile(
    r"(?P<keep>\b(?:sasl\.password|ssl\.key\.password|ssl\.keystore\.password"
    r"|[a-z.]*client\.secret)(?:['\"]?\s*[:=]\s*))(?:'[^']*'|\"[^\"]*\"|[^\s,}&]+)",
    re.IGNORECASE,
)
_SHORTEST = 8  # a secret this short would hide ordinary words too; patterns still apply
_known: set[str] = set()
_lock = threading.Lock()


def remember(*secrets: str | None) -> None:
    """Hide these values too, wherever they appear (the settings' secrets)."""
    with _lock:
        _known.update(s for s in secrets if s and len(s) >= _SHORTEST)


def redact(text: str) -> str:
    """`text` with every password of a connection string, every secret librdkafka property
    and every remembered secret replaced by `***`."""
    for pattern in (_USERINFO, _QUERY, _CONNINFO, _PROPERTY):
        text = pattern.sub(lambda m: m.group("keep") + HIDDEN, text)
    for secret in sorted(_known, key=len, reverse=True):  # a longer one may hold a shorter
        text = text.replace(secret, HIDDEN)
    return text


class RedactingFilter(logging.Filter):
    """Put on a handler: what it writes goes through `redact`, tracebacks included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_logs() -> None:
    """Every handler of the root logger redacts what it writes (once per handler)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
