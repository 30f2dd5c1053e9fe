"""Known limits of the ledger threat model (docs/ledger.md), shown on real processes and sockets.

These tests pin what the design does not yet stop, so that the threat model stays true; a change that closes
a limit makes its test fail, and the test and the docs are then updated together. A limit closed since (a
node omitting a record from the watchlist at the certified height) keeps its attack tests here, now showing
that the attack fails.

A node that lost its data signs nothing through the highest certified height it heard + 2 (it cannot know
what it signed before the wipe). With n = 4 (f = 1) the chain then needs all three other validators: one
more silent validator (crashed, or Byzantine and refusing to vote) halts it. Nothing forks, and the chain goes
on as soon as the fourth validator votes again.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.ledger_util import assert_no_fork, heights, make_cluster, top_height, wait_for

pytestmark = pytest.mark.slow


def test_wiped_node_and_one_silent_validator_halt_until_it_returns(tmp_path) -> None:
    c = make_cluster(tmp_path / "c")
    try:
        c.up(wait_height=3, timeout_s=120)
        c.kill_node(3, signal.SIGKILL)
        c.wipe_node(3)
        c.kill_node(2, signal.SIGKILL)  # the one faulty validator: silent from now on
        time.sleep(2.0)  # a height already carrying a quorum of precommits may still finish
        c.start_node(3)
        frozen = top_height(c, [0, 1])
        wait_for(lambda: heights(c, [3]).get(3, -1) >= frozen, 90, "the wiped node to sync the chain")
        log = (c.dir / "logs" / "node3.log")
        wait_for(lambda: "not signing anything before height" in log.read_text(errors="replace"), 30,
                 "the wiped node's quiet period")
        m = re.search(r"while the chain is at height (\d+): not signing anything before height (\d+)",
                      log.read_text(errors="replace"))
        assert m and int(m.group(2)) == int(m.group(1)) + 3, m and m.group(0)
        time.sleep(10.0)
        now = heights(c, [0, 1, 3])
        print(f"with node 3 wiped and node 2 silent, heights stay {now} (frozen at {frozen})")
        assert max(now.values()) == frozen, f"a block was finalized while only two validators could sign: {now}"
        t0 = time.monotonic()
        c.start_node(2)
        wait_for(lambda: top_height(c, [0, 1]) >= frozen + 3, 60, "the chain to go on once node 2 votes again")
        print(f"3 new blocks {time.monotonic() - t0:.1f} s after node 2 returned")
        assert_no_fork(c, range(4))
    finally:
        c.down()


def _erased(p: bytes, version: int, height: int) -> dict:
    import hashlib

    return {"pseudonym": p.hex(), "status": "erased", "version": version, "height": height,
            "tx_hash": hashlib.sha256(b"erase" + p).hexdigest(), "nonce": None, "ciphertext": None,
            "wrapped_key": None}


def test_node_omitting_a_record_at_the_certified_height_is_not_believed() -> None:
    """Attack: a node certifies the real tip and serves the watchlist at that height, but leaves out a risk
    downgrade; it is the first node asked. Once as a consistent liar (the digest it reports is that of what it
    serves), once claiming the honest nodes' digest. The pipeline believes a watchlist only when f + 1 nodes
    report the digest of the records it holds at that height, so it passes the liar over and reads the
    downgrade from an honest node. Real sockets, real commit certificates (Ed25519), real AES-GCM records."""
    import os

    import numpy as np

    from ledger.registry.digest import digest_of_records
    from pipelines.recognition.matching import MATCHED
    from pipelines.recognition.watchlist_index import WatchlistIndex
    from pipelines.transforms.enrich_risk import LedgerWatchlistSource, RiskConfig, enrich_frame
    from tests.ledger.client.test_watchlist_freshness import Chain, _frame, _nodes, _record, _sync

    kek, kid = os.urandom(32), b"kid-0001"
    template = np.random.default_rng(7).standard_normal(128).astype(np.float32)
    p = os.urandom(32)
    old = [_record(p, 1, 5, 95, kek, kid, template)]   # suspect, risk 95: disclosed
    new = [_record(p, 2, 9, 20, kek, kid, template)]   # downgraded at height 9: must be masked
    for claims_honest_digest in (False, True):
        chain = Chain()
        # node 0 certifies the real tip 10 and serves height 10, without the downgrade; nodes 1-3 are honest
        nodes = _nodes(chain, [(10, 10, old), (10, 10, old + new), (10, 10, old + new), (10, 10, old + new)])
        if claims_honest_digest:
            nodes[0].claims[10] = digest_of_records(old + new).hex()
        with nodes[0], nodes[1], nodes[2], nodes[3]:
            sync = _sync(chain, nodes, {kid: kek}, catch_up_s=0.3)
            source = LedgerWatchlistSource(lambda: sync)
            idx = source.sync(WatchlistIndex.empty(), 1000.0)  # the rotation starts at node 0
            assert nodes[0].requests.count("/v1/registry/watchlist") == 1  # the liar was asked first
            for t in range(4):  # every node takes its turn
                idx = source.sync(idx, 1001.0 + t)
            fr, _ = enrich_frame(_frame(template), idx, 1005.0, RiskConfig())
            face = fr.tracked[0]
            print(f"liar claims the honest digest: {claims_honest_digest}; the face: {face.identity}, risk {face.risk}, "
                  f"watchlist height {idx.height}")
            assert not idx.is_stale(1005.0, 30.0) and idx.height == 10
            assert face.identity == MATCHED and face.risk == 20, "the omitting node was believed"
            print(f"disputed nodes {sync.disputed_nodes} (the liar: {nodes[0].address})")
            assert nodes[0].address in sync.disputed_nodes
            assert all(n.address not in sync.disputed_nodes for n in nodes[1:])


def test_omitting_node_with_one_honest_node_left_makes_the_watchlist_stale() -> None:
    """Attack: only the omitting node and one honest node answer (two nodes down). Neither content reaches f + 1
    matching digests, so the watchlist is stale at once and every face gets the strongest mask."""
    import os

    import numpy as np

    from pipelines.masking.policy import Policy
    from pipelines.recognition.matching import STALE
    from pipelines.recognition.watchlist_index import WatchlistIndex
    from pipelines.transforms.enrich_risk import LedgerWatchlistSource, RiskConfig, enrich_frame
    from pipelines.transforms.mask_faces import decide_face
    from tests.ledger.client.test_watchlist_freshness import Chain, _closed_address, _frame, _nodes, _record, _sync

    chain = Chain()
    kek, kid = os.urandom(32), b"kid-0001"
    template = np.random.default_rng(8).standard_normal(128).astype(np.float32)
    p = os.urandom(32)
    old = [_record(p, 1, 5, 95, kek, kid, template)]
    new = [_record(p, 2, 9, 20, kek, kid, template)]
    liar, honest = _nodes(chain, [(10, 10, old), (10, 10, old + new)])
    with liar, honest:
        sync = _sync(chain, [liar, honest, _closed_address(), _closed_address()], {kid: kek}, catch_up_s=0.3)
        idx = LedgerWatchlistSource(lambda: sync).sync(WatchlistIndex.empty(), 1000.0)
        fr, _ = enrich_frame(_frame(template), idx, 1000.0, RiskConfig())
        face = fr.tracked[0]
        policy = Policy.load("default")
        print(f"stale: {idx.is_stale(1000.0, 30.0)}; the face: {face.identity}, risk {face.risk}")
        assert idx.is_stale(1000.0, 30.0) and face.identity == STALE
        assert decide_face(policy, face) == policy.strongest(face.w, face.h)
        assert sync.confirmed_height == -1 and len(sync.watchlist) == 0


def test_incremental_sync_omitting_an_erasure_is_not_believed() -> None:
    """Attack on an incremental sync: the watchlist is confirmed at height 6; the subject is erased at height 9;
    at height 10 the next node asked serves the changes since 6 without the erasure. The digest of the
    resulting state is checked like a full one, so the erasure is read from an honest node."""
    import os

    import numpy as np

    from tests.ledger.client.test_watchlist_freshness import Chain, _nodes, _record, _sync

    chain = Chain()
    kek, kid = os.urandom(32), b"kid-0001"
    template = np.random.default_rng(9).standard_normal(128).astype(np.float32)
    p = os.urandom(32)
    old = [_record(p, 1, 5, 95, kek, kid, template)]
    nodes = _nodes(chain, [(6, 6, old)] * 4)
    with nodes[0], nodes[1], nodes[2], nodes[3]:
        sync = _sync(chain, nodes, {kid: kek}, catch_up_s=0.3)
        sync.sync()  # starts at node 0
        assert sync.confirmed_height == 6 and sync.watchlist.get(p).risk == 95
        for i, n in enumerate(nodes):  # the chain erases the subject at height 9 and moves to 10
            n.tip = chain.tip(10)
            n.watchlist = {"height": 10, "records": old if i == 1 else [_erased(p, 2, 9)]}
        sync.sync()  # starts at node 1: the liar
        print(f"after the erasure: subject {'present' if sync.watchlist.get(p) else 'gone'}; "
              f"height {sync.watchlist.height}")
        assert sync.watchlist.get(p) is None, "the omitted erasure was believed"
        print(f"disputed nodes {sync.disputed_nodes} (the liar: {nodes[1].address})")
        assert sync.confirmed_height == 10 and nodes[1].address in sync.disputed_nodes
