"""Settings: one typed object built from defaults, `config.yml` and `CLICKSTREAM_*` variables.

Every setting is declared once in `SETTINGS` (config/declared.py), so the YAML key, the
environment variable, the validation and the documentation can never drift apart.
Precedence, lowest first: the defaults, the YAML file, the environment.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clickstream.config.declared import SETTINGS, Setting
from clickstream.config.values import CONFIG_ENV, ENV_PREFIX, default_data_dir
from clickstream.errors import ConfigError
from clickstream.ingest.event_time import EventTimeRule
from clickstream.ingest.raw import Kind
from clickstream.util import redact

__all__ = ["SETTINGS", "Setting", "Settings", "load_settings", "remember_secrets"]


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
    kafka_security_protocol: str
    kafka_ssl_ca_file: str | None
    kafka_ssl_cert_file: str | None
    kafka_ssl_key_file: str | None
    kafka_sasl_mechanism: str | None
    kafka_sasl_username: str | None
    kafka_sasl_password: str | None
    kafka_options: dict[str, str]
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
        """The one event-time rule with these settings' limits (`clickstream.ingest.cleaning`)."""
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
    known = {s.env for s in SETTINGS} | {s.file_env for s in SETTINGS if s.secret} | {CONFIG_ENV}
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


def _check_retention(values: Mapping[str, Any]) -> None:
    """Refuse a retention that prunes days a late event may still come back to: the event
    would recreate its pruned day (its messageid key gone, its (user, product, hour) row
    gone) and be stored again, its viewer or buyer counted twice."""
    behind = values["events_max_behind_seconds"]
    for kind in ("events", "user_product_hours"):
        days = values[f"retention_{kind}_days"]
        if days and days * 86_400 < behind:
            raise ConfigError(
                f"retention.{kind}_days={days} keeps less than events.max_behind_seconds="
                f"{behind} ({behind / 86_400:g} days): a late event would come back to a pruned"
                f" day and be counted twice; keep at least {-(-behind // 86_400)} days, or"
                " lower events.max_behind_seconds"
            )


def _from_environment(setting: Setting, env: Mapping[str, str]) -> tuple[Any, str] | None:
    """The value the environment gives, from the variable or (a secret) the file it names."""
    if setting.secret and env.get(setting.file_env):
        if setting.env in env:
            raise ConfigError(f"set {setting.env} or {setting.file_env}, not both")
        path = Path(env[setting.file_env])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"{setting.file_env}={path}: cannot read it: {why}") from None
        # Secrets files usually end in a newline that is not part of the secret.
        return text.rstrip("\r\n"), f"{setting.file_env}={path}"
    if setting.env in env:
        return env[setting.env], setting.env
    return None


def _parse(setting: Setting, raw: Any, origin: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        if setting.secret:  # never quote a secret, not even a mistyped one
            raise ConfigError(f"{origin}: {exc}") from None
        raise ConfigError(f"{origin}={raw!r}: {exc}") from None


def _check_kafka_security(values: Mapping[str, Any]) -> None:
    """Settings that only make sense together: caught at start rather than at the broker."""
    protocol = values["kafka_security_protocol"]
    sasl = protocol.startswith("SASL_")
    if values["kafka_bootstrap_servers"] is None and protocol != "PLAINTEXT":
        raise ConfigError(
            f"kafka.security_protocol={protocol} needs kafka.bootstrap_servers"
            " (the embedded broker only speaks PLAINTEXT)"
        )
    if sasl and values["kafka_sasl_mechanism"] is None:
        raise ConfigError(f"kafka.security_protocol={protocol} needs kafka.sasl_mechanism")
    if not sasl and values["kafka_sasl_mechanism"] is not None:
        raise ConfigError(
            "kafka.sasl_mechanism is set but kafka.security_protocol is"
            f" {protocol}: use SASL_SSL (or SASL_PLAINTEXT)"
        )
    if values["kafka_sasl_mechanism"] in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}:
        for name in ("kafka_sasl_username", "kafka_sasl_password"):
            if values[name] is None:
                raise ConfigError(
                    f"kafka.sasl_mechanism={values['kafka_sasl_mechanism']} needs"
                    f" {name.replace('kafka_', 'kafka.')}"
                )
    if (values["kafka_ssl_cert_file"] is None) != (values["kafka_ssl_key_file"] is None):
        raise ConfigError("kafka.ssl_cert_file and kafka.ssl_key_file go together: set both")


def remember_secrets(settings: Settings) -> None:
    """Hide the secrets' values from every message of this process (`clickstream.util.redact`);
    the database URL's password is found by pattern, in whichever form the URL is written.
    Called where a process takes its settings for good (the CLI, the API's workers)."""
    redact.remember(settings.kafka_sasl_password, settings.api_key, settings.privacy_hash_key)
    redact.remember(
        *(v for k, v in settings.kafka_options.items() if re.search(r"password|secret|jaas", k))
    )


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
        given = _from_environment(setting, env)
        if given is not None:
            raw, origin = given
        if raw is None and isinstance(setting.default, dict):
            raw = {}  # `options:` left empty in the file: no options, not None
        values[setting.attr] = None if raw is None else _parse(setting, raw, origin)
    _check_retention(values)
    values["data_dir"] = Path(values["data_dir"] or default_data_dir()).expanduser()
    values["reports_dir"] = Path(values["reports_dir"]).expanduser()
    _check_kafka_security(values)
    return Settings(**values, source=str(path) if path else "defaults")
