"""The parsers that turn a YAML or environment value into a setting, or refuse it in one line."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "CLICKSTREAM_"
CONFIG_ENV = "CLICKSTREAM_CONFIG"


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "clickstream")


def as_text(value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("expected text")
    return str(value).strip()


def optional_text(value: Any) -> str | None:
    if value is None:
        return None
    text = as_text(value)
    return text or None


# host:port, the host a name, an IPv4 address or a bracketed IPv6 one; librdkafka also takes
# a listener prefix such as PLAINTEXT://.
_BROKER = re.compile(
    r"(?:[A-Za-z_]+://)?(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])"
    r":(\d{1,5})"
)


def bootstrap_servers(value: Any) -> str | None:
    """Checked here, because librdkafka takes any string and then retries it forever."""
    text = optional_text(value)
    if text is None:
        return None
    entries = [entry.strip() for entry in text.split(",")]
    for entry in entries:
        match = _BROKER.fullmatch(entry)
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise ValueError(f"expected host:port[,host:port...]; {entry!r} is not host:port")
    return ",".join(entries)


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if number < minimum or (maximum is not None and number > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ValueError(f"expected a whole number at least {minimum}{upper}")
        return number

    return parse


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError("expected a number") from None


def positive_float(value: Any) -> float:
    number = _number(value)
    if not 0 < number < float("inf"):
        raise ValueError("expected a finite number greater than 0")
    return number


def share(value: Any) -> float:
    number = _number(value)
    if not 0 <= number <= 1:
        raise ValueError("expected a share from 0 to 1, e.g. 0.01 for 1 %")
    return number


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def choice(*choices: str, upper: bool = False) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = as_text(value)
        text = text.upper() if upper else text.lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def optional_choice(*choices: str) -> Callable[[Any], str | None]:
    """One of `choices` (written in capitals, as Kafka spells them), or nothing."""
    exact = choice(*choices, upper=True)

    def parse(value: Any) -> str | None:
        return None if optional_text(value) is None else exact(value)

    return parse


# librdkafka's property names: lower case words joined by dots (ssl.endpoint.identification...)
_PROPERTY = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*")
# What a dedicated setting says (two places for one thing would leave the reader guessing),
# and what the project's correctness rests on: offsets are committed only once stored.
OWNED_PROPERTIES = {
    "bootstrap.servers": "kafka.bootstrap_servers",
    "security.protocol": "kafka.security_protocol",
    "ssl.ca.location": "kafka.ssl_ca_file",
    "ssl.certificate.location": "kafka.ssl_cert_file",
    "ssl.key.location": "kafka.ssl_key_file",
    "sasl.mechanism": "kafka.sasl_mechanism",
    "sasl.mechanisms": "kafka.sasl_mechanism",
    "sasl.username": "kafka.sasl_username",
    "sasl.password": "kafka.sasl_password",
    "group.id": "kafka.consumer_group",
    "enable.auto.commit": "clickstream (offsets are committed once stored)",
    "enable.auto.offset.store": "clickstream (offsets are committed once stored)",
    "enable.partition.eof": "clickstream",
    "logger": "clickstream",
    "error_cb": "clickstream",
}


def _pairs(text: str) -> Mapping[str, Any]:
    """`name=value,name=value`, or a JSON object when the text starts with `{`."""
    if text.startswith("{"):
        try:
            found = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a valid JSON object ({exc.msg})") from None
        if not isinstance(found, dict):
            raise ValueError("expected a JSON object of librdkafka properties")
        return found
    pairs: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = entry.partition("=")
        if not equals:
            # the entry itself is not quoted: it may hold a secret
            raise ValueError("expected name=value[,name=value...] or a JSON object")
        pairs[name.strip()] = value.strip()
    return pairs


def librdkafka_options(value: Any) -> dict[str, str]:
    """Extra librdkafka properties: a YAML map, or from the environment a JSON object or
    `name=value,name=value`. Values are never quoted in a message: one may be a secret."""
    if value is None:
        return {}
    pairs = value if isinstance(value, Mapping) else _pairs(as_text(value))
    options: dict[str, str] = {}
    for name, raw in pairs.items():
        name = str(name).strip()
        if not _PROPERTY.fullmatch(name):
            raise ValueError(f"{name!r} is not a librdkafka property name")
        if name in OWNED_PROPERTIES:
            raise ValueError(f"{name} is set by {OWNED_PROPERTIES[name]}, not here")
        if isinstance(raw, bool):
            raw = "true" if raw else "false"
        if not isinstance(raw, str | int | float):
            raise ValueError(f"{name} must be text, a number or true/false")
        options[name] = str(raw).strip()
    return options
