"""The error policy (store/faults.py): its table, and its use outside the consumer.

`catalog load`, `clickstream report` and the API meet the same faults as the consumer (see
test_ingest_faults.py) and answer them the same way: the cause and what to do, never a
traceback, never a 500.
"""

from __future__ import annotations

import dataclasses
import http.client
from collections.abc import Iterator

import psycopg
import pytest
from conftest import Pipeline
from psycopg import conninfo, errors, sql
from test_ingest_faults import drop_role, make_role

from clickstream.api.server import run_in_background
from clickstream.errors import (
    DatabaseFault,
    DatabaseUnreachable,
    OutOfResources,
    PermissionDenied,
    ReadOnlyDatabase,
    RejectedByDatabase,
    SchemaMismatch,
    StatementTimeout,
    TransactionConflict,
)
from clickstream.store.db import connect
from clickstream.store.faults import classify

# -- the table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.InsufficientPrivilege, PermissionDenied),
        (errors.UndefinedTable, SchemaMismatch),
        (errors.UndefinedColumn, SchemaMismatch),
        (errors.ReadOnlySqlTransaction, ReadOnlyDatabase),
        (errors.DeadlockDetected, TransactionConflict),
        (errors.SerializationFailure, TransactionConflict),
        (errors.QueryCanceled, StatementTimeout),
        (errors.LockNotAvailable, StatementTimeout),
        (errors.AdminShutdown, DatabaseUnreachable),
        (errors.CrashShutdown, DatabaseUnreachable),
        (errors.CannotConnectNow, DatabaseUnreachable),
        (errors.ConnectionFailure, DatabaseUnreachable),
        (errors.TooManyConnections, OutOfResources),
        (errors.DiskFull, OutOfResources),
        (errors.OutOfMemory, OutOfResources),
        (psycopg.InterfaceError, DatabaseUnreachable),
        (psycopg.OperationalError, DatabaseUnreachable),
        (errors.InternalError_, DatabaseFault),
        # Data and integrity errors are faults too, unless events were being written.
        (errors.CheckViolation, DatabaseFault),
        (errors.NumericValueOutOfRange, DatabaseFault),
    ],
    ids=lambda value: value.__name__,
)
def test_every_error_but_an_events_content_is_a_fault(error, expected):
    for writing_events in (False, True):
        fault = classify(error("the server's words"), writing_events=writing_events)
        if writing_events and error.sqlstate and error.sqlstate[:2] in ("22", "23"):
            continue
        assert type(fault) is expected
        assert str(fault).startswith("the server's words: ")


@pytest.mark.parametrize(
    "error", [errors.CheckViolation, errors.UniqueViolation, errors.NumericValueOutOfRange]
)
def test_data_and_integrity_errors_of_written_events_reject_them(error):
    refused = classify(error("new row violates check constraint"), writing_events=True)
    assert type(refused) is RejectedByDatabase
    assert refused.detail == "new row violates check constraint"
    assert refused.sqlstate == error.sqlstate


def test_a_permission_error_says_what_to_grant_to_whom():
    fault = classify(
        errors.InsufficientPrivilege("permission denied for table products"),
        role="loader",
        privileges="SELECT, INSERT",
    )
    assert str(fault) == (
        "permission denied for table products: grant SELECT, INSERT on it to role loader"
        " (SQLSTATE 42501)"
    )


# -- catalog load, report and the API as an ordinary role --------------------------------------


@pytest.fixture
def as_role(pipeline) -> Iterator[tuple[Pipeline, psycopg.Connection, str]]:
    """The pipeline's settings for an ordinary role, an admin connection, and the role."""
    with connect(pipeline.settings):
        pass
    url = pipeline.settings.database_url
    admin = psycopg.connect(url, autocommit=True)
    role = make_role(admin, conninfo.conninfo_to_dict(url)["dbname"])
    # Every connection still brings the schema up to date, which needs CREATE on the schema.
    admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    settings = dataclasses.replace(
        pipeline.settings, database_url=conninfo.make_conninfo(url, user=role)
    )
    try:
        yield Pipeline(settings, pipeline.bootstrap), admin, role
    finally:
        drop_role(admin, role)
        admin.close()


def _privilege(admin: psycopg.Connection, verb: str, what: str, table: str, role: str) -> None:
    direction = "FROM" if verb == "REVOKE" else "TO"
    admin.execute(
        sql.SQL(f"{verb} {what} ON {{}} {direction} {{}}").format(
            sql.Identifier(table), sql.Identifier(role)
        )
    )


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def test_catalog_load_without_privilege_says_what_to_grant_and_exits_1(as_role, tmp_path):
    p, admin, role = as_role
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("productid,categoryid\nproduct-1,category-1\n")
    _privilege(admin, "REVOKE", "INSERT, UPDATE", "products", role)

    result = p.cli("catalog", "load", str(catalog))

    assert result.returncode == 1
    assert _error_line(result.stderr) == (
        f"clickstream: error: permission denied for table products: grant SELECT, INSERT,"
        f" UPDATE on it to role {role} (SQLSTATE 42501)"
    )
    assert result.stderr.count("retrying in") == 3
    assert "nothing loaded yet" in result.stderr
    assert p.query("SELECT count(*) FROM products") == [(0,)]

    _privilege(admin, "GRANT", "INSERT, UPDATE", "products", role)
    result = p.cli("catalog", "load", str(catalog))
    assert result.returncode == 0, result.stderr
    assert p.query("SELECT productid, categoryid FROM products") == [("product-1", "category-1")]


def test_report_without_privilege_says_what_to_grant_and_exits_1(as_role, tmp_path):
    p, admin, role = as_role
    _privilege(admin, "REVOKE", "SELECT", "report_view_hours", role)

    result = p.cli("report", "--hour", "2026-11-24T13", "--out", str(tmp_path))

    assert result.returncode == 1
    assert _error_line(result.stderr) == (
        "clickstream: error: permission denied for table report_view_hours: grant SELECT on it"
        f" to role {role} (SQLSTATE 42501)"
    )
    assert list(tmp_path.iterdir()) == []

    _privilege(admin, "GRANT", "SELECT", "report_view_hours", role)
    result = p.cli("report", "--hour", "2026-11-24T13", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.iterdir())) == 3


def test_the_api_answers_a_fault_with_503_a_reason_and_retry_after(as_role):
    p, admin, role = as_role
    server = run_in_background(p.settings, "127.0.0.1", 0)
    try:
        assert _get(server, "/api/users/u/recently-viewed")[0] == 200
        _privilege(admin, "REVOKE", "SELECT", "user_product_hours", role)

        status, headers, body = _get(server, "/api/users/u/recently-viewed")
        assert (status, headers["content-type"]) == (503, "application/json")
        assert body == b'{"error":"the database denies this role a privilege","problems":[]}'
        assert headers["retry-after"] == str(PermissionDenied.retry_after)

        _privilege(admin, "GRANT", "SELECT", "user_product_hours", role)
        assert _get(server, "/api/users/u/recently-viewed")[0] == 200
    finally:
        server.stop()


def _get(server, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()
