"""Passwords never leave in a connection string, whichever of PostgreSQL's forms it uses."""

from __future__ import annotations

import pytest
from psycopg import conninfo

from clickstream.redact import redact


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
