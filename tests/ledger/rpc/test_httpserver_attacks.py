"""Attacks on the ledger HTTP API of real node processes: idle-connection exhaustion (many addresses, one
address, byte-per-second heads, strangers declaring bodies), connections kept after 401/403, malformed
numbers and deep JSON nesting, and replaying a captured signed request to another node.

Every test speaks raw TCP to real nodes (``python -m ledger.node``) of a 4-node cluster; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
from typing import Optional
from urllib.parse import quote

import pytest

from ledger.client.api_client import ApiError, LedgerClient
from ledger.rpc.auth import sign_request
from tests.ledger_util import anchor_txs, make_cluster

ATTACK_CONNS = 1000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    c = make_cluster(tmp_path_factory.mktemp("ledger-http-attacks"), api_max_body=512 * 1024)
    try:
        c.up(wait_height=1, timeout_s=90)
        yield c
    finally:
        c.down()


# -- raw HTTP helpers -----------------------------------------------------------------------------------------
def _read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (status, lower-case headers, body); status 0 when the peer closed first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return 0, {}, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:n]


def exchange(hostport: tuple[str, int], data: bytes, timeout: float = 20.0) -> tuple[int, dict, bytes]:
    with socket.create_connection(hostport, timeout=timeout) as s:
        s.sendall(data)
        return _read_response(s)


def http_request(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: ledger"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT"):
        head.append(f"Content-Length: {len(body)}")
    return "\r\n".join(head).encode("utf-8") + b"\r\n\r\n" + body


def _closed_by_peer(s: socket.socket) -> bool:
    """True when the server has closed this connection (EOF or reset); drains any pending answer."""
    s.setblocking(False)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except (ConnectionResetError, OSError):
        return True


def _open_idle(hostport: tuple[str, int], src: str, count: int, send: Optional[bytes]) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((src, 0))
        s.settimeout(5)
        try:
            s.connect(hostport)
            if send:
                s.sendall(send)
        except OSError:
            s.close()
            continue
        out.append(s)
    return out


def _node_log(cluster, i: int) -> str:
    return cluster.log_path(i).read_text(errors="replace")


# -- 1. idle connections ---------------------------------------------------------------------------------------
def test_thousand_idle_connections_do_not_stop_signed_clients(cluster):
    """1,000 idle connections from 20 addresses (half after an unsigned request answered 401, half silent):
    signed clients are still served promptly, the node holds at most its global cap, and every idle
    unauthenticated connection is closed within the short idle timeout."""
    hostport = cluster.genesis.validators[0].api_hostport
    unsigned = http_request("GET", "/v1/status", {})
    conns: list[socket.socket] = []
    try:
        for a in range(20):
            src = f"127.0.0.{a + 2}"
            conns += _open_idle(hostport, src, ATTACK_CONNS // 40, unsigned)
            conns += _open_idle(hostport, src, ATTACK_CONNS // 40, None)
        assert len(conns) >= ATTACK_CONNS * 0.95, f"only {len(conns)} attack connections opened"
        # Signed clients are served while the attack connections exist.
        lat = []
        with cluster.client(0, "pipeline", timeout_s=10.0) as c:
            for _ in range(20):
                t0 = time.monotonic()
                assert c.status()["index"] == 0
                lat.append(time.monotonic() - t0)
            c.submit(anchor_txs(cluster, 1)[0])
        lat.sort()
        print(f"signed status calls during the attack: median {lat[len(lat) // 2] * 1000:.1f} ms, "
              f"max {lat[-1] * 1000:.1f} ms")
        assert lat[len(lat) // 2] < 0.5 and lat[-1] < 3.0, lat
        time.sleep(1.0)
        held = sum(not _closed_by_peer(s) for s in conns)
        print(f"attack connections still held by the node after 1 s: {held} of {len(conns)}")
        assert held <= 512, f"node holds {held} idle attack connections (global cap 512)"
        time.sleep(8.0)
        held = sum(not _closed_by_peer(s) for s in conns)
        print(f"attack connections still held after 9 s: {held}")
        assert held == 0, f"{held} idle unauthenticated connections still held after 9 s"
    finally:
        for s in conns:
            s.close()
    with cluster.client(0, "auditor") as c:
        assert c.status()["height"] >= 1


def test_per_address_connection_cap(cluster):
    hostport = cluster.genesis.validators[1].api_hostport
    conns = _open_idle(hostport, "127.0.0.99", 300, None)
    try:
        time.sleep(1.0)
        held = sum(not _closed_by_peer(s) for s in conns)
        print(f"connections from one address held: {held} of {len(conns)}")
        assert held <= 64, f"node holds {held} connections from one address (cap 64)"
        with cluster.client(1, "auditor") as c:  # another address is still served
            assert c.status()["index"] == 1
    finally:
        for s in conns:
            s.close()


def test_slow_request_head_is_cut_off(cluster):
    """A connection that sends its request head one byte every second is closed within the 5 s budget for
    the whole head (a per-read timeout would let it live forever)."""
    hostport = cluster.genesis.validators[3].api_hostport
    data = http_request("GET", "/v1/status", {"X-Pad": "a" * 100})
    t0 = time.monotonic()
    sent = 0
    with socket.create_connection(hostport, timeout=20) as s:
        try:
            for b in data:
                s.sendall(bytes([b]))
                sent += 1
                time.sleep(1.0)
                if time.monotonic() - t0 > 30:
                    break
        except OSError:
            pass
    held = time.monotonic() - t0
    print(f"slow head: {sent} bytes over {held:.1f} s before the node closed the connection")
    assert held < 9.0, f"a byte-per-second request head was held {held:.1f} s"


def test_stranger_cannot_make_the_node_wait_for_a_body(cluster):
    """An unknown key declaring a large body is answered 401 from its headers alone, before any body byte."""
    hostport = cluster.genesis.validators[3].api_hostport
    nid = cluster.genesis.validators[3].public_key.hex()
    h = {"X-Ledger-Key": os.urandom(32).hex(), "X-Ledger-Timestamp": str(int(time.time() * 1000)),
         "X-Ledger-Nonce": os.urandom(16).hex(), "X-Ledger-Node": nid, "X-Ledger-Signature": "00" * 64}
    head = http_request("POST", "/v1/txs", h).replace(b"Content-Length: 0", b"Content-Length: 500000")
    t0 = time.monotonic()
    with socket.create_connection(hostport, timeout=20) as s:
        s.sendall(head.split(b"\r\n\r\n")[0] + b"\r\n\r\n")
        status, _, body = _read_response(s)
    waited = time.monotonic() - t0
    print(f"stranger with a declared 500 kB body: {status} after {waited:.2f} s: {body[:80]!r}")
    assert status == 401 and b"unknown client key" in body, (status, body)
    assert waited < 3.0


def _prechecked_headers(cluster, node: int, role: str) -> dict[str, str]:
    """Headers that pass every check a node can make before reading the body (known key, fresh timestamp,
    unused nonce, right node); the signature is well-formed but wrong, which only the body can reveal."""
    from ledger.types import crypto

    pub = crypto.PrivateKey.from_seed(cluster.key_seed(role)).public_key().to_bytes().hex()
    return {"X-Ledger-Key": pub, "X-Ledger-Timestamp": str(int(time.time() * 1000)),
            "X-Ledger-Nonce": os.urandom(16).hex(), "X-Ledger-Node": cluster.genesis.validators[node].public_key.hex(),
            "X-Ledger-Signature": "00" * 64}


def test_request_bodies_in_flight_are_bounded(cluster):
    """40 connections each declaring a 512 KiB body (the node's maximum) and sending all but its last byte:
    the node buffers at most 16 maximum bodies at once and answers the others 429 at once; a replayed header
    set is refused before its body; once the senders go, signed clients submit again."""
    hostport = cluster.genesis.validators[2].api_hostport
    size = 512 * 1024
    conns, early = [], {}
    try:
        for k in range(40):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((f"127.0.2.{k + 1}", 0))
            s.settimeout(10)
            s.connect(hostport)
            head = http_request("POST", "/v1/txs", _prechecked_headers(cluster, 2, "pipeline"))
            s.sendall(head.replace(b"Content-Length: 0", f"Content-Length: {size}".encode()))
            try:
                s.sendall(b"x" * (size - 1))
            except OSError:
                pass
            conns.append(s)
        time.sleep(0.5)
        for k, s in enumerate(conns):
            s.setblocking(False)
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b"reset"
            early[k] = data.split(b"\r\n")[0]
        print(f"answered before their body was complete: {len(early)} of 40: "
              f"{sorted(set(early.values()))}")
        assert sum(1 for v in early.values() if b" 429 " in v) >= 40 - 16, early
    finally:
        for s in conns:
            s.close()
    # A header set already used once is refused from its headers alone.
    h = _prechecked_headers(cluster, 2, "pipeline")
    h["X-Ledger-Signature"] = sign_request(cluster.key_seed("pipeline"), "GET", "/v1/status", b"",
                                           h["X-Ledger-Node"], timestamp_ms=int(h["X-Ledger-Timestamp"]),
                                           nonce=h["X-Ledger-Nonce"])["X-Ledger-Signature"]
    assert exchange(hostport, http_request("GET", "/v1/status", h))[0] == 200
    t0 = time.monotonic()
    with socket.create_connection(hostport, timeout=20) as s:
        s.sendall(http_request("POST", "/v1/txs", h).replace(b"Content-Length: 0", b"Content-Length: 400000"))
        status, _, body = _read_response(s)
    assert status == 401 and b"replayed" in body and time.monotonic() - t0 < 3.0, (status, body)
    with cluster.client(2, "pipeline") as c:
        c.submit(anchor_txs(cluster, 1)[0])


def test_connection_closed_after_401_and_403(cluster):
    hostport = cluster.genesis.validators[2].api_hostport
    with socket.create_connection(hostport, timeout=20) as s:
        s.sendall(http_request("GET", "/v1/status", {}))
        status, headers, _ = _read_response(s)
        assert status == 401
        assert headers.get("connection") == "close", headers
        s.settimeout(3)
        assert s.recv(100) == b"", "connection left open after 401"
    with LedgerClient(cluster.api_address(2), cluster.key_seed("pipeline")) as c:
        with pytest.raises(ApiError) as e:
            c.block(1)
        assert e.value.status == 403
        assert c._conn is None, "client kept a connection the node should have closed after 403"


# -- 2. malformed numbers and nesting ------------------------------------------------------------------------
ARABIC = "\u0661\u0667\u0660\u0660"     # Arabic-Indic 1700
FULLWIDTH = "\uff11\uff17\uff10\uff10"  # fullwidth 1700
SUPERSCRIPT = "\u00b2\u00b3"            # latin-1 superscript two, three (str.isdigit() is true)


def _signed_headers(cluster, node: int, role: str, method: str, target: str, body: bytes = b"") -> dict:
    """Headers of a properly signed request for ``node``, the node id learned as the client learns it."""
    with LedgerClient(cluster.api_address(node), cluster.key_seed(role)) as c:
        nid = c.node_id()
    return sign_request(cluster.key_seed(role), method, target, body, nid)


def _malformed_requests(cluster) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for label, digits, enc in [("arabic", ARABIC, "utf-8"), ("fullwidth", FULLWIDTH, "utf-8"),
                               ("superscript", SUPERSCRIPT, "latin-1")]:
        # X-Ledger-Timestamp with non-ASCII digits (otherwise a valid signed request).
        h = _signed_headers(cluster, 0, "auditor", "GET", "/v1/status")
        h["X-Ledger-Timestamp"] = digits
        raw = "\r\n".join(["GET /v1/status HTTP/1.1", "Host: ledger"] + [f"{k}: {v}" for k, v in h.items()])
        out.append((f"timestamp-{label}", raw.encode(enc) + b"\r\n\r\n"))
        # Content-Length with non-ASCII digits.
        raw = f"POST /v1/txs HTTP/1.1\r\nHost: ledger\r\nContent-Length: {digits}\r\n\r\n"
        out.append((f"content-length-{label}", raw.encode(enc) + b"x" * 10))
        # ?from= / ?to= / ?since= with non-ASCII digits, percent-encoded UTF-8 in a signed request.
        for name, target, role in [("from", f"/v1/blocks?from={quote(digits)}", "auditor"),
                                   ("to", f"/v1/blocks?from=1&to={quote(digits)}", "auditor"),
                                   ("since", f"/v1/registry/watchlist?since={quote(digits)}", "pipeline")]:
            out.append((f"query-{name}-{label}",
                        http_request("GET", target, _signed_headers(cluster, 0, role, "GET", target))))
        target = f"/v1/blocks/{quote(digits)}"
        out.append((f"path-height-{label}",
                    http_request("GET", target, _signed_headers(cluster, 0, "auditor", "GET", target))))
    for label, body in [("nested-list", b"[" * 100_000), ("nested-object", b'{"a":' * 100_000),
                        ("nested-in-tx", b'{"tx":' + b"[" * 100_000 + b"}")]:
        h = _signed_headers(cluster, 0, "pipeline", "POST", "/v1/txs", body)
        out.append((label, http_request("POST", "/v1/txs", dict(h, **{"Content-Type": "application/json"}),
                                        body)))
    return out


def test_malformed_numbers_and_deep_nesting_get_400_without_traceback(cluster):
    hostport = cluster.genesis.validators[0].api_hostport
    before = len(_node_log(cluster, 0))
    results = {}
    for label, data in _malformed_requests(cluster):
        try:
            status, _, body = exchange(hostport, data)
        except (ConnectionResetError, socket.timeout) as exc:
            status, body = -1, repr(exc).encode()
        results[label] = (status, body[:120])
    print(json.dumps({k: [v[0], v[1].decode(errors="replace")] for k, v in results.items()}, indent=1))
    bad = {k: v for k, v in results.items() if v[0] != 400}
    assert not bad, f"not answered 400: {bad}"
    for label, (status, body) in results.items():
        assert isinstance(json.loads(body).get("error"), str), (label, body)
    log = _node_log(cluster, 0)[before:]
    for mark in ("Traceback", "API handler failed", "API connection from", "RecursionError", "ValueError"):
        assert mark not in log, (mark, log[-3000:])
    with cluster.client(0, "auditor") as c:
        assert c.status()["height"] >= 1


# -- 3. replay to another node -------------------------------------------------------------------------------
class Recorder:
    """A TCP relay in front of one node that records every byte the client sends."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.sent = bytearray()
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                cli, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            up = socket.create_connection(self.upstream, timeout=20)
            threading.Thread(target=self._pump, args=(cli, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, cli, False), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket, record: bool) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if record:
                    self.sent += data
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(2)

    def requests(self) -> list[bytes]:
        """The recorded byte stream split into whole HTTP requests."""
        out, buf = [], bytes(self.sent)
        while b"\r\n\r\n" in buf:
            head, _, rest = buf.partition(b"\r\n\r\n")
            n = 0
            for ln in head.split(b"\r\n")[1:]:
                k, _, v = ln.partition(b":")
                if k.strip().lower() == b"content-length":
                    n = int(v.strip())
            out.append(head + b"\r\n\r\n" + rest[:n])
            buf = rest[n:]
        return out


def test_signed_request_replayed_to_another_node_is_refused(cluster):
    rec = Recorder(cluster.genesis.validators[0].api_hostport)
    tx = anchor_txs(cluster, 1)[0]
    try:
        with LedgerClient(rec.address, cluster.key_seed("manager"), timeout_s=10.0) as c:
            assert c.status()["index"] == 0
            c.block(1)
        with LedgerClient(rec.address, cluster.key_seed("pipeline"), timeout_s=10.0) as c:
            c.submit(tx)
    finally:
        rec.close()
    captured = [r for r in rec.requests() if b" /v1/node " not in r.split(b"\r\n")[0] + b" "]
    assert len(captured) == 3, [r.split(b"\r\n")[0] for r in captured]
    outcome = {}
    for r in captured:
        line = r.split(b"\r\n")[0].decode()
        outcome[line] = {i: exchange(cluster.genesis.validators[i].api_hostport, r)[0] for i in (0, 1, 2, 3)}
    print(json.dumps(outcome, indent=1))
    for line, by_node in outcome.items():
        assert by_node[0] == 401, (line, by_node)  # the node that saw it: a replay
        for i in (1, 2, 3):
            assert by_node[i] == 401, f"{line} signed for node 0 was accepted by node {i}: {by_node}"
    # And the refusal names the reason.
    status, _, body = exchange(cluster.genesis.validators[1].api_hostport, captured[0])
    assert status == 401 and "node" in json.loads(body)["error"], body
