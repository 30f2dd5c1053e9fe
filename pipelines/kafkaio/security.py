"""Kafka connection settings shared by every client of the pipeline: security (SSL, SASL) and timeouts.

The settings travel with the pipeline as kafka-python keyword arguments, except the SASL password: only the
*path* of a file holding it travels (key ``riskmask_sasl_password_file``), and each client reads the file when
it is made (:func:`resolve`), so the secret is never in a command line, a log or the pipeline graph.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from pipelines.kafkaio.errors import KafkaUnavailableError
from riskmask.errors import UserError

logger = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PASSWORD_FILE_KEY = "riskmask_sasl_password_file"
DEFAULT_CONNECT_TIMEOUT_S = 30.0


class KafkaSettingsError(UserError):
    """Kafka security settings are inconsistent, or a file they name cannot be read."""


def client_config(opts: Any) -> dict[str, Any]:
    """kafka-python keyword arguments from pipeline options (``kafka_security_protocol``, ``kafka_sasl_*``,
    ``kafka_ssl_*``, ``connect_timeout_s``); options that are not set are left out."""
    def opt(name: str) -> Any:
        return getattr(opts, name, None)

    out: dict[str, Any] = {}
    protocol = (opt("kafka_security_protocol") or "PLAINTEXT").upper()
    if protocol != "PLAINTEXT":
        out["security_protocol"] = protocol
    if protocol.startswith("SASL_"):
        out["sasl_mechanism"] = (opt("kafka_sasl_mechanism") or "PLAIN").upper()
        out["sasl_plain_username"] = opt("kafka_sasl_username")
        out[PASSWORD_FILE_KEY] = opt("kafka_sasl_password_file")
    if protocol.endswith("SSL"):
        for key in ("cafile", "certfile", "keyfile"):
            if opt(f"kafka_ssl_{key}"):
                out[f"ssl_{key}"] = opt(f"kafka_ssl_{key}")
        if opt("kafka_ssl_no_check_hostname"):
            out["ssl_check_hostname"] = False
    timeout = opt("connect_timeout_s")
    if timeout is not None and timeout > 0:
        # kafka-python gives up waiting for the first broker answer after bootstrap_timeout_ms; the
        # source also bounds its metadata waits by it (connect_timeout_s below).
        out["bootstrap_timeout_ms"] = int(float(timeout) * 1000)
    return out


def validate(opts: Any) -> None:
    """Raise KafkaSettingsError with one readable line on inconsistent settings."""
    protocol = (getattr(opts, "kafka_security_protocol", None) or "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise KafkaSettingsError(f"Kafka security protocol {protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}")
    mech = (getattr(opts, "kafka_sasl_mechanism", None) or "PLAIN").upper()
    if mech not in SASL_MECHANISMS:
        raise KafkaSettingsError(f"SASL mechanism {mech!r} is not one of {', '.join(SASL_MECHANISMS)}")
    if protocol.startswith("SASL_"):
        if not getattr(opts, "kafka_sasl_username", None):
            raise KafkaSettingsError(f"security protocol {protocol} needs a SASL username")
        read_password(getattr(opts, "kafka_sasl_password_file", None))
    for key in ("cafile", "certfile", "keyfile"):
        path = getattr(opts, f"kafka_ssl_{key}", None)
        if path and not os.path.isfile(path):
            raise KafkaSettingsError(f"Kafka SSL {key} {path} does not exist")
    timeout = getattr(opts, "connect_timeout_s", None)
    if timeout is not None and not 0 < float(timeout) <= 600:
        raise KafkaSettingsError(f"connect timeout must be in (0, 600] seconds, got {timeout}")


def read_password(path: Optional[str]) -> str:
    if not path:
        raise KafkaSettingsError("SASL needs a password file (--kafka-sasl-password-file)")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            password = fh.read().rstrip("\r\n")
    except OSError as exc:
        raise KafkaSettingsError(f"cannot read the SASL password file {path}: {exc.strerror}") from None
    if not password:
        raise KafkaSettingsError(f"the SASL password file {path} is empty")
    return password


def resolve(kwargs: dict[str, Any]) -> dict[str, Any]:
    """kafka-python keyword arguments with the password file replaced by the password it holds."""
    out = dict(kwargs)
    path = out.pop(PASSWORD_FILE_KEY, None)
    if path is not None:
        out["sasl_plain_password"] = read_password(path)
    return out


def connect_timeout_s(kwargs: dict[str, Any]) -> float:
    """The connect timeout carried in client settings (seconds)."""
    ms = kwargs.get("bootstrap_timeout_ms")
    return ms / 1000.0 if ms else DEFAULT_CONNECT_TIMEOUT_S


__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "KafkaSettingsError", "PASSWORD_FILE_KEY", "SASL_MECHANISMS",
           "SECURITY_PROTOCOLS", "client_config", "connect_timeout_s", "read_password", "resolve", "validate"]


def check_reachable(bootstrap_servers: str, kwargs: dict[str, Any]) -> None:
    """Connect once with the pipeline's client settings (security included); one readable line on failure.

    Runs before the pipeline is built, so an unreachable broker is reported within the connect timeout."""
    from kafka import KafkaConsumer  # deferred: loads kafka, which only this path needs
    from kafka.errors import KafkaError, KafkaTimeoutError  # deferred: loads kafka, which only this path needs

    servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
    try:
        KafkaConsumer(bootstrap_servers=servers, **resolve(kwargs)).close()
    except KafkaTimeoutError:  # kafka-python 3: nothing answered within bootstrap_timeout_ms
        raise KafkaUnavailableError(f"no Kafka broker answers at {bootstrap_servers} within "
                                    f"{connect_timeout_s(kwargs):g} s") from None
    except KafkaError as exc:
        raise KafkaUnavailableError(f"cannot connect to Kafka at {bootstrap_servers}: {type(exc).__name__}: "
                                    f"{exc}") from None
