"""The role lines of the ledger threat model (docs/ledger.md), against a real 4-node cluster.

Every endpoint is called by every client role with a correctly signed request over a fresh connection; the
node must answer 403 exactly where the role may not call the endpoint. Then every role submits every
transaction kind signed with its own key: 403 exactly where the kinds table forbids the role, so validators
(their node keys used as clients) and auditors submit nothing, the pipeline only anchors and the manager
everything but anchors.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import time

import pytest

from ledger.rpc.auth import sign_request
from ledger.types import crypto
from ledger.types.block import TX_ANCHOR, TX_ERASE, TX_REGISTER, TX_UPDATE, Transaction
from tests.ledger_util import make_cluster

ROLES = {"manager": "manager", "pipeline": "pipeline", "auditor": "auditor", "validator": "node1"}
ALL = set(ROLES)
HASH = "ab" * 32

# (method, target, body, roles that may call it): the access table of docs/ledger.md
ENDPOINTS = [
    ("GET", "/openapi.yaml", b"", ALL),
    ("GET", "/v1/node", b"", ALL),
    ("GET", "/v1/status", b"", ALL),
    ("GET", "/v1/tip", b"", ALL),
    ("GET", f"/v1/txs/{HASH}", b"", ALL),
    ("GET", "/v1/blocks/1", b"", {"manager", "auditor", "validator"}),
    ("GET", "/v1/blocks?from=1&to=1", b"", {"manager", "auditor", "validator"}),
    ("GET", "/v1/evidence", b"", {"auditor", "validator"}),
    ("GET", "/v1/registry/watchlist?since=0", b"", {"manager", "pipeline", "validator"}),
    ("GET", "/v1/registry/digest?height=0", b"", {"manager", "pipeline", "validator"}),
    ("GET", f"/v1/registry/subjects/{HASH}", b"", {"manager", "pipeline", "validator"}),
    ("GET", f"/v1/registry/anchors/{HASH}", b"", ALL),
    ("PUT", "/v1/registry/keys", json.dumps({"pseudonym": HASH, "wrapped": "AA=="}).encode(),
     {"manager", "validator"}),
]

KIND_ROLES = {TX_REGISTER: {"manager"}, TX_UPDATE: {"manager"}, TX_ERASE: {"manager"}, TX_ANCHOR: {"pipeline"}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = make_cluster(tmp_path_factory.mktemp("threat-roles"))
    try:
        c.up(wait_height=1, timeout_s=90)
        yield c
    finally:
        c.down()


def _call(cluster, key_name: str, method: str, target: str, body: bytes = b"") -> tuple[int, dict]:
    v = cluster.genesis.validators[0]
    headers = sign_request(cluster.key_seed(key_name), method, target, body, v.public_key.hex())
    if body:
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(*v.api_hostport, timeout=20)
    try:
        conn.request(method, target, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        ctype = resp.getheader("Content-Type") or ""
        return resp.status, (json.loads(data) if ctype.startswith("application/json") else {})
    finally:
        conn.close()


def test_each_role_reaches_exactly_its_endpoints(cluster) -> None:
    wrong = []
    for role, key_name in ROLES.items():
        for method, target, body, allowed in ENDPOINTS:
            status, doc = _call(cluster, key_name, method, target, body)
            assert status < 500, (role, method, target, status, doc)
            if (status == 403) != (role not in allowed):
                wrong.append((role, method, target, status, doc.get("error")))
    assert not wrong, wrong


def test_each_role_submits_exactly_its_kinds(cluster) -> None:
    wrong = []
    for role, key_name in ROLES.items():
        key = crypto.PrivateKey.from_seed(cluster.key_seed(key_name))
        for kind, allowed in KIND_ROLES.items():
            tx = Transaction.create(key, cluster.genesis.chain_id, kind, int.from_bytes(os.urandom(8), "big"),
                                    int(time.time() * 1000), os.urandom(48))
            body = json.dumps({"tx": base64.b64encode(tx.encode()).decode()}).encode()
            status, doc = _call(cluster, key_name, "POST", "/v1/txs", body)
            assert status < 500, (role, kind, status, doc)
            if (status == 403) != (role not in allowed):
                wrong.append((role, kind, status, doc.get("error")))
            if role in allowed:  # an allowed role gets past the role check: accepted, or refused for the payload
                assert status in (202, 400), (role, kind, status, doc)
    assert not wrong, wrong
