"""Passwords never leave in a connection string, whichever of PostgreSQL's forms it uses,
nor Kafka's secrets, nor the value of any secret setting."""

from __future__ import annotations

import logging
import sys

import pytest
from psycopg import conninfo

from clickstream.util.redact import RedactingFilter, redact, remember


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # URL userinfo
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        (
            "postgres://app:s3cret@db.example:5432/clicks",
            "postgres://app:***@db.example:5432/clicks",
        ),
        ("postgresql://u:p@ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:@h/db", "postgresql://u:***@h/db"),
        # query parameters
        ("postgresql://u@h/db?password=secret", "postgresql://u@h/db?password=***"),
        (
            "postgresql://h/db?user=u&password=secret&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("postgresql://h/db?sslpassword=key-secret", "postgresql://h/db?sslpassword=***"),
        ("postgresql://h/db?PASSWORD=secret#x", "postgresql://h/db?PASSWORD=***#x"),
        # key=value conninfo
        ("host=h password=secret dbname=db", "host=h password=*** dbname=db"),
        ("password=secret host=h", "password=*** host=h"),
        ("host=h password = secret user=u", "host=h password = *** user=u"),
        ("host=h password='se cret' user=u", "host=h password=*** user=u"),
        (r"password='it\'s se cret' host=h", "password=*** host=h"),
        (r"password='back\\slash' host=h", "password=*** host=h"),
        ("sslpassword=key-secret host=h", "sslpassword=*** host=h"),
        # inside a message, and more than once
        (
            "cannot connect to postgresql://a:one@h1/db or host=h2 password=two: timeout",
            "cannot connect to postgresql://a:***@h1/db or host=h2 password=*** timeout",
        ),
        # nothing to hide
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql:///db?host=/run/pg", "postgresql:///db?host=/run/pg"),
        ("host=h user=password dbname=passwords", "host=h user=password dbname=passwords"),
        ("kafka-1:9092", "kafka-1:9092"),
    ],
)
def test_every_form_of_password_is_hidden(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:secret@h/db",
        "postgresql://u@h/db?password=secret",
        "host=h password=secret dbname=db",
        "host=h password='se cret' dbname=db",
    ],
)
def test_what_is_left_is_still_the_same_connection_but_the_password(dsn):
    before = conninfo.conninfo_to_dict(dsn)
    after = conninfo.conninfo_to_dict(redact(dsn))
    assert after.pop("password") == "***"
    before.pop("password")
    assert after == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # librdkafka properties, as name=value and in a mapping's repr or JSON
        ("sasl.password=s3cret", "sasl.password=***"),
        ("{'sasl.password': 'se cret', 'acks': 'all'}", "{'sasl.password': ***, 'acks': 'all'}"),
        ('{"ssl.key.password": "k3y"}', '{"ssl.key.password": ***}'),
        (
            "sasl.oauthbearer.client.secret=abc&x=1",
            "sasl.oauthbearer.client.secret=***&x=1",
        ),
        ("ssl.keystore.password = ks next", "ssl.keystore.password = *** next"),
        # a JAAS line (Spark's own Kafka source)
        (
            'ScramLoginModule required username="u" password="p w\\"x";',
            'ScramLoginModule required username="u" password=***;',
        ),
        # nothing to hide
        ("sasl.username=clicks", "sasl.username=clicks"),
        ("ssl.ca.location=/etc/ca.pem", "ssl.ca.location=/etc/ca.pem"),
    ],
)
def test_kafka_secrets_are_hidden(text, expected):
    assert redact(text) == expected


def test_a_remembered_secret_is_hidden_wherever_it_appears():
    remember("rem3mbered-secret", None, "")
    assert redact("librdkafka: login rem3mbered-secret refused") == "librdkafka: login *** refused"


def test_the_settings_secrets_are_remembered():
    from clickstream.config import load_settings, remember_secrets

    settings = load_settings(
        env={
            "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": "k:9093",
            "CLICKSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CLICKSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
            "CLICKSTREAM_KAFKA_SASL_USERNAME": "clicks",
            "CLICKSTREAM_KAFKA_SASL_PASSWORD": "from-settings-pw",
            "CLICKSTREAM_API_KEY": "from-settings-key",
            "CLICKSTREAM_KAFKA_OPTIONS": "sasl.oauthbearer.client.secret=opt-secret-1,acks=all",
        }
    )
    remember_secrets(settings)
    text = "from-settings-pw from-settings-key opt-secret-1 clicks all"
    assert redact(text) == "*** *** *** clicks all"


def test_the_log_filter_redacts_messages_arguments_and_tracebacks():
    record = logging.LogRecord(
        "clickstream", logging.ERROR, __file__, 1, "config %s", ({"sasl.password": "x1y2"},), None
    )
    try:
        raise ValueError("postgresql://u:tb-secret@h/db")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "config {'sasl.password': ***}"
    assert "tb-secret" not in record.exc_text and "u:***@h" in record.exc_text
