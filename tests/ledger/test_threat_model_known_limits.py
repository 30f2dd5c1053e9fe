"""Two more known limits of the ledger threat model (docs/ledger.md), on real processes and sockets.

Like tests/ledger/test_threat_model_limits.py, these pin what the design does not stop, so that the threat model
stays true: a change that closes a limit makes its test fail, and the test and the docs change together.
"""

from __future__ import annotations

import http.client
import os
import signal
import time

import numpy as np
import pytest

from ledger.rpc.auth import sign_request
from tests.ledger_util import make_cluster, wait_for

pytestmark = pytest.mark.slow


def _status(cluster, headers: dict) -> int:
    conn = http.client.HTTPConnection(*cluster.genesis.validators[0].api_hostport, timeout=20)
    try:
        conn.request("GET", "/v1/status", headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_request_replayed_to_a_restarted_node_is_accepted_once(tmp_path) -> None:
    """Nonces are remembered in memory: a request captured within ``api_clock_skew`` can be replayed once to
    the same node after it restarts (never to another node: the signature names this one)."""
    c = make_cluster(tmp_path / "c")
    try:
        c.up(wait_height=1, timeout_s=90)
        v = c.genesis.validators[0]
        headers = sign_request(c.key_seed("auditor"), "GET", "/v1/status", b"", v.public_key.hex())
        assert _status(c, headers) == 200
        assert _status(c, headers) == 401  # a replay while the node runs is refused
        c.kill_node(0, signal.SIGTERM)
        c.start_node(0)
        wait_for(lambda: c.heights([0]).get(0, -1) >= 1, 60, "node 0 to serve again")
        age_s = time.time() - int(headers["X-Ledger-Timestamp"]) / 1000
        first, second = _status(c, headers), _status(c, headers)
        print(f"replay {age_s:.1f} s after signing, to the restarted node: {first}, then {second}")
        assert first == 200, "the restarted node refused the replay: update docs/ledger.md (known limit 5)"
        assert second == 401
    finally:
        c.down()


def test_two_colluding_nodes_asked_first_pass_an_old_watchlist_until_an_honest_tip_arrives() -> None:
    """Two Byzantine nodes are f + 1 tip sources: when a sync asks both first, their old (really certified)
    tip and matching old watchlist pass as current. The first node asked rotates, so the next sync meets an
    honest tip, reads the newer watchlist elsewhere and passes the liar over."""
    from tests.ledger.client.test_watchlist_freshness import Chain, _nodes, _record, _sync

    chain = Chain()
    kek, kid = os.urandom(32), b"kid-0001"
    template = np.random.default_rng(11).standard_normal(128).astype(np.float32)
    p = os.urandom(32)
    old = [_record(p, 1, 5, 95, kek, kid, template)]   # suspect, risk 95
    new = [_record(p, 2, 9, 20, kek, kid, template)]   # downgraded at height 9
    # nodes 0 and 1 replay height 6 (tip and watchlist); nodes 2 and 3 are honest at height 10
    nodes = _nodes(chain, [(6, 6, old), (6, 6, old), (10, 10, old + new), (10, 10, old + new)])
    with nodes[0], nodes[1], nodes[2], nodes[3]:
        sync = _sync(chain, nodes, {kid: kek}, catch_up_s=0.3)
        sync.sync()  # asks nodes 0 and 1 for tips first
        first = (sync.confirmed_height, sync.watchlist.get(p).risk, dict(sync.stale_nodes))
        sync.sync()  # asks node 1, then node 2
        second = (sync.confirmed_height, sync.watchlist.get(p).risk, dict(sync.stale_nodes))
        print(f"first sync (confirmed height, risk, stale nodes): {first}; second: {second}")
        assert first == (6, 95, {}), first
        assert second[:2] == (10, 20) and nodes[1].address in second[2], second
