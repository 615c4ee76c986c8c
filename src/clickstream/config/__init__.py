"""Settings: one typed object built from defaults, `config.yml` and `CLICKSTREAM_*` variables.

Every setting is declared once in `SETTINGS` (config/declared.py), so the YAML key, the
environment variable, the validation and the documentation can never drift apart.
Precedence, lowest first: the defaults, the YAML file, the environment.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clickstream.config.declared import SETTINGS, Setting
from clickstream.config.values import CONFIG_ENV, ENV_PREFIX, default_data_dir
from clickstream.errors import ConfigError
from clickstream.event_time import EventTimeRule
from clickstream.events import Kind

__all__ = ["SETTINGS", "Setting", "Settings", "load_settings"]


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
    def kinds(self) -> dict[str, Kind]:
        """Each topic's kind of event: what the cleaning rules expect of its records."""
        return {self.kafka_views_topic: Kind.VIEW, self.kafka_orders_topic: Kind.ORDER}

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


_SEE_REFERENCE = " (the docs' settings reference lists all)"


def _unknown(name: str, known: Iterable[str], origin: str | None = None) -> ConfigError:
    """An unknown setting is a typo more often than not: name the closest known one.

    In a file the names are quoted after the file's name; variables are named bare.
    """

    def bare(text: str) -> str:  # the common prefix would make every variable look close
        return text.removeprefix(ENV_PREFIX)

    by_bare = {bare(k): k for k in known}
    close = [by_bare[c] for c in difflib.get_close_matches(bare(name), sorted(by_bare), n=1)]
    if origin is None:
        hint = f"; did you mean {close[0]}?" if close else _SEE_REFERENCE
        return ConfigError(f"unknown setting {name}{hint}")
    hint = f"; did you mean '{close[0]}'?" if close else _SEE_REFERENCE
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
    values["data_dir"] = Path(values["data_dir"] or default_data_dir()).expanduser()
    values["reports_dir"] = Path(values["reports_dir"]).expanduser()
    return Settings(**values, source=str(path) if path else "defaults")
