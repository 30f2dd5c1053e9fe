"""Fuzz the ledger API of a real node from its own OpenAPI spec (schemathesis) and with raw HTTP bytes.

Every generated request is properly signed (so the fuzzing reaches the handlers, not only the auth layer),
with keys of several roles. Property: no answer is a 5xx, every error is JSON ``{"error": ...}``, and the
node still serves afterwards.
"""

from __future__ import annotations

import json
import socket
from importlib import resources

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis import GenerationMode

from ledger.rpc.auth import sign_request
from tests.ledger_util import make_cluster

pytestmark = pytest.mark.slow

SPEC = str(resources.files("ledger.rpc").joinpath("openapi.yaml"))
ROLES = ("node0", "manager", "pipeline", "auditor")  # node0 is the validator role


class SignedAuth(requests.auth.AuthBase):
    """Sign the final request bytes exactly as the ledger client does."""

    def __init__(self, seed: bytes, node_id: str) -> None:
        self.seed = seed
        self.node_id = node_id

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        r.headers.update(sign_request(self.seed, r.method, r.path_url, body, self.node_id))
        return r


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = make_cluster(tmp_path_factory.mktemp("ledger-fuzz"), api_max_body=512 * 1024)
    try:
        c.up(wait_height=1, timeout_s=90)
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def sessions(cluster):
    out = {}
    for role in ROLES:
        s = requests.Session()
        s.auth = SignedAuth(cluster.key_seed(role), cluster.genesis.validators[0].public_key.hex())
        out[role] = s
    yield out
    for s in out.values():
        s.close()


def _check(resp) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        body = json.loads(resp.text)
        assert isinstance(body.get("error"), str) and body["error"]


def test_openapi_fuzz_no_5xx(cluster, sessions):
    schema = schemathesis.openapi.from_path(SPEC)
    base = f"http://{cluster.api_address(0)}"
    strategy = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    counts = {"calls": 0}
    seen: set[str] = set()

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy, role=st.sampled_from(ROLES))
    def run(case, role):
        resp = case.call(base_url=base, session=sessions[role], timeout=30)
        counts["calls"] += 1
        seen.add(case.operation.path)
        _check(resp)

    run()
    assert counts["calls"] >= 100
    spec_paths = set(yaml.safe_load(open(SPEC))["paths"])
    assert {p for p in spec_paths if p.startswith("/v1/registry/")} <= seen, sorted(spec_paths - seen)
    assert len(seen) >= len(spec_paths) - 1, sorted(spec_paths - seen)
    with cluster.client(0, "auditor") as c:
        assert c.status()["height"] >= 1


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(
    st.binary(max_size=600),
    st.builds(lambda m, p, h, b: m + b" " + p + b" HTTP/1.1\r\n" + h + b"\r\n" + b,
              st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"get", b"G\x00T"]),
              st.sampled_from([b"/v1/status", b"/v1/txs", b"/v1/blocks/1", b"/v1/blocks?from=x", b"/%ff",
                               b"/v1/txs/" + b"a" * 64, b"*", b""]),
              st.lists(st.sampled_from([b"Content-Length: 5\r\n", b"Content-Length: -1\r\n",
                                        b"Content-Length: 99999999999\r\n", b"X-Ledger-Key: zz\r\n",
                                        b"Transfer-Encoding: chunked\r\n", b"Host: x\r\n", b"\x00: \x01\r\n",
                                        b"Connection: close\r\n"]), max_size=4).map(b"".join),
              st.binary(max_size=64))))
def test_raw_http_bytes_never_5xx(cluster, data):
    host, port = cluster.genesis.validators[1].api_hostport
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
    reply = b"".join(chunks)
    for line in [ln for ln in reply.split(b"\r\n") if ln.startswith(b"HTTP/1.1 ")]:
        code = int(line.split(b" ")[1])
        assert code < 500, reply[:300]


def test_spec_lists_every_endpoint(tmp_path):
    """Every route a node serves (registry ones included) is in ledger/rpc/openapi.yaml."""
    from ledger.config import NodeConfig
    from ledger.node.node import LedgerNode
    from tests.ledger_util import make_cluster as mk

    c = mk(tmp_path / "spec", n=1)
    node = LedgerNode(NodeConfig.load(c.config_path(0)))
    try:
        served = {r.template.replace(":hex", "").replace(":int", "").replace(":str", "")
                  for r in node.api.router.routes}
    finally:
        node.store.close()
    spec = yaml.safe_load(open(SPEC))["paths"]
    assert any(p.startswith("/v1/registry/") for p in served), served
    assert served <= set(spec), sorted(served - set(spec))
    for r in node.api.router.routes:
        path = r.template.replace(":hex", "").replace(":int", "").replace(":str", "")
        assert r.method.lower() in spec[path], (r.method, path)


def test_node_still_serving_after_fuzz(cluster):
    for i in range(cluster.n):
        with cluster.client(i, "auditor") as c:
            assert c.status()["height"] >= 1
