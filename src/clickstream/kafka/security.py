"""How every Kafka client reaches the brokers: their address and how to authenticate.

`brokers(settings)` builds one `Brokers` value and every client configuration starts from
`Brokers.config()` (`clickstream.kafka.client`), so the producer, the consumers, the live
view's readers, the admin calls, the benchmarks and the Spark source cannot differ in how
they talk to Kafka. Its repr names the address only, so a password never reaches a log line
or a traceback through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clickstream.errors import ConfigError
from clickstream.kafka.logs import LOG

if TYPE_CHECKING:
    from clickstream.config import Settings

__all__ = ["Brokers", "brokers", "java_client_options", "security_properties"]

_SASL_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


@dataclass(frozen=True)
class Brokers:
    """The bootstrap address and the librdkafka properties every client of it needs."""

    bootstrap: str
    # security and `kafka.options`; they come last, so an operator's option wins over the
    # project's tuning of a client
    properties: dict[str, str] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        return self.bootstrap

    def config(self, **overrides) -> dict:
        """A client's librdkafka configuration: this address, `overrides`, the properties."""
        return {"bootstrap.servers": self.bootstrap, "logger": LOG, **overrides, **self.properties}


def brokers(settings: Settings, address: Brokers | str | None = None) -> Brokers:
    """The configured brokers with the configured security; an `address` given as text
    replaces the configured one (None: `kafka.bootstrap_servers`, or the embedded broker)."""
    if isinstance(address, Brokers):
        return address
    if address is None:
        from clickstream.services.embedded import bootstrap_servers

        address = bootstrap_servers(settings)
    return Brokers(address, security_properties(settings))


def _readable(path: str | None, key: str) -> str | None:
    """Checked here: librdkafka's own message for a missing file comes at the first connect."""
    if path is None:
        return None
    path = os.path.expanduser(path)
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(f"{key}={path}: no such readable file")
    return path


def security_properties(settings: Settings) -> dict[str, str]:
    """librdkafka's properties for `kafka.security_protocol` and the settings that go with it,
    then `kafka.options`. Hostname verification is on unless an option turns it off."""
    protocol = settings.kafka_security_protocol
    properties = {"security.protocol": protocol} if protocol != "PLAINTEXT" else {}
    if protocol in ("SSL", "SASL_SSL"):
        properties["ssl.endpoint.identification.algorithm"] = "https"
        # "probe": the system's CA bundle, wherever this OpenSSL build expects it or not
        ca = _readable(settings.kafka_ssl_ca_file, "kafka.ssl_ca_file")
        properties["ssl.ca.location"] = ca or "probe"
        cert = _readable(settings.kafka_ssl_cert_file, "kafka.ssl_cert_file")
        if cert is not None:
            properties["ssl.certificate.location"] = cert
            properties["ssl.key.location"] = _readable(
                settings.kafka_ssl_key_file, "kafka.ssl_key_file"
            )
    if protocol.startswith("SASL_"):
        mechanism = settings.kafka_sasl_mechanism
        properties["sasl.mechanism"] = mechanism
        if mechanism == "OAUTHBEARER":
            # librdkafka's own OIDC client-credentials flow; the token endpoint and scope
            # come through kafka.options
            if settings.kafka_sasl_username is not None:
                properties["sasl.oauthbearer.method"] = "oidc"
                properties["sasl.oauthbearer.client.id"] = settings.kafka_sasl_username
            if settings.kafka_sasl_password is not None:
                properties["sasl.oauthbearer.client.secret"] = settings.kafka_sasl_password
        else:
            properties["sasl.username"] = settings.kafka_sasl_username
            properties["sasl.password"] = settings.kafka_sasl_password
    properties.update(settings.kafka_options)
    return properties


def _jaas_quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def java_client_options(settings: Settings) -> dict[str, str]:
    """The same security for Spark's own `kafka` source, which runs the Java client.

    Its names differ from librdkafka's for the CA (a PEM trust store) and SASL (a JAAS line);
    `kafka.options` is passed as it is, and the Java client ignores, with a warning, what
    it does not know. A client certificate would need its key inline in an option that Spark
    does not redact, so that case is refused: the project's own source takes it.
    """
    protocol = settings.kafka_security_protocol
    options = {"security.protocol": protocol} if protocol != "PLAINTEXT" else {}
    if protocol in ("SSL", "SASL_SSL"):
        if settings.kafka_ssl_cert_file is not None:
            raise ConfigError(
                "spark.source=kafka cannot use kafka.ssl_cert_file: use spark.source=python"
            )
        ca = _readable(settings.kafka_ssl_ca_file, "kafka.ssl_ca_file")
        if ca is not None:
            options.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": ca})
    mechanism = settings.kafka_sasl_mechanism
    if protocol.startswith("SASL_") and mechanism in _SASL_MODULES:
        options["sasl.mechanism"] = mechanism
        options["sasl.jaas.config"] = (
            f"{_SASL_MODULES[mechanism]} required"
            f" username={_jaas_quoted(settings.kafka_sasl_username or '')}"
            f" password={_jaas_quoted(settings.kafka_sasl_password or '')};"
        )
    elif protocol.startswith("SASL_"):
        raise ConfigError(f"spark.source=kafka cannot use kafka.sasl_mechanism={mechanism}")
    options.update(settings.kafka_options)
    return options
