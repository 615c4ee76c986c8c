"""PostgreSQL over TLS with `sslmode=verify-full`, against Debian's PostgreSQL.

The server has a certificate for 127.0.0.1 and localhost from a throwaway CA (trustme),
`ssl=on`, and a pg_hba that accepts TCP only over TLS and with a password. The pipeline
works through `database.url` alone (`sslmode=verify-full sslrootcert=...`); a client that
trusts another CA gets one clear line, exit 1, and never the password of its URL.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import psycopg
import pytest
from conftest import missing_dependency, run_cli
from pg_clusters import Cluster, cluster_dir

from clickstream.generate import generate
from clickstream.ingest.consumer import Ingestor

PASSWORD = "tls-s3cret-Pw"


@pytest.fixture(scope="module")
def tls_server():
    """A cluster with TLS only (hostssl, scram), its CA file, and a CA it does not use."""
    try:
        import trustme
    except ImportError:
        missing_dependency("trustme is not installed (the test extra)")
    base = cluster_dir()
    cluster = Cluster(base, "tls").init()
    try:
        ca, other_ca = trustme.CA(), trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(str(cluster.dir / "server.crt"))
        cert.private_key_pem.write_to_path(str(cluster.dir / "server.key"))
        ca.cert_pem.write_to_path(str(base / "ca.pem"))
        other_ca.cert_pem.write_to_path(str(base / "other-ca.pem"))
        for name in ("server.crt", "server.key"):
            path = cluster.dir / name
            path.chmod(0o600)  # PostgreSQL refuses a key others can read
            if os.getuid() == 0:
                shutil.chown(path, "postgres", "postgres")
        (cluster.data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
        )
        cluster.start(
            "ssl=on",
            f"ssl_cert_file={cluster.dir / 'server.crt'}",
            f"ssl_key_file={cluster.dir / 'server.key'}",
        )
        with psycopg.connect(
            f"host={cluster.dir} port={cluster.port} user=postgres dbname=postgres",
            autocommit=True,
        ) as admin:
            admin.execute(f"CREATE ROLE clickstream LOGIN PASSWORD '{PASSWORD}'")
            admin.execute("CREATE DATABASE clickstream OWNER clickstream")
        yield cluster, base
    finally:
        cluster.remove()
        shutil.rmtree(base, ignore_errors=True)


def _url(cluster: Cluster, ca: str) -> str:
    return (
        f"postgresql://clickstream:{PASSWORD}@127.0.0.1:{cluster.port}/clickstream"
        f"?sslmode=verify-full&sslrootcert={ca}"
    )


def test_the_pipeline_works_over_verify_full(pipeline, tls_server):
    cluster, base = tls_server
    url = _url(cluster, str(base / "ca.pem"))
    settings = dataclasses.replace(pipeline.settings, database_url=url)
    migrated = run_cli(settings, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    data = generate(users=20, products=30, categories=3, views=500, orders=50, seed=7)
    pipeline.produce_views(data.views)
    pipeline.produce_orders(data.orders)
    stats = Ingestor(settings, pipeline.bootstrap).run(until_idle=1.5)
    assert (stats.views, stats.orders, stats.dead_letters) == (500, 50, 0)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert conn.execute("SELECT count(*) FROM product_views").fetchone() == (500,)
    # Without TLS the server refuses: the rows above came over TLS.
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(url.replace("sslmode=verify-full", "sslmode=disable")).close()


@pytest.mark.parametrize("command", ["migrate", "reconcile"])
def test_a_wrong_ca_is_one_line_exit_1_and_no_password(pipeline, tls_server, command):
    cluster, base = tls_server
    settings = dataclasses.replace(
        pipeline.settings, database_url=_url(cluster, str(base / "other-ca.pem"))
    )
    done = run_cli(settings, command)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "certificate verify failed" in lines[0], lines[0]
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
