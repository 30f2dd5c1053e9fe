"""HTTPS for the ledger API: a real node process with a self-signed certificate made with ``cryptography``."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ledger.client.api_client import LedgerClient, Unavailable
from tests.ledger_util import anchor_txs, make_cluster, wait_for


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 / localhost; returns (cert, key) PEM paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ledger-tls")
    c = make_cluster(root / "cluster", n=1)
    cert, key = self_signed(root, "node0")
    cfg_path = c.config_path(0)
    cfg = json.loads(cfg_path.read_text())
    cfg.update(api_tls_cert=str(cert), api_tls_key=str(key))
    cfg_path.write_text(json.dumps(cfg))
    try:
        c.up(wait_height=1, timeout_s=90)
        yield c, cert, root
    finally:
        c.down()


def test_signed_clients_served_over_tls(tls_cluster):
    c, cert, _ = tls_cluster
    addr = c.api_address(0)
    with LedgerClient(f"https://{addr}", c.key_seed("pipeline"), ca_file=str(cert)) as cl:
        info = cl.request("GET", "/v1/node")
        assert info["tls"] is True and info["index"] == 0
        assert info["node_id"] == c.genesis.validators[0].public_key.hex()
        h = cl.submit(anchor_txs(c, 1)[0])
    with c.client(0, "auditor") as cl:  # the cluster's own client also speaks HTTPS to this node
        wait_for(lambda: cl.tx(h).get("status") == "committed", 60, "the anchor committed over HTTPS")


def test_plain_http_and_untrusted_certificates_refused(tls_cluster):
    c, cert, root = tls_cluster
    host, port = c.genesis.validators[0].api_hostport
    # Plain HTTP to the HTTPS port gets no HTTP answer.
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/1.1 200"), data[:80]
    # A client that trusts another certificate refuses the node.
    other, _ = self_signed(root, "other")
    with LedgerClient(f"https://{c.api_address(0)}", c.key_seed("auditor"), ca_file=str(other)) as cl:
        with pytest.raises(Unavailable) as e:
            cl.status()
    assert "TLS" in str(e.value) or "certificate" in str(e.value).lower(), e.value
    # Without any trust anchor for the self-signed certificate, too.
    with LedgerClient(f"https://{c.api_address(0)}", c.key_seed("auditor")) as cl:
        with pytest.raises(Unavailable):
            cl.status()


def test_idle_tls_connection_without_handshake_is_closed(tls_cluster):
    c, _, _ = tls_cluster
    host, port = c.genesis.validators[0].api_hostport
    t0 = time.monotonic()
    with socket.create_connection((host, port), timeout=20) as s:
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    waited = time.monotonic() - t0
    assert waited < 10.0, f"a silent connection was held {waited:.1f} s"
    # A completed handshake and one signed request still work afterwards.
    with c.client(0, "auditor") as cl:
        assert cl.status()["height"] >= 1
    log = c.log_path(0).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_tls_config_needs_both_files(tmp_path):
    from ledger.config import ConfigError, NodeConfig

    c = make_cluster(tmp_path / "c", n=1)
    cfg = json.loads(c.config_path(0).read_text())
    cfg["api_tls_cert"] = "node0.crt"
    c.config_path(0).write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        NodeConfig.load(c.config_path(0))
    assert "api_tls_key" in str(e.value)
