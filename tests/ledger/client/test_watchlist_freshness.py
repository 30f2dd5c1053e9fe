"""Watchlist freshness from the chain: a lying ledger node serving an old watchlist (with a valid old commit
certificate) must not make the pipeline trust it.

Real processes: a 4-node ledger cluster; node 0 is replaced, on its own API address, by a fake node (an HTTP
server in this test) replaying what node 0 served before a risk downgrade: the old watchlist and the old
block's real header and certificate. The pipeline reads the node addresses from the genesis as in production.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from ledger.client import keys as keyring, privacy
from ledger.config import parse_address
from ledger.ops.manager_cli import RegistryClient
from ledger.registry.digest import digest_of_records
from ledger.types.block import Block
from pipelines.frame import FrameContext
from pipelines.masking.policy import Policy
from pipelines.recognition.matching import MATCHED, STALE
from pipelines.recognition.watchlist_index import WatchlistIndex
from pipelines.tracking.tracks import DETECTED, TrackedFace
from pipelines.transforms.enrich_risk import (EnrichRisk, LedgerSyncFactory, LedgerWatchlistSource, RiskConfig,
                                              enrich_frame)
from pipelines.transforms.mask_faces import decide_face
from tests.ledger_util import make_cluster, wait_for

pytestmark = pytest.mark.timeout(600)


class FakeNode:
    """A lying node on a real socket: answers every request (signed or not) from a frozen snapshot."""

    def __init__(self, address: str, node_id: str, watchlist: dict, tip: dict, subjects: dict[str, dict]) -> None:
        self.watchlist, self.tip, self.subjects = watchlist, tip, subjects
        self.requests: list[str] = []
        self.claims: dict[int, str] = {}  # height -> digest it claims instead of the one of its records
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                url = urlsplit(self.path)
                fake.requests.append(url.path)
                if url.path == "/v1/registry/watchlist":
                    since = int(parse_qs(url.query).get("since", ["0"])[0])
                    recs = [r for r in fake.watchlist["records"] if r["height"] > since]
                    h = fake.watchlist["height"]
                    body = {"height": h, "since": since, "next_since": max(h, since), "complete": True,
                            "records": recs, "digest": fake.digest_at(h)}
                    self._send(200, body)
                elif url.path == "/v1/registry/digest":
                    h = int(parse_qs(url.query).get("height", [str(fake.watchlist["height"])])[0])
                    if h > fake.watchlist["height"]:
                        self._send(409, {"error": f"height {h} not applied yet"})
                    else:
                        self._send(200, {"height": h, "applied_height": fake.watchlist["height"],
                                         "digest": fake.digest_at(h)})
                elif url.path == "/v1/node":  # it claims to be the validator whose address it took
                    self._send(200, {"node_id": node_id, "index": 0, "chain_id": "", "tls": False})
                elif url.path == "/v1/tip":
                    self._send(200, fake.tip)
                elif url.path == "/v1/status":
                    self._send(200, {"index": 0, "height": fake.tip["height"]})
                elif url.path.startswith("/v1/registry/subjects/"):
                    rec = fake.subjects.get(url.path.rsplit("/", 1)[1])
                    self._send(200, rec) if rec else self._send(404, {"error": "unknown subject"})
                else:
                    self._send(404, {"error": "not found"})

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        host, port = parse_address(address, "fake node")
        deadline = time.monotonic() + 30.0
        while True:  # the killed node's connections may hold its port for a moment
            try:
                self.server = ThreadingHTTPServer((host, port), Handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.server.daemon_threads = True
        self.address = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def digest_at(self, height: int) -> str:
        """The state digest of its records at ``height`` (or the digest it was told to claim there)."""
        if height in self.claims:
            return self.claims[height]
        return digest_of_records(self.watchlist["records"], upto=height).hex()

    def __enter__(self) -> "FakeNode":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _face(emb: np.ndarray) -> TrackedFace:
    return TrackedFace(x=10.0, y=10.0, w=120.0, h=144.0, score=0.9, track_id=1, source=DETECTED, embedding=emb,
                       embedding_fresh=True)


def _frame(emb: np.ndarray, seq: int = 0) -> FrameContext:
    img = np.zeros((8, 8, 3), np.uint8)
    return FrameContext("frames.raw", 0, 0, "cam-1", 0, seq, 0, 8, 8, hashlib.sha256(b"x").digest(), img,
                        tracked=(_face(emb),))


def _tip_of(cluster: Any, height: int) -> dict:
    """What an honest node's /v1/tip said at ``height``: the real header and commit certificate."""
    with cluster.client(1, "auditor") as c:
        blk = c.block(height)
    header = Block.decode(base64.b64decode(blk["block"])).header.encode()
    return {"height": height, "hash": blk["hash"], "header": base64.b64encode(header).decode(), "cert": blk["cert"]}


def _summary(f: FrameContext) -> tuple:
    d = f.tracked[0]
    return d.identity, d.risk


@pytest.mark.slow
def test_lying_node_with_an_old_watchlist_is_not_trusted(tmp_path: Any) -> None:
    import apache_beam as beam
    from apache_beam.testing import test_pipeline
    from apache_beam.testing.util import assert_that, equal_to

    cluster = make_cluster(tmp_path / "ledger")
    keyring.init_keyring(tmp_path / "keys")
    stopped: list[int] = []
    rng = np.random.default_rng(12)
    template = rng.standard_normal(128).astype(np.float32)
    camera_view = template + 0.05 * rng.standard_normal(128).astype(np.float32)
    ident = privacy.Identity("Freshness Subject", "1970-02-03")
    policy = Policy.load("default")
    try:
        cluster.up(wait_height=1, timeout_s=120)
        mgr = RegistryClient.from_dir(tmp_path / "ledger", "manager", tmp_path / "keys")
        # registered as a high-risk suspect: stays recognisable on camera
        mgr.register(ident, privacy.SubjectRecord.make(risk=95, suspect=True, templates=[template]))
        with cluster.client(0, "pipeline") as c:
            old = c.request("GET", "/v1/registry/watchlist", query={"since": 0})
            p = old["records"][0]["pseudonym"]
            old_subject = c.request("GET", f"/v1/registry/subjects/{p}")
        old_tip = _tip_of(cluster, old["height"])
        # the cluster downgrades the subject (no longer a suspect: must be masked) and moves on
        mgr.update(ident, risk=20, suspect=False)
        mgr.close()
        wait_for(lambda: min(cluster.heights([1, 2, 3]).values(), default=0) > old["height"] + 2, 60,
                 "the chain to move on")
        cluster.kill_node(0)
        # ... and a liar takes node 0's address, replaying node 0's old (validly certified) answers
        node0 = cluster.genesis.validators[0].public_key.hex()
        with FakeNode(cluster.api_address(0), node0, old, old_tip, {p: old_subject}) as liar:
            factory = LedgerSyncFactory(str(tmp_path / "ledger"), "pipeline", str(tmp_path / "keys"), timeout_s=3.0)

            # 1. The Beam stage, as `riskmask run` builds it: the downgrade is what the face gets.
            cfg = RiskConfig(background_sync=False, sync_interval_s=1.0)
            with test_pipeline.TestPipeline() as pl:
                out = (pl | beam.Create([_frame(camera_view, i) for i in range(2)])
                       | EnrichRisk(lambda: LedgerWatchlistSource(factory), cfg))
                assert_that(out | beam.Map(_summary), equal_to([(MATCHED, 20)] * 2))

            # 2. One source kept across syncs, so it has seen the certified tip of the honest nodes.
            src = LedgerWatchlistSource(factory)
            idx = src.sync(WatchlistIndex.empty(), time.time())
            for _ in range(3):  # every node gets its turn as the first one asked: the answer never changes
                idx = src.sync(idx, time.time())
                fr, _ = enrich_frame(_frame(camera_view), idx, time.time(), RiskConfig())
                assert _summary(fr) == (MATCHED, 20), f"the lying node's old watchlist was used: {_summary(fr)}"
            assert "/v1/registry/watchlist" in liar.requests or "/v1/tip" in liar.requests

            # 3. The honest nodes stop answering (paused); only the liar does: its watchlist is older than the
            #    certified height already seen, so the pipeline treats the watchlist as stale right away.
            for i in (1, 2, 3):
                os.kill(cluster.pid(i), signal.SIGSTOP)
                stopped.append(i)
            now = time.time()
            idx = src.sync(idx, now)
            fr, _ = enrich_frame(_frame(camera_view), idx, now, RiskConfig())
            face = fr.tracked[0]
            assert face.identity == STALE and face.risk is None, (face.identity, face.risk)
            assert decide_face(policy, face) == policy.strongest(face.w, face.h)
            assert decide_face(policy, face) != policy.decide(face.w, face.h, 95, True)

            # 4. The honest nodes answer again: current again, with the downgrade.
            for i in list(stopped):
                os.kill(cluster.pid(i), signal.SIGCONT)
                stopped.remove(i)
            now = time.time()
            idx = src.sync(idx, now)
            fr, _ = enrich_frame(_frame(camera_view), idx, now, RiskConfig())
            assert _summary(fr) == (MATCHED, 20)
    finally:
        for i in stopped:
            pid: Optional[int] = cluster.pid(i)
            if pid:
                os.kill(pid, signal.SIGCONT)
        cluster.down()


# -- the freshness rule on its own: fake nodes on real sockets, real Ed25519 certificates ------------------------

CHAIN = "fresh-unit"


class Chain:
    """Four validator keys and the genesis-style inputs a WatchlistSync needs; builds certified tips."""

    def __init__(self) -> None:
        from ledger.types import crypto

        self.keys = [crypto.PrivateKey.generate() for _ in range(4)]
        self.public_keys = [k.public_key().to_bytes() for k in self.keys]

    def tip(self, height: int, signers: tuple[int, ...] = (0, 1, 2), keys: Optional[list] = None) -> dict:
        from ledger.types.block import PRECOMMIT, CommitCertificate, Vote, validator_set_hash

        blk = Block.build(CHAIN, height, 0, 1_700_000_000_000 + height, b"\x01" * 32, 0,
                          validator_set_hash(self.public_keys), [], ())
        keys = keys or self.keys
        cert = CommitCertificate.from_votes([Vote.create(keys[v], CHAIN, PRECOMMIT, height, 0, blk.hash(), v)
                                             for v in signers])
        return {"height": height, "hash": blk.hash().hex(),
                "header": base64.b64encode(blk.header.encode()).decode(),
                "cert": base64.b64encode(cert.encode()).decode()}


def _record(p: bytes, version: int, height: int, risk: int, kek: bytes, kid: bytes, template: np.ndarray) -> dict:
    record = privacy.SubjectRecord.make(risk=risk, suspect=risk > 80, templates=[template])
    sealed = privacy.seal_record(record, CHAIN, p, version, kek, kid)
    return {"pseudonym": p.hex(), "status": "live", "version": version, "height": height,
            "tx_hash": hashlib.sha256(p + version.to_bytes(8, "big")).hexdigest(),
            "nonce": base64.b64encode(sealed.nonce).decode(),
            "ciphertext": base64.b64encode(sealed.ciphertext).decode(),
            "wrapped_key": base64.b64encode(sealed.wrapped_key).decode()}


def _nodes(chain: Chain, states: list[tuple[int, int, list[dict]]]) -> list[FakeNode]:
    """One fake node per (certified tip height, served watchlist height, records)."""
    return [FakeNode("127.0.0.1:0", chain.public_keys[i].hex(),
                     {"height": served, "records": recs}, chain.tip(tip), {})
            for i, (tip, served, recs) in enumerate(states)]


def _sync(chain: Chain, nodes: list[Any], keks: dict, **kw: Any) -> Any:
    from ledger.client.api_client import LedgerClient
    from ledger.client.watchlist import Watchlist, WatchlistSync

    clients = [LedgerClient(n.address if hasattr(n, "address") else n, os.urandom(32), 2.0,
                            node_id=chain.public_keys[i].hex()) for i, n in enumerate(nodes)]
    return WatchlistSync(clients, Watchlist(keks, CHAIN), chain.public_keys, **kw)


def _closed_address() -> str:
    from ledger.ops.cluster import free_ports

    return f"127.0.0.1:{free_ports(1)[0]}"


def test_forged_or_under_signed_tips_do_not_count() -> None:
    from ledger.client.watchlist import TipUnavailable

    chain = Chain()
    outsiders = [__import__("ledger.types.crypto", fromlist=["x"]).PrivateKey.generate() for _ in range(4)]
    nodes = _nodes(chain, [(50, 50, []), (60, 60, []), (10, 10, [])])
    nodes[0].tip = chain.tip(50, keys=outsiders)   # signed by keys not in the genesis
    nodes[1].tip = chain.tip(60, signers=(0, 1))   # two signers: under the quorum of three
    with nodes[0], nodes[1], nodes[2]:
        sync = _sync(chain, [nodes[0], nodes[1], nodes[2], _closed_address()], {}, catch_up_s=0.2)
        assert sync.tip_sources == 2  # f + 1 with four validators
        with pytest.raises(TipUnavailable):
            sync.sync()  # one verified tip (node 2) of the two needed
        assert sync.seen_height == 10 and sync.confirmed_height == -1
        nodes[1].tip = chain.tip(12)
        nodes[1].watchlist = {"height": 12, "records": []}
        sync.sync()
        assert sync.confirmed_height == 12 and sync.watchlist.height == 12


def test_lagging_node_is_passed_over_and_all_lagging_is_stale() -> None:
    from ledger.client.watchlist import WatchlistStale

    chain = Chain()
    kek, kid = os.urandom(32), b"kid-0001"
    rng = np.random.default_rng(5)
    template = rng.standard_normal(128).astype(np.float32)
    p = os.urandom(32)
    old = [_record(p, 1, 5, 95, kek, kid, template)]
    new = [_record(p, 2, 9, 20, kek, kid, template)]
    # node 0 certifies height 10 but serves the watchlist at 6 (an old copy); nodes 1-3 serve 10
    nodes = _nodes(chain, [(10, 6, old), (10, 10, old + new), (10, 10, old + new), (10, 10, old + new)])
    with nodes[0], nodes[1], nodes[2], nodes[3]:
        sync = _sync(chain, nodes, {kid: kek}, catch_up_s=0.3)
        source = LedgerWatchlistSource(lambda: sync)
        idx = source.sync(WatchlistIndex.empty(), 1000.0)
        assert idx.height == 10 and idx.subjects[0].risk == 20 and not idx.is_stale(1000.0, 30.0)
        assert nodes[0].address in sync.stale_nodes and sync.stale_nodes[nodes[0].address] == (6, 10)
        # the rotation spreads the reads: over four syncs every honest node serves the watchlist (the lagging
        # node is asked last for a while: recheck_s)
        for _ in range(4):
            idx = source.sync(idx, 1001.0)
        served = [sum(r == "/v1/registry/watchlist" for r in n.requests) for n in nodes]
        assert all(served[i] >= 1 for i in (1, 2, 3)), served
        assert idx.subjects[0].risk == 20
        # the chain moves to 14; every node still serves 10: nobody shows the watchlist current
        for n in nodes:
            n.tip = chain.tip(14)
        with pytest.raises(WatchlistStale) as info:
            sync.sync()
        assert info.value.certified == 14 and set(info.value.served.values()) <= {6, 10}
        stale = source.sync(idx, 1002.0)
        assert stale.is_stale(1002.0, 30.0) and stale.height == 10  # stale now, not in 30 s
        fr, _ = enrich_frame(_frame(template), stale, 1002.0, RiskConfig())
        assert fr.tracked[0].identity == STALE
        # one node at 14 is not enough: the content at a height needs f + 1 nodes reporting its digest
        nodes[2].watchlist = {"height": 14, "records": old + new}
        assert source.sync(stale, 1003.0).is_stale(1003.0, 30.0) and sync.confirmed_height == 10
        # a second node catching up while the sync waits (within catch_up_s) confirms it
        threading.Timer(0.1, lambda: nodes[3].__setattr__("watchlist", {"height": 14, "records": old + new})).start()
        fresh = source.sync(stale, 1004.0)
        assert not fresh.is_stale(1004.0, 30.0) and sync.confirmed_height == 14 and fresh.height == 14
