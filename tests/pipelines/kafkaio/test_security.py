"""Kafka security settings of the pipeline, with real TLS and real clients.

The embedded broker (Tansu 0.6.0) cannot serve TLS itself (its ``--cert`` and ``--key`` options refuse to be
given together) and cannot authenticate SASL (with ``--authentication`` no user can be created on its
memory storage: ``tansu user create`` is refused as not authenticated). So:

* SSL, end to end: Tansu advertises the port of a mutual-TLS terminator (Python ``ssl``, a CA and server and
  client certificates made with ``cryptography``) that forwards to it. ``riskmask run --bounded`` with
  ``--kafka-security-protocol SSL`` and the CA, client certificate and key processes real frames through it;
  the terminator records the client certificate of every connection. Without the CA the run fails in one line.
* SASL: the real kafka-python consumer and producers built by the pipeline's source and sinks carry the
  protocol, mechanism, user name and the password read from the password file (never from the command line).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import subprocess
import sys
import threading
import time
import types
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.pipeline_support import camera_frame, scenes

EXE = str(Path(sys.executable).with_name("riskmask"))


def _certs(d: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: Any, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("riskmask test CA")).issuer_name(name("riskmask test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(f"riskmask-{who}")).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if who == "server":
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        out[f"{who}_cert"] = d / f"{who}.pem"
        out[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"] = d / f"{who}.key"
        write_key(key, out[f"{who}_key"])
    return out


class TlsTerminator:
    """Mutual-TLS listener on ``port`` forwarding plaintext to ``upstream``; records client certificate CNs."""

    def __init__(self, certs: dict[str, Path], upstream: int) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs["ca"]))
        self.ctx.load_cert_chain(str(certs["server_cert"]), str(certs["server_key"]))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.upstream = upstream
        self.clients: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        self.clients.append(dict(x[0] for x in peer.get("subject", ())).get("commonName", ""))
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from infra.broker import find_tansu, free_port

    d = tmp_path_factory.mktemp("tls")
    certs = _certs(d)
    inner = free_port()
    proxy = TlsTerminator(certs, inner)
    log = open(d / "tansu.log", "ab")
    proc = subprocess.Popen([str(find_tansu()), "broker", "--listener-url", f"tcp://127.0.0.1:{inner}",
                             "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 30
        while not _accepts(inner):
            assert proc.poll() is None and time.monotonic() < deadline, (d / "tansu.log").read_text()
            time.sleep(0.2)
        yield {"bootstrap": f"127.0.0.1:{proxy.port}", "certs": certs, "proxy": proxy}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proxy.close()


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _ssl_kwargs(certs: dict[str, Path]) -> dict[str, Any]:
    return dict(security_protocol="SSL", ssl_cafile=str(certs["ca"]), ssl_certfile=str(certs["client_cert"]),
                ssl_keyfile=str(certs["client_key"]))


def test_pipeline_runs_over_mutual_tls(tls_broker: dict[str, Any]) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    bootstrap, certs, proxy = tls_broker["bootstrap"], tls_broker["certs"], tls_broker["proxy"]
    kw = _ssl_kwargs(certs)
    tag = uuid.uuid4().hex[:8]
    topics = {k: f"{k}-{tag}" for k in ("raw", "redacted", "dlq", "audit")}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kw)
    admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()])
    admin.close()
    frames = [camera_frame(s.image, seq=i, camera_id="tls-cam") for i, s in enumerate(scenes(3, seed=7))]
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=32 * 1024 * 1024, **kw)
    for f in frames:
        prod.send(topics["raw"], key=b"tls-cam", value=f.to_bytes()).get(timeout=30)
    prod.close()
    before = len(proxy.clients)
    base = ["run", "--bounded", "--bootstrap-servers", bootstrap, "--raw-topic", topics["raw"], "--redacted-topic",
            topics["redacted"], "--dlq-topic", topics["dlq"], "--audit-topic", topics["audit"], "--group-id",
            f"g-{tag}", "--progress-interval", "0"]
    res = subprocess.run([EXE, *base, "--kafka-security-protocol", "SSL", "--kafka-ssl-cafile", str(certs["ca"]),
                          "--kafka-ssl-certfile", str(certs["client_cert"]), "--kafka-ssl-keyfile",
                          str(certs["client_key"])], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # Every connection of the run (source readers, committer, sinks) presented the client certificate.
    used = proxy.clients[before:]
    assert len(used) >= 3 and set(used) == {"riskmask-client"}, used
    out = KafkaConsumer(topics["redacted"], bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                        consumer_timeout_ms=10_000, fetch_max_bytes=64 * 1024 * 1024, **kw)
    got = [m for m in out]
    out.close()
    assert len(got) == len(frames)
    # Without the CA the broker's certificate cannot be verified: refused in one line, within the timeout.
    t0 = time.monotonic()
    bad = subprocess.run([EXE, *base, "--kafka-security-protocol", "SSL", "--connect-timeout", "3"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 3 and time.monotonic() - t0 < 10
    assert [ln for ln in bad.stderr.splitlines() if ln.startswith("riskmask: error:")] == [
        f"riskmask: error: no Kafka broker answers at {bootstrap} within 3 s"]
    # Plaintext to a TLS listener fails the same way.
    plain = subprocess.run([EXE, *base, "--connect-timeout", "3"], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 3


def test_sasl_settings_reach_the_real_kafka_clients(tmp_path: Path) -> None:
    from pipelines.kafkaio import sink, source
    from pipelines.kafkaio.security import client_config

    pw = tmp_path / "kafka-password"
    pw.write_text("pw-from-file\n")
    opts = types.SimpleNamespace(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                                 kafka_sasl_username="pipeline", kafka_sasl_password_file=str(pw),
                                 kafka_ssl_cafile=None, connect_timeout_s=2.0)
    cfg = client_config(opts)
    assert "pw-from-file" not in repr(cfg)  # only the file's path is in the pipeline's settings
    # A known broker version: the clients are built without a round trip, so their settings can be read.
    cfg["api_version"] = (2, 5, 0)
    consumer = source._consumer(source.SourceConfig("127.0.0.1:9", "g", consumer_config=tuple(cfg.items())), None)
    fn = sink._WriteFn("127.0.0.1:9", "t", 1 << 20, tuple(cfg.items()))
    fn.setup()
    try:
        for client in (consumer, fn._producer):
            c = client.config
            assert (c["security_protocol"], c["sasl_mechanism"], c["sasl_plain_username"],
                    c["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-512", "pipeline", "pw-from-file")
            assert c["bootstrap_timeout_ms"] == 2000
    finally:
        consumer.close()
        fn._producer.close(timeout=1)


def test_sasl_needs_a_user_and_a_readable_password_file(tmp_path: Path) -> None:
    base = [EXE, "run", "--bootstrap-servers", "127.0.0.1:9", "--kafka-security-protocol", "SASL_SSL"]
    res = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.strip().endswith("security protocol SASL_SSL needs a SASL username")
    res = subprocess.run(base + ["--kafka-sasl-username", "u", "--kafka-sasl-password-file", str(tmp_path / "no")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "cannot read the SASL password file" in res.stderr
    assert "Traceback" not in res.stderr
