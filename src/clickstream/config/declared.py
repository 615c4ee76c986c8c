"""Every setting, declared once: YAML key, environment variable, parser, default, meaning.

`config.yml` is checked against this table by the suite, and the docs' settings reference
is generated from it, so the documentation cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clickstream.config.values import (
    ENV_PREFIX,
    as_text,
    boolean,
    bootstrap_servers,
    choice,
    int_at_least,
    librdkafka_options,
    optional_choice,
    optional_text,
    positive_float,
    share,
)

__all__ = ["SETTINGS", "Setting"]


@dataclass(frozen=True)
class Setting:
    """One setting: its YAML path (`section.name`), parser, default and one-line meaning.

    A `secret` setting can also be read from the file named by `<env>_FILE` (the Docker and
    Kubernetes secrets convention), and its value is never quoted in an error message.
    """

    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()

    @property
    def file_env(self) -> str:
        """The variable naming a file that holds a secret setting's value."""
        return self.env + "_FILE"

    @property
    def attr(self) -> str:
        return self.key.replace(".", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", as_text, None, "where the embedded broker and database live"),
    Setting("reports_dir", as_text, "reports", "where the hourly CSV reports are written"),
    Setting(
        "kafka.bootstrap_servers",
        bootstrap_servers,
        None,
        "Kafka bootstrap servers; empty means the embedded Tansu broker",
    ),
    Setting("kafka.views_topic", as_text, "product-views", "topic of ProductView events"),
    Setting("kafka.orders_topic", as_text, "orders", "topic of OrderEvent events"),
    Setting("kafka.partitions", int_at_least(1, 1024), 4, "partitions of topics we create"),
    Setting("kafka.consumer_group", as_text, "clickstream-ingest", "consumer group of the ingest"),
    Setting(
        "kafka.session_timeout_ms",
        int_at_least(1000),
        6000,
        "consumer session timeout; low values make a group start fast",
    ),
    Setting(
        "kafka.security_protocol",
        choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL", upper=True),
        "PLAINTEXT",
        "how every Kafka client talks to the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
    ),
    Setting(
        "kafka.ssl_ca_file",
        optional_text,
        None,
        "PEM file of the CA that signed the brokers' certificates; empty means the system's",
    ),
    Setting(
        "kafka.ssl_cert_file",
        optional_text,
        None,
        "PEM file of this client's certificate, for brokers that require one (mutual TLS)",
    ),
    Setting("kafka.ssl_key_file", optional_text, None, "PEM file of that certificate's key"),
    Setting(
        "kafka.sasl_mechanism",
        optional_choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"),
        None,
        "SASL mechanism of the SASL_* protocols: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or"
        " OAUTHBEARER",
    ),
    Setting(
        "kafka.sasl_username",
        optional_text,
        None,
        "SASL user name (the client id for OAUTHBEARER)",
    ),
    Setting(
        "kafka.sasl_password",
        optional_text,
        None,
        "SASL password (the client secret for OAUTHBEARER)",
        secret=True,
    ),
    Setting(
        "kafka.options",
        librdkafka_options,
        {},
        "any other librdkafka property, as a map; from the environment as a JSON object or"
        " name=value,name=value",
        secret=True,
    ),
    Setting(
        "database.url",
        optional_text,
        None,
        "PostgreSQL connection URL; empty means the embedded pgserver",
        secret=True,
    ),
    Setting(
        "database.auto_migrate",
        boolean,
        True,
        "let `clickstream consume` create or upgrade the schema on start when its role may",
    ),
    Setting("ingest.batch_size", int_at_least(1, 1_000_000), 20000, "events per write batch"),
    Setting(
        "ingest.batch_wait_ms",
        int_at_least(1, 60_000),
        250,
        "how long the consumer waits to fill a batch before writing what it has",
    ),
    Setting(
        "ingest.max_event_bytes",
        int_at_least(64),
        65536,
        "larger events are dead-lettered as oversize",
    ),
    Setting(
        "ingest.retry_max_seconds",
        positive_float,
        30.0,
        "longest pause between retries of a fault (database or broker unreachable, permission,"
        " schema...)",
    ),
    Setting(
        "ingest.max_rejected_share",
        share,
        0.01,
        "largest share of a batch the database may refuse as bad events (at least one event,"
        " none if 0); beyond it the refusal is a fault and the batch is retried",
    ),
    Setting(
        "ingest.log_every_seconds",
        positive_float,
        10.0,
        "how often the consumer logs throughput and lag",
    ),
    Setting(
        "ingest.metrics_port",
        int_at_least(0, 65535),
        0,
        "port `clickstream consume` serves Prometheus metrics on; 0 turns them off",
    ),
    Setting(
        "ingest.metrics_host",
        as_text,
        "127.0.0.1",
        "address the consumer's metrics listen on (0.0.0.0 for a scraper on another host)",
    ),
    Setting(
        "events.max_ahead_seconds",
        int_at_least(0, 86_400),
        5,
        "an event's timestamp further ahead of its Kafka record's is replaced by the record's",
    ),
    Setting(
        "events.max_behind_seconds",
        int_at_least(1, 315_360_000),
        604_800,
        "an event's timestamp further behind its Kafka record's is replaced by the record's",
    ),
    Setting("api.host", as_text, "127.0.0.1", "address `clickstream serve` listens on"),
    Setting("api.port", int_at_least(1, 65535), 8000, "port `clickstream serve` listens on"),
    Setting("api.workers", int_at_least(1, 64), 1, "worker processes of `clickstream serve`"),
    Setting("api.access_log", boolean, True, "log every HTTP request"),
    Setting(
        "api.key",
        optional_text,
        None,
        "when set, every /api/ request and /metrics need this key",
        secret=True,
    ),
    Setting(
        "api.metrics",
        boolean,
        True,
        "count requests and serve Prometheus metrics at /metrics",
    ),
    Setting(
        "realtime.window_seconds",
        int_at_least(1, 86_400),
        300,
        "length of the live view's sliding window",
    ),
    Setting(
        "realtime.readers",
        int_at_least(1, 64),
        2,
        "processes that read and clean the live view's events, each a share of the partitions",
    ),
    Setting(
        "realtime.max_streams",
        int_at_least(1, 100_000),
        100,
        "push streams (/api/realtime/stream) one server process keeps open; more get 503",
    ),
    Setting("demo.duration", positive_float, 120.0, "seconds `clickstream demo` runs"),
    Setting(
        "retention.events_days",
        int_at_least(0, 36_500),
        90,
        "days of raw events (product_views, order_lines) kept; 0 keeps them forever",
    ),
    Setting(
        "retention.user_product_hours_days",
        int_at_least(0, 36_500),
        90,
        "days of user_product_hours and report_buyers kept (how far back the recently-viewed"
        " API reaches); 0 keeps them forever",
    ),
    Setting(
        "retention.dead_letters_days",
        int_at_least(0, 36_500),
        30,
        "days of dead letters kept; 0 keeps them forever",
    ),
    Setting(
        "privacy.hash_key",
        optional_text,
        None,
        "secret key of the keyed hash (HMAC) that erasure records keep instead of a user id",
        secret=True,
    ),
    Setting(
        "spark.master",
        as_text,
        "local[*]",
        "Spark master of `consume --engine spark` (spark-submit's --master wins under it)",
    ),
    Setting(
        "spark.checkpoint_dir",
        optional_text,
        None,
        "where the Spark engine checkpoints its offsets, one folder per consumer group;"
        " empty means spark-checkpoints in the data directory",
    ),
    Setting(
        "spark.source",
        choice("python", "kafka"),
        "python",
        "python: the project's Kafka source; kafka: Spark's own (needs its connector jar)",
    ),
    Setting(
        "spark.sink",
        choice("auto", "driver", "tasks"),
        "auto",
        "driver: one transaction per micro-batch on the driver; tasks: each task writes its"
        " share; auto: tasks, the faster on one machine as on a cluster",
    ),
    Setting(
        "spark.max_batch_events",
        int_at_least(1, 100_000_000),
        1_000_000,
        "most events one Spark micro-batch admits: each has a fixed cost (planning,"
        " scheduling, the checkpoint) that a larger one spreads wider",
    ),
    Setting(
        "spark.commit_offsets",
        boolean,
        True,
        "also commit the Spark engine's offsets to the consumer group, for lag tools",
    ),
)
