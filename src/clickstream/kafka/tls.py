"""Why a TLS handshake with the broker failed, in words an operator can act on.

librdkafka says "certificate verify failed" alike for an unknown CA, an expired certificate
and a certificate issued for another name, and points at its own property names. When it
does, `explain` repeats the handshake with Python's `ssl` and the same CA file, whose error
names the reason (OpenSSL's verify result), and says which setting to look at.
"""

from __future__ import annotations

import socket
import ssl

from clickstream.kafka.security import Brokers

__all__ = ["explain"]

_TIMEOUT = 5.0
# OpenSSL's X509_V_ERR_* codes, grouped by what the operator should do
_EXPIRED = {9, 10}  # not yet valid, expired
_WRONG_NAME = {62}  # hostname mismatch
_HINTS = {
    "expired": "the broker's certificate must be renewed (or this machine's clock is wrong)",
    "name": "the broker's address in kafka.bootstrap_servers (and the name it advertises)"
    " must be one its certificate is issued for",
    "ca": "is kafka.ssl_ca_file the CA that signed the broker's certificate?",
}


def _host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].split("://")[-1]
    host, _, port = first.rpartition(":")
    return host.strip("[]"), int(port)


def explain(brokers: Brokers) -> str | None:
    """One line on why the first bootstrap broker's certificate is refused; None when this
    handshake succeeds or fails for another reason (then librdkafka's words stand)."""
    properties = brokers.properties
    ca = properties.get("ssl.ca.location")
    context = ssl.create_default_context(cafile=None if ca in (None, "probe") else ca)
    if properties.get("ssl.endpoint.identification.algorithm", "https") == "none":
        context.check_hostname = False
    host, port = _host_port(brokers.bootstrap)
    try:
        with (
            socket.create_connection((host, port), timeout=_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return None
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in _EXPIRED:
            hint = _HINTS["expired"]
        elif exc.verify_code in _WRONG_NAME:
            hint = _HINTS["name"]
        else:
            hint = _HINTS["ca"]
        return f"TLS certificate refused: {exc.verify_message.rstrip('.')}; {hint}"
    except (OSError, ValueError):
        return None
