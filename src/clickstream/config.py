"""Settings: one typed object built from defaults, `config.yml` and `CLICKSTREAM_*` variables.

Every setting is declared once in `SETTINGS`, so the YAML key, the environment variable, the
validation and the documentation can never drift apart. Precedence, lowest first: the
defaults below, the YAML file, the environment.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clickstream.errors import ConfigError
from clickstream.event_time import EventTimeRule

__all__ = ["SETTINGS", "Setting", "Settings", "load_settings"]

ENV_PREFIX = "CLICKSTREAM_"
CONFIG_ENV = "CLICKSTREAM_CONFIG"


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "clickstream")


def _text(value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("expected text")
    return str(value).strip()


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    text = _text(value)
    return text or None


# host:port, the host a name, an IPv4 address or a bracketed IPv6 one; librdkafka also takes
# a listener prefix such as PLAINTEXT://.
_BROKER = re.compile(
    r"(?:[A-Za-z_]+://)?(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])"
    r":(\d{1,5})"
)


def _bootstrap_servers(value: Any) -> str | None:
    """Checked here, because librdkafka takes any string and then retries it forever."""
    text = _optional_text(value)
    if text is None:
        return None
    entries = [entry.strip() for entry in text.split(",")]
    for entry in entries:
        match = _BROKER.fullmatch(entry)
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise ValueError(f"expected host:port[,host:port...]; {entry!r} is not host:port")
    return ",".join(entries)


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
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


def _positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if not 0 < number < float("inf"):
        raise ValueError("expected a finite number greater than 0")
    return number


def _share(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if not 0 <= number <= 1:
        raise ValueError("expected a share from 0 to 1, e.g. 0.01 for 1 %")
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value).lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


@dataclass(frozen=True)
class Setting:
    """One setting: its YAML path (`section.name`), parser, default and one-line meaning."""

    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()

    @property
    def attr(self) -> str:
        return self.key.replace(".", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", _text, None, "where the embedded broker and database live"),
    Setting("reports_dir", _text, "reports", "where the hourly CSV reports are written"),
    Setting(
        "kafka.bootstrap_servers",
        _bootstrap_servers,
        None,
        "Kafka bootstrap servers; empty means the embedded Tansu broker",
    ),
    Setting("kafka.views_topic", _text, "product-views", "topic of ProductView events"),
    Setting("kafka.orders_topic", _text, "orders", "topic of OrderEvent events"),
    Setting("kafka.partitions", _int_at_least(1, 1024), 4, "partitions of topics we create"),
    Setting("kafka.consumer_group", _text, "clickstream-ingest", "consumer group of the ingest"),
    Setting(
        "kafka.session_timeout_ms",
        _int_at_least(1000),
        6000,
        "consumer session timeout; low values make a group start fast",
    ),
    Setting(
        "database.url",
        _optional_text,
        None,
        "PostgreSQL connection URL; empty means the embedded pgserver",
    ),
    Setting(
        "database.auto_migrate",
        _bool,
        True,
        "let `clickstream consume` create or upgrade the schema on start when its role may",
    ),
    Setting("ingest.batch_size", _int_at_least(1, 1_000_000), 20000, "events per write batch"),
    Setting(
        "ingest.batch_wait_ms",
        _int_at_least(1, 60_000),
        250,
        "how long the consumer waits to fill a batch before writing what it has",
    ),
    Setting(
        "ingest.max_event_bytes",
        _int_at_least(64),
        65536,
        "larger events are dead-lettered as oversize",
    ),
    Setting(
        "ingest.retry_max_seconds",
        _positive_float,
        30.0,
        "longest pause between retries of a fault (database or broker unreachable, permission,"
        " schema...)",
    ),
    Setting(
        "ingest.max_rejected_share",
        _share,
        0.01,
        "largest share of a batch the database may refuse as bad events (at least one event,"
        " none if 0); beyond it the refusal is a fault and the batch is retried",
    ),
    Setting(
        "ingest.log_every_seconds",
        _positive_float,
        10.0,
        "how often the consumer logs throughput and lag",
    ),
    Setting(
        "ingest.metrics_port",
        _int_at_least(0, 65535),
        0,
        "port `clickstream consume` serves Prometheus metrics on; 0 turns them off",
    ),
    Setting(
        "ingest.metrics_host",
        _text,
        "127.0.0.1",
        "address the consumer's metrics listen on (0.0.0.0 for a scraper on another host)",
    ),
    Setting(
        "events.max_ahead_seconds",
        _int_at_least(0, 86_400),
        5,
        "an event's timestamp further ahead of its Kafka record's is replaced by the record's",
    ),
    Setting(
        "events.max_behind_seconds",
        _int_at_least(1, 315_360_000),
        604_800,
        "an event's timestamp further behind its Kafka record's is replaced by the record's",
    ),
    Setting("api.host", _text, "127.0.0.1", "address `clickstream serve` listens on"),
    Setting("api.port", _int_at_least(1, 65535), 8000, "port `clickstream serve` listens on"),
    Setting("api.workers", _int_at_least(1, 64), 1, "worker processes of `clickstream serve`"),
    Setting("api.access_log", _bool, True, "log every HTTP request"),
    Setting(
        "api.key",
        _optional_text,
        None,
        "when set, every /api/ request and /metrics need this key",
    ),
    Setting(
        "api.metrics",
        _bool,
        True,
        "count requests and serve Prometheus metrics at /metrics",
    ),
    Setting(
        "realtime.window_seconds",
        _int_at_least(1, 86_400),
        300,
        "length of the live view's sliding window",
    ),
    Setting(
        "realtime.readers",
        _int_at_least(1, 64),
        2,
        "processes that read and clean the live view's events, each a share of the partitions",
    ),
    Setting(
        "realtime.max_streams",
        _int_at_least(1, 100_000),
        100,
        "push streams (/api/realtime/stream) one server process keeps open; more get 503",
    ),
    Setting("demo.duration", _positive_float, 120.0, "seconds `clickstream demo` runs"),
    Setting(
        "retention.events_days",
        _int_at_least(0, 36_500),
        90,
        "days of raw events (product_views, order_lines) kept; 0 keeps them forever",
    ),
    Setting(
        "retention.user_product_hours_days",
        _int_at_least(0, 36_500),
        90,
        "days of user_product_hours and report_buyers kept (how far back the recently-viewed"
        " API reaches); 0 keeps them forever",
    ),
    Setting(
        "retention.dead_letters_days",
        _int_at_least(0, 36_500),
        30,
        "days of dead letters kept; 0 keeps them forever",
    ),
    Setting(
        "privacy.hash_key",
        _optional_text,
        None,
        "secret key of the keyed hash (HMAC) that erasure records keep instead of a user id",
    ),
    Setting(
        "spark.master",
        _text,
        "local[*]",
        "Spark master of `consume --engine spark` (spark-submit's --master wins under it)",
    ),
    Setting(
        "spark.checkpoint_dir",
        _optional_text,
        None,
        "where the Spark engine checkpoints its offsets, one folder per consumer group;"
        " empty means spark-checkpoints in the data directory",
    ),
    Setting(
        "spark.source",
        _choice("python", "kafka"),
        "python",
        "python: the project's Kafka source; kafka: Spark's own (needs its connector jar)",
    ),
    Setting(
        "spark.sink",
        _choice("auto", "driver", "tasks"),
        "auto",
        "driver: one transaction per micro-batch on the driver; tasks: each task writes its"
        " share; auto: driver on local masters, tasks otherwise",
    ),
    Setting(
        "spark.max_batch_events",
        _int_at_least(1, 100_000_000),
        200_000,
        "most events one Spark micro-batch admits",
    ),
    Setting(
        "spark.commit_offsets",
        _bool,
        True,
        "also commit the Spark engine's offsets to the consumer group, for lag tools",
    ),
)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    reports_dir: Path
    kafka_bootstrap_servers: str | None
    kafka_views_topic: str
    kafka_orders_topic: str
    kafka_partitions: int
    kafka_consumer_group: str
    kafka_session_timeout_ms: int
    database_url: str | None
    database_auto_migrate: bool
    ingest_batch_size: int
    ingest_batch_wait_ms: int
    ingest_max_event_bytes: int
    ingest_retry_max_seconds: float
    ingest_max_rejected_share: float
    ingest_log_every_seconds: float
    ingest_metrics_port: int
    ingest_metrics_host: str
    events_max_ahead_seconds: int
    events_max_behind_seconds: int
    api_host: str
    api_port: int
    api_workers: int
    api_access_log: bool
    api_key: str | None
    api_metrics: bool
    realtime_window_seconds: int
    realtime_readers: int
    realtime_max_streams: int
    demo_duration: float
    spark_master: str
    spark_checkpoint_dir: str | None
    spark_source: str
    spark_sink: str
    spark_max_batch_events: int
    spark_commit_offsets: bool
    retention_events_days: int
    retention_user_product_hours_days: int
    retention_dead_letters_days: int
    privacy_hash_key: str | None = None
    source: str = field(default="defaults", compare=False)

    @property
    def topics(self) -> tuple[str, str]:
        return (self.kafka_views_topic, self.kafka_orders_topic)

    @property
    def event_time_rule(self) -> EventTimeRule:
        """The one event-time rule with these settings' limits (`clickstream.events`)."""
        return EventTimeRule(
            max_ahead_ms=self.events_max_ahead_seconds * 1000,
            max_behind_ms=self.events_max_behind_seconds * 1000,
        )

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None


def _unknown(name: str, known: Iterable[str], origin: str | None = None) -> ConfigError:
    """An unknown setting is a typo more often than not: name the closest known one.

    In a file the names are quoted after the file's name; variables are named bare.
    """

    def bare(text: str) -> str:  # the common prefix would make every variable look close
        return text.removeprefix(ENV_PREFIX)

    by_bare = {bare(k): k for k in known}
    close = [by_bare[c] for c in difflib.get_close_matches(bare(name), sorted(by_bare), n=1)]
    if origin is None:
        hint = f"; did you mean {close[0]}?" if close else " (the README lists every setting)"
        return ConfigError(f"unknown setting {name}{hint}")
    hint = f"; did you mean '{close[0]}'?" if close else " (the README lists every setting)"
    return ConfigError(f"{origin}: unknown setting '{name}'{hint}")


def _flatten(document: Mapping[str, Any], origin: str) -> dict[str, Any]:
    known = {s.key for s in SETTINGS}
    sections = {k.split(".")[0] for k in known if "." in k}
    flat: dict[str, Any] = {}
    for name, value in document.items():
        if name in sections:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: '{name}' must be a section of settings")
            for sub, subvalue in value.items():
                key = f"{name}.{sub}"
                if key not in known:
                    raise _unknown(key, known, origin)
                flat[key] = subvalue
        elif name in known:
            flat[name] = value
        else:
            raise _unknown(str(name), known | sections, origin)
    return flat


def _check_variables(env: Mapping[str, str]) -> None:
    """A misspelt CLICKSTREAM_* variable would otherwise be silently ignored."""
    known = {s.env for s in SETTINGS} | {CONFIG_ENV}
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known:
            raise _unknown(name, known)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return _flatten(document, str(path))


def _config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    if env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={path} does not exist")
        return path
    local = Path("config.yml")
    return local if local.is_file() else None


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings; raise ConfigError naming the offending key and value."""
    env = os.environ if env is None else env
    _check_variables(env)
    path = _config_path(config_file, env)
    from_file = _read_yaml(path) if path else {}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw, origin = setting.default, "default"
        if setting.key in from_file:
            raw, origin = from_file[setting.key], f"{path}: {setting.key}"
        if setting.env in env:
            raw, origin = env[setting.env], setting.env
        if raw is None:
            values[setting.attr] = None
            continue
        try:
            values[setting.attr] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{origin}={raw!r}: {exc}") from None
    values["data_dir"] = Path(values["data_dir"] or _default_data_dir()).expanduser()
    values["reports_dir"] = Path(values["reports_dir"]).expanduser()
    return Settings(**values, source=str(path) if path else "defaults")
