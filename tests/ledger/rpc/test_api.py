"""The ledger HTTP API against a real 4-node cluster: auth, roles, limits, malformed input, proofs."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time

import pytest
import yaml

from ledger.client.api_client import ApiError, LedgerClient
from ledger.rpc.auth import sign_request
from ledger.types import crypto, merkle
from ledger.types.block import TX_REGISTER, Block, CommitCertificate, Transaction, verify_commit
from tests.ledger_util import anchor_txs, make_cluster, wait_for

MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = make_cluster(tmp_path_factory.mktemp("ledger-api"), api_max_body=MAX_BODY)
    try:
        c.up(wait_height=1, timeout_s=90)
        yield c
    finally:
        c.down()


def raw(cluster, method, target, body=b"", headers=None, node=0):
    host, port = cluster.genesis.validators[node].api_hostport
    conn = http.client.HTTPConnection(host, port, timeout=20)
    try:
        conn.request(method, target, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if resp.getheader("Content-Type") == "application/json" else data)
    finally:
        conn.close()


def node_id(cluster, node=0):
    return cluster.genesis.validators[node].public_key.hex()


def signed(cluster, role, method, target, body=b"", node=0, **kw):
    return sign_request(cluster.key_seed(role), method, target, body, node_id(cluster, node), **kw)


def test_every_role_reads_status(cluster):
    for role in ("manager", "pipeline", "auditor"):
        with cluster.client(0, role) as c:
            st = c.status()
        assert st["index"] == 0 and st["height"] >= 1 and st["chain_id"] == cluster.genesis.chain_id


def test_unsigned_unknown_and_forged_requests_refused(cluster):
    status, body = raw(cluster, "GET", "/v1/status")
    assert status == 401 and "unsigned" in body["error"]
    stranger = os.urandom(32)
    status, body = raw(cluster, "GET", "/v1/status",
                       headers=sign_request(stranger, "GET", "/v1/status", b"", node_id(cluster)))
    assert status == 401 and body["error"] == "unknown client key"
    h = signed(cluster, "auditor", "GET", "/v1/status")
    h["X-Ledger-Signature"] = ("0" if h["X-Ledger-Signature"][0] != "0" else "1") + h["X-Ledger-Signature"][1:]
    status, body = raw(cluster, "GET", "/v1/status", headers=h)
    assert status == 401 and body["error"] == "bad request signature"
    # A signature for one path does not authorise another.
    h = signed(cluster, "auditor", "GET", "/v1/status")
    status, body = raw(cluster, "GET", "/v1/evidence", headers=h)
    assert status == 401 and body["error"] == "bad request signature"
    h = signed(cluster, "auditor", "GET", "/v1/status")
    h["X-Ledger-Nonce"] = "xyz"
    status, body = raw(cluster, "GET", "/v1/status", headers=h)
    assert status == 401 and "nonce" in body["error"].lower()


def test_replayed_and_stale_requests_refused(cluster):
    h = signed(cluster, "auditor", "GET", "/v1/status")
    assert raw(cluster, "GET", "/v1/status", headers=h)[0] == 200
    status, body = raw(cluster, "GET", "/v1/status", headers=h)
    assert status == 401 and "replayed" in body["error"]
    old = int(time.time() * 1000) - 10 * 60 * 1000
    status, body = raw(cluster, "GET", "/v1/status",
                       headers=signed(cluster, "auditor", "GET", "/v1/status", timestamp_ms=old))
    assert status == 401 and "stale" in body["error"]


def test_roles_limit_endpoints(cluster):
    with cluster.client(0, "pipeline") as c:
        with pytest.raises(ApiError) as e:
            c.block(1)
        assert e.value.status == 403 and "pipeline" in e.value.reason
    with cluster.client(0, "auditor") as c:
        with pytest.raises(ApiError) as e:
            c.submit(anchor_txs(cluster, 1, "pipeline")[0])
        assert e.value.status == 403
    # A manager may not submit anchors, a pipeline may not submit registrations.
    with cluster.client(0, "manager") as c:
        with pytest.raises(ApiError) as e:
            c.submit(anchor_txs(cluster, 1, "pipeline")[0])
        assert e.value.status == 403 and "anchor" in e.value.reason
    key = crypto.PrivateKey.from_seed(cluster.key_seed("pipeline"))
    reg = Transaction.create(key, cluster.genesis.chain_id, TX_REGISTER, 1, int(time.time() * 1000), b"x" * 40)
    with cluster.client(0, "pipeline") as c:
        with pytest.raises(ApiError) as e:
            c.submit(reg.encode())
        assert e.value.status == 403


def test_oversized_body_413(cluster):
    body = json.dumps({"tx": "A" * (MAX_BODY + 10)}).encode()
    status, out = raw(cluster, "POST", "/v1/txs", body, signed(cluster, "pipeline", "POST", "/v1/txs", body))
    assert status == 413 and "exceeds" in out["error"]


@pytest.mark.parametrize("body,reason", [
    (b"{not json", "not valid JSON"),
    (b'{"tx": 5}', "base64"),
    (b'{"tx": "!!!"}', "base64"),
    (b'{"foo": "bar"}', "body must be"),
    (base64.b64encode(b"x"), "not valid JSON"),
    (json.dumps({"tx": base64.b64encode(b"\x10garbage").decode()}).encode(), "malformed transaction"),
])
def test_malformed_submissions_400(cluster, body, reason):
    status, out = raw(cluster, "POST", "/v1/txs", body, signed(cluster, "pipeline", "POST", "/v1/txs", body))
    assert status == 400 and reason in out["error"], out


def test_forged_transaction_signature_400(cluster):
    tx = bytearray(anchor_txs(cluster, 1)[0])
    tx[-1] ^= 1
    with cluster.client(1, "pipeline") as c:
        with pytest.raises(ApiError) as e:
            c.submit(bytes(tx))
    assert e.value.status == 400 and "signature" in e.value.reason


def test_malformed_http_4xx(cluster):
    host, port = cluster.genesis.validators[0].api_hostport
    for req, code in [(b"GARBAGE\r\n\r\n", b"400"), (b"GET /v1/status HTTP/9.9\r\n\r\n", b"505"),
                      (b"POST /v1/txs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
                      (b"GET /v1/status HTTP/1.1\r\nContent-Length: abc\r\n\r\n", b"400"),
                      (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", b"431")]:
        with socket.create_connection((host, port), timeout=20) as s:
            s.sendall(req)
            data = s.recv(4096)
        assert data.split(b" ")[1] == code, (req[:40], data[:80])
        assert b'"error"' in data
    h = signed(cluster, "auditor", "GET", "/v1/nope")
    assert raw(cluster, "GET", "/v1/nope", headers=h)[0] == 404
    h = signed(cluster, "auditor", "DELETE", "/v1/status")
    assert raw(cluster, "DELETE", "/v1/status", headers=h)[0] == 405
    h = signed(cluster, "auditor", "GET", "/v1/blocks?from=5&to=1")
    assert raw(cluster, "GET", "/v1/blocks?from=5&to=1", headers=h)[0] == 400
    h = signed(cluster, "auditor", "GET", "/v1/txs/abcd")
    assert raw(cluster, "GET", "/v1/txs/abcd", headers=h)[0] == 400
    with cluster.client(0, "auditor") as c:  # still serving
        assert c.status()["height"] >= 1


def test_submit_commit_and_inclusion_proof(cluster):
    txs = anchor_txs(cluster, 25)
    with cluster.client(2, "pipeline") as c:
        res = c.submit_many(txs)
    assert len(res["accepted"]) == 25 and not res["rejected"]
    with cluster.client(3, "auditor") as c:
        st = c.wait_committed(res["accepted"][-1], timeout_s=60)
        for h in res["accepted"]:
            st = c.wait_committed(h, timeout_s=60)
            proof = st["proof"]
            idx = txs.index(next(t for t in txs if crypto.sha256(t).hex() == h))
            merkle.verify_inclusion(merkle.leaf_hash(txs[idx]), proof["leaf_index"], proof["tree_size"],
                                    [bytes.fromhex(p) for p in proof["path"]], bytes.fromhex(proof["root"]))
        blk = c.block(st["height"])
    block = Block.decode(base64.b64decode(blk["block"]))
    cert = CommitCertificate.decode(base64.b64decode(blk["cert"]))
    assert block.header.tx_root.hex() == st["proof"]["root"] and block.hash().hex() == blk["hash"]
    verify_commit(cert, cluster.genesis.chain_id, cluster.genesis.public_keys(), block.hash(), block.height)
    # Resubmitting a committed transaction is idempotent, not a second entry.
    with cluster.client(0, "pipeline") as c:
        assert c.submit(txs[0]) == crypto.sha256(txs[0]).hex()
    with cluster.client(0, "auditor") as c:
        assert c.tx(crypto.sha256(txs[0]).hex())["status"] == "committed"
        assert c.tx("00" * 32)["status"] == "unknown"
    h = signed(cluster, "auditor", "GET", "/v1/txs/" + "00" * 32)
    assert raw(cluster, "GET", "/v1/txs/" + "00" * 32, headers=h)[0] == 404


def test_block_ranges_and_openapi(cluster):
    wait_for(lambda: cluster.heights([0]).get(0, 0) >= 3, 60, "height 3")
    with cluster.client(0, "manager") as c:
        blocks = c.blocks(1, 3)
        spec = yaml.safe_load(c.openapi())
    assert [b["height"] for b in blocks] == [1, 2, 3]
    assert blocks[1]["header"]["prev_hash"] == blocks[0]["hash"]
    assert {"/v1/status", "/v1/txs", "/v1/txs/batch", "/v1/txs/{hash}", "/v1/blocks/{height}",
            "/v1/blocks"} <= set(spec["paths"])


def test_client_unavailable_is_typed(tmp_path):
    from ledger.client.api_client import Unavailable
    from ledger.ops.cluster import free_ports

    port = free_ports(1)[0]
    with pytest.raises(Unavailable):
        LedgerClient(f"127.0.0.1:{port}", os.urandom(32), timeout_s=2).status()
