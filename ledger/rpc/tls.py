"""Certificates for the ledger API's HTTPS: a small cluster CA and one server certificate per node.

``riskmask ledger init --api-tls`` calls :func:`write_api_tls`, which writes under ``<cluster>/tls/`` (0700)::

    ca.crt              the cluster CA certificate: what clients trust ($RISKMASK_LEDGER_CA, ``ca_file``)
    ca.key              the CA's private key (0600): needed only to issue more node certificates; keep offline
    api-node0.crt ...   node N's server certificate (subjectAltName = its API host), signed by the CA
    api-node0.key ...   node N's private key (0600); each node is given only its own

Every file is written 0600 (the CA certificate too: it is public, but the folder holds keys and one mode keeps
the rule simple). Keys are ECDSA P-256; certificates carry the extensions a strict X.509 verifier asks for
(basic constraints, key usage, subject and authority key identifiers, server-auth extended key usage).
Nothing here loads at import time beyond ``cryptography``'s modules.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

TLS_DIR = "tls"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650
NODE_DAYS = 825


def node_cert_name(index: int) -> str:
    """File name of node ``index``'s API certificate (distinct from its validator key ``nodeN.key``)."""
    return f"api-node{index}.crt"


def node_key_name(index: int) -> str:
    """File name of node ``index``'s API TLS private key."""
    return f"api-node{index}.key"


@dataclass(frozen=True)
class ApiTlsFiles:
    """Where :func:`write_api_tls` put the CA and each node's certificate and key (absolute paths)."""

    ca_cert: Path
    ca_key: Path
    node_certs: tuple[Path, ...]
    node_keys: tuple[Path, ...]


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte on."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue_server_cert(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str,
                      hosts: Sequence[str]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``hosts`` (IP literals become IP SANs, other names DNS SANs)."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host name")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = []
    for h in hosts:
        g = _san(h)
        if g not in sans:
            sans.append(g)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=NODE_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def write_api_tls(cluster_dir: Path, chain_id: str, node_hosts: Sequence[Sequence[str]]) -> ApiTlsFiles:
    """Create ``<cluster_dir>/tls``: a CA for ``chain_id`` and a certificate per node for its host names.

    ``node_hosts[i]`` lists the names node ``i`` is reached by (the host of its API address first).
    """
    tls = Path(cluster_dir) / TLS_DIR
    tls.mkdir(mode=0o700, exist_ok=True)
    os.chmod(tls, 0o700)
    ca_cert, ca_key = make_ca(f"riskmask ledger CA {chain_id}")
    _write_private(tls / CA_KEY, _key_pem(ca_key))
    _write_private(tls / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    certs, keys = [], []
    for i, hosts in enumerate(node_hosts):
        cert, key = issue_server_cert(ca_cert, ca_key, f"riskmask ledger node{i} {chain_id}", list(hosts))
        _write_private(tls / node_key_name(i), _key_pem(key))
        _write_private(tls / node_cert_name(i), cert.public_bytes(serialization.Encoding.PEM))
        certs.append(tls / node_cert_name(i))
        keys.append(tls / node_key_name(i))
    logger.info("API TLS: CA and %d node certificates written to %s", len(certs), tls)
    return ApiTlsFiles(tls / CA_CERT, tls / CA_KEY, tuple(certs), tuple(keys))


def cluster_ca(cluster_dir: Path) -> Path | None:
    """The cluster CA certificate of a cluster directory made with ``--api-tls``, or None."""
    p = Path(cluster_dir) / TLS_DIR / CA_CERT
    return p if p.is_file() else None


__all__ = ["ApiTlsFiles", "CA_CERT", "CA_KEY", "TLS_DIR", "cluster_ca", "issue_server_cert", "make_ca",
           "node_cert_name", "node_key_name", "write_api_tls"]
