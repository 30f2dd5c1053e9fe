"""The registry state digest: what nodes serve, what the pipeline computes, and a real-cluster omission attack.

Real processes (a 4-node ledger cluster), real sockets, real SQLite, real Ed25519 and AES-GCM. The attack test
replaces node 0, on its own address, with a lying node that follows the real chain (the current certified tip
from an honest node, the current watchlist) but leaves a risk downgrade out of what it serves.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import numpy as np
import pytest

from ledger.client import keys as keyring, privacy
from ledger.client.api_client import ApiError, LedgerClient
from ledger.client.registry_client import RegistryClient
from ledger.client.watchlist import Watchlist, WatchlistSync
from ledger.registry.digest import EMPTY_DIGEST, digest_of_records, entry, state_digest
from ledger.registry.state import RegistryIndex
from tests.ledger_util import make_cluster, wait_for

pytestmark = pytest.mark.timeout(600)


def _digest(c: LedgerClient, height: int) -> dict:
    def ready() -> Any:
        try:
            return c.request("GET", "/v1/registry/digest", query={"height": height})
        except ApiError as exc:
            if exc.status == 409:  # that node has not applied the height yet
                return None
            raise
    out: list = []
    wait_for(lambda: out.append(ready()) or out[-1] is not None, 30, f"node {c.address} to reach {height}")
    return out[-1]


@pytest.mark.slow
def test_nodes_agree_on_the_digest_the_pipeline_computes_and_keep_it_per_height(tmp_path: Any) -> None:
    cluster = make_cluster(tmp_path / "ledger")
    keyring.init_keyring(tmp_path / "keys")
    ring = keyring.load_keyring(tmp_path / "keys")
    try:
        cluster.up(wait_height=1, timeout_s=90)
        mgr = RegistryClient.from_dir(tmp_path / "ledger", "manager", tmp_path / "keys")
        rng = np.random.default_rng(4)
        idents = [privacy.Identity(f"Digest Subject {i}", f"1981-02-1{i}") for i in range(2)]
        for i, ident in enumerate(idents):
            mgr.register(ident, privacy.SubjectRecord.make(risk=40 + i, suspect=False,
                                                           templates=[rng.standard_normal(128).astype(np.float32)]))
        clients = [cluster.client(i, "pipeline") for i in range(4)]
        sync = WatchlistSync(clients, Watchlist(ring.keks, cluster.genesis.chain_id), cluster.genesis.public_keys())
        sync.sync()
        h1, d1 = sync.watchlist.height, sync.watchlist.state_digest().hex()
        docs = [_digest(c, h1) for c in clients]
        print(f"height {h1}: pipeline {d1[:16]}, nodes {[d['digest'][:16] for d in docs]}")
        assert all(d["digest"] == d1 and d["subjects"] == 2 and d["height"] == h1 for d in docs)
        page = clients[1].request("GET", "/v1/registry/watchlist", query={"since": 0})
        assert page["digest"] == _digest(clients[1], page["height"])["digest"]
        assert digest_of_records(page["records"]).hex() == page["digest"]  # the node's digest is its records'

        erased = mgr.erase(idents[1])
        mgr.close()
        sync.sync()
        h2, d2 = sync.watchlist.height, sync.watchlist.state_digest().hex()
        assert h2 >= erased.height > h1 and d2 != d1 and len(sync.watchlist) == 1
        assert all(_digest(c, h2)["digest"] == d2 for c in clients)
        # history: the digest at h1 (and at the height just before the erasure) is still served after it
        assert all(_digest(c, h1)["digest"] == d1 for c in clients)
        assert _digest(clients[2], erased.height - 1)["digest"] == d1
        assert _digest(clients[2], 0)["digest"] == EMPTY_DIGEST.hex()
        # a height not applied yet: 409; not a number: 400
        for query, status in (({"height": 10**12}, 409), ({"height": "１２"}, 400), ({"height": "-1"}, 400)):
            with pytest.raises(ApiError) as info:
                clients[3].request("GET", "/v1/registry/digest", query=query)
            assert info.value.status == status, (query, info.value)
        assert sync.disputed_nodes == {} and sync.stale_nodes == {}
    finally:
        cluster.down()


def test_index_made_before_digests_starts_them_at_its_applied_height(tmp_path: Any) -> None:
    """An index written by a node without state digests gets them from its applied height on."""
    path = tmp_path / "registry.db"
    p, q = b"\x01" * 32, b"\x02" * 32
    row = "INSERT OR REPLACE INTO subjects VALUES (?, ?, 'live', NULL, ?, ?, NULL, NULL, ?, ?)"
    idx = RegistryIndex(path)
    idx.execute_block(3, [(row, (p, 1, b"n" * 12, b"ct-p", 3, b"\x0a" * 32))])
    idx.close()
    db = sqlite3.connect(str(path))  # what an older index looks like: no digests, no digests_from
    db.execute("DROP TABLE state_digests")
    db.execute("DELETE FROM meta WHERE k='digests_from'")
    db.commit()
    db.close()
    idx = RegistryIndex(path)
    want = {p: entry(p, 1, "live", 3, b"\x0a" * 32, b"n" * 12, b"ct-p")}
    assert idx.digest_range() == (3, 3)
    assert idx.digest_at(2) is None and idx.digest_at(4) is None
    assert idx.digest_at(3) == (state_digest(want.values()), 1, 3)
    idx.execute_block(5, [(row, (q, 1, b"m" * 12, b"ct-q", 5, b"\x0b" * 32))], changed=[q])
    want[q] = entry(q, 1, "live", 5, b"\x0b" * 32, b"m" * 12, b"ct-q")
    assert idx.digest_at(5) == (state_digest(want.values()), 2, 5)
    assert idx.digest_at(4)[0] == idx.digest_at(3)[0]  # nothing changed at 4
    idx.close()


def _follower(cluster: Any, old: list[dict]) -> Any:
    """A lying node on node 0's address that follows the real chain through node 1 at every request: node 1's
    current certified tip and registry height, but ``old`` records in place of what changed since."""
    from tests.ledger.client.test_watchlist_freshness import FakeNode

    class Follower(FakeNode):
        @property
        def tip(self) -> dict:
            with cluster.client(1, "pipeline") as c:
                return c.request("GET", "/v1/tip")

        @tip.setter
        def tip(self, value: dict) -> None:
            pass

        @property
        def watchlist(self) -> dict:
            with cluster.client(1, "pipeline") as c:
                height = c.request("GET", "/v1/registry/watchlist", query={"since": 10**15})["height"]
            return {"height": height, "records": old}

        @watchlist.setter
        def watchlist(self, value: dict) -> None:
            pass

    return Follower(cluster.api_address(0), cluster.genesis.validators[0].public_key.hex(), {}, {}, {})


@pytest.mark.slow
def test_live_lying_node_omitting_a_downgrade_is_never_believed(tmp_path: Any) -> None:
    """Node 0's address serves the real, current certified tip and registry height of an honest node, with the
    subject's risk downgrade replaced by its old record (and the digest of that content). Over many syncs,
    each node in turn asked first, the pipeline always holds the downgrade and names node 0."""
    cluster = make_cluster(tmp_path / "ledger")
    keyring.init_keyring(tmp_path / "keys")
    ring = keyring.load_keyring(tmp_path / "keys")
    try:
        cluster.up(wait_height=1, timeout_s=90)
        mgr = RegistryClient.from_dir(tmp_path / "ledger", "manager", tmp_path / "keys")
        ident = privacy.Identity("Omitted Downgrade", "1975-05-05")
        template = np.random.default_rng(6).standard_normal(128).astype(np.float32)
        mgr.register(ident, privacy.SubjectRecord.make(risk=95, suspect=True, templates=[template]))
        with cluster.client(1, "pipeline") as c:
            old = c.request("GET", "/v1/registry/watchlist", query={"since": 0})["records"]
        mgr.update(ident, risk=20, suspect=False)
        mgr.close()
        cluster.kill_node(0)
        with _follower(cluster, old) as liar:
            clients = [cluster.client(i, "pipeline", timeout_s=3.0) for i in range(4)]
            sync = WatchlistSync(clients, Watchlist(ring.keks, cluster.genesis.chain_id),
                                 cluster.genesis.public_keys())
            risks, liar_reads = [], 0
            for _ in range(8):
                before = liar.requests.count("/v1/registry/watchlist")
                sync.sync()
                liar_reads += liar.requests.count("/v1/registry/watchlist") > before
                risks.append(sync.watchlist.entries()[0].risk)
                time.sleep(0.2)
            print(f"risks over 8 syncs {risks}; syncs that read the liar's watchlist {liar_reads}")
            assert liar_reads >= 1  # the liar was asked for its watchlist (first, in the first sync)
            assert risks == [20] * 8, "the omitting node was believed"
            print(f"disputed {sync.disputed_nodes}; stale {sync.stale_nodes}")
            assert list(sync.disputed_nodes) == [cluster.api_address(0)]
    finally:
        cluster.down()


def test_two_colluding_nodes_omitting_a_record_pass_until_honest_digests_are_seen_then_stale() -> None:
    """More than f liars (2 of 4) asked first confirm each other's omission; a later sync that also hears the
    two honest nodes' digest at that height sees two states each vouched for by f + 1 nodes and treats the
    watchlist as stale (strongest mask), never as current. Once the liars no longer vouch for that height, a
    whole re-read confirmed by the honest nodes replaces the state they had confirmed."""
    import os

    from ledger.client.watchlist import WatchlistStale
    from tests.ledger.client.test_watchlist_freshness import Chain, _nodes, _record, _sync

    chain = Chain()
    kek, kid = os.urandom(32), b"kid-0001"
    template = np.random.default_rng(13).standard_normal(128).astype(np.float32)
    p = os.urandom(32)
    old = [_record(p, 1, 5, 95, kek, kid, template)]
    new = [_record(p, 2, 9, 20, kek, kid, template)]
    nodes = _nodes(chain, [(10, 10, old), (10, 10, old), (10, 10, old + new), (10, 10, old + new)])
    with nodes[0], nodes[1], nodes[2], nodes[3]:
        sync = _sync(chain, nodes, {kid: kek}, catch_up_s=0.3)
        sync.sync()  # asks nodes 0 and 1 first: their omission is confirmed by each other
        first = sync.watchlist.get(p).risk
        with pytest.raises(WatchlistStale, match="conflicting"):
            sync.sync()  # node 1 first, then the honest nodes 2 and 3 report another digest
        print(f"two liars asked first: risk {first}; next sync: stale (conflicting digests)")
        assert first == 95
        for liar in nodes[:2]:  # the liars stop vouching for height 10 (restarted, behind at 6)
            liar.tip, liar.watchlist = chain.tip(6), {"height": 6, "records": old}
        sync.sync()  # the incremental read cannot be confirmed; a whole re-read from nodes 2 and 3 is
        print(f"liars behind: risk {sync.watchlist.get(p).risk}, height {sync.watchlist.height}")
        assert sync.watchlist.get(p).risk == 20 and sync.watchlist.height == 10
