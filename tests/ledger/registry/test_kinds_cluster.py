"""Real-process attacks on the one table of transaction kinds (invariant 5, issue 12).

The attack transaction throughout: an "anchor" transaction, correctly signed by the pipeline key (pipeline
workers hold it), whose payload is an *erase* of a live subject. The kinds table lets an anchor carry only
an anchor payload, so it must be refused at API admission (4xx), when a peer gossips it, inside a proposal
(honest nodes vote nil), by ``apply_block`` even inside a block a quorum certified, and by the auditor.

Four real node processes on loopback; validator 3 is, where a test needs it, a Byzantine process
(:mod:`tests.ledger.tx_kinds_node`) with its real validator key.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ledger.audit.verifier import BlockInvalid, LedgerVerifier
from ledger.client.api_client import ApiError, LedgerClient, Unavailable
from ledger.config import ClientRegistry, KeyFile
from ledger.node.store import Store
from ledger.ops.cluster import Cluster
from ledger.ops.exporter import to_ledger_block
from ledger.registry.payloads import EraseTx, SubjectTx, encode
from ledger.types import crypto
from ledger.types.block import (PRECOMMIT, TX_ANCHOR, TX_REGISTER, Block, CommitCertificate, CommitSig, Transaction,
                                Vote, proposer_index, validator_set_hash)
from tests.ledger_util import heights, make_cluster, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
HONEST = [0, 1, 2]
BYZ = 3


# -- transactions -----------------------------------------------------------------------------------------------
def _key(cluster: Cluster, role: str) -> crypto.PrivateKey:
    return crypto.PrivateKey.from_seed(cluster.key_seed(role))


def _tx(cluster: Cluster, role: str, kind: int, payload: bytes) -> Transaction:
    return Transaction.create(_key(cluster, role), cluster.genesis.chain_id, kind,
                              int.from_bytes(os.urandom(8), "big"), int(time.time() * 1000), payload)


def _registration(cluster: Cluster, p: bytes) -> Transaction:
    """A manager's registration of pseudonym ``p`` (version 1; the record bytes are opaque to the nodes)."""
    sub = SubjectTx(op=1, pseudonym=p, pkey_id=os.urandom(8), version=1, nonce=os.urandom(12),
                    ciphertext=os.urandom(64), kek_id=os.urandom(8), key_commitment=os.urandom(32))
    return _tx(cluster, "manager", TX_REGISTER, encode(sub))


def _attack(cluster: Cluster, p: bytes) -> Transaction:
    """The attack: a pipeline-signed "anchor" transaction whose payload erases subject ``p``."""
    return _tx(cluster, "pipeline", TX_ANCHOR, encode(EraseTx(pseudonym=p, version=2)))


def _client(cluster: Cluster, node: int, role: str) -> LedgerClient:
    return LedgerClient(cluster.api_address(node), cluster.key_seed(role), 10.0)


def _subject_status(cluster: Cluster, node: int, p: bytes) -> str:
    with _client(cluster, node, "manager") as c:
        try:
            return c.request("GET", f"/v1/registry/subjects/{p.hex()}")["status"]
        except ApiError as exc:
            return f"http {exc.status}"


def _tx_status(cluster: Cluster, node: int, tx: Transaction) -> str:
    with _client(cluster, node, "auditor") as c:
        try:
            return c.tx(tx.hash().hex()).get("status", "?")
        except ApiError as exc:
            return "unknown" if exc.status == 404 else f"http {exc.status}"


def _register(cluster: Cluster, nodes: list[int], *ps: bytes) -> None:
    with _client(cluster, nodes[0], "manager") as c:
        for p in ps:
            c.submit(_registration(cluster, p).encode())
    wait_for(lambda: all(_subject_status(cluster, i, p) == "live" for i in nodes for p in ps), 60,
             "the subjects to be registered on every node")


def _all_heights_rise(cluster: Cluster, nodes: list[int], by: int, timeout_s: float = 90) -> None:
    start = heights(cluster, nodes)
    wait_for(lambda: all(h >= start.get(i, 0) + by for i, h in heights(cluster, nodes).items())
             and len(heights(cluster, nodes)) == len(nodes), timeout_s, f"heights of {nodes} to rise by {by}")


def _log(cluster: Cluster, node: int) -> str:
    return cluster.log_path(node).read_text(errors="replace") if cluster.log_path(node).exists() else ""


# -- a cluster whose validator 3 is Byzantine -------------------------------------------------------------------
@pytest.fixture(scope="module")
def byz(tmp_path_factory):
    base = tmp_path_factory.mktemp("txkinds")
    cluster = make_cluster(base / "c")
    control = base / "control.json"
    control.write_text("{}")
    byz_log = base / "byzantine.log"
    proc = None
    try:
        cluster.up(wait_height=1, timeout_s=90, nodes=HONEST)
        env = dict(os.environ, TXK_CONTROL=str(control), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        with open(byz_log, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "tests.ledger.tx_kinds_node", "--config",
                                     str(cluster.config_path(BYZ))], cwd=str(REPO), env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

        def byz_height() -> int:
            try:
                with _client(cluster, BYZ, "auditor") as c:
                    return int(c.status()["height"])
            except (ApiError, Unavailable, OSError):
                return -1

        top = max(heights(cluster, HONEST).values())
        wait_for(lambda: byz_height() >= top, 90, "the Byzantine validator to join")
        pa, pb, pc = os.urandom(32), os.urandom(32), os.urandom(32)
        _register(cluster, HONEST, pa, pb, pc)
        yield SimpleNamespace(cluster=cluster, control=control, log=byz_log, proc=proc, pa=pa, pb=pb, pc=pc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        cluster.down()


def _byz_lines(ns: SimpleNamespace, marker: str) -> list[str]:
    return [ln for ln in ns.log.read_text(errors="replace").splitlines() if marker in ln]


def test_admission_refuses_kind_payload_mismatch(byz) -> None:
    """API admission: the pipeline's anchor carrying an erase, and a manager's register carrying an erase."""
    cluster = byz.cluster
    attack = _attack(cluster, byz.pa)
    with _client(cluster, 0, "pipeline") as c:
        with pytest.raises(ApiError) as e:
            c.submit(attack.encode())
    assert 400 <= e.value.status < 500, e.value
    print(f"pipeline anchor+erase at admission: HTTP {e.value.status} {e.value.reason}")
    # the same payload under the manager's own register kind: a kind carries only its own operation
    relabelled = _tx(cluster, "manager", TX_REGISTER, encode(EraseTx(pseudonym=byz.pa, version=2)))
    with _client(cluster, 1, "manager") as c:
        with pytest.raises(ApiError) as e:
            c.submit(relabelled.encode())
    assert 400 <= e.value.status < 500 and "erase" in e.value.reason, e.value
    print(f"manager register+erase at admission: HTTP {e.value.status} {e.value.reason}")
    _all_heights_rise(cluster, HONEST, by=2)
    for i in HONEST:
        assert _tx_status(cluster, i, attack) == "unknown"
        assert _tx_status(cluster, i, relabelled) == "unknown"
        assert _subject_status(cluster, i, byz.pa) == "live"


def test_gossiped_mismatch_is_refused(byz) -> None:
    """A peer gossips the attack transaction (p2p transaction batch): no honest node takes it."""
    cluster = byz.cluster
    attack = _attack(cluster, byz.pb)
    before = len(_byz_lines(byz, "BYZ-GOSSIP"))
    byz.control.write_text(json.dumps({"gossip": [attack.encode().hex()]}))
    try:
        wait_for(lambda: len(_byz_lines(byz, "BYZ-GOSSIP")) >= before + 10, 60, "the attack to be gossiped")
        _all_heights_rise(cluster, HONEST, by=3)
    finally:
        byz.control.write_text("{}")
    states = {i: (_tx_status(cluster, i, attack), _subject_status(cluster, i, byz.pb)) for i in HONEST}
    print(f"after gossip (tx status, subject status) per honest node: {states}")
    assert all(s == ("unknown", "live") for s in states.values()), states


def test_proposal_carrying_mismatch_gets_nil_votes(byz) -> None:
    """The Byzantine validator puts the attack transaction in every block it proposes: honest nodes vote nil,
    none of those blocks is finalized, the chain goes on and the subject stays live."""
    cluster = byz.cluster
    attack = _attack(cluster, byz.pc)
    before = len(_byz_lines(byz, "BYZ-PROPOSED"))

    def proposed() -> list[tuple[str, str, str]]:  # distinct (height, round, block) carrying the attack
        found = [tuple(m.groups()) for ln in _byz_lines(byz, "BYZ-PROPOSED")[before:]
                 if (m := re.search(r"height=(\d+) round=(\d+) block=([0-9a-f]{64})", ln))]
        return sorted(set(found))

    byz.control.write_text(json.dumps({"inject": [attack.encode().hex()]}))
    try:
        wait_for(lambda: len(proposed()) >= 2, 120, "two proposals carrying the attack")
    finally:
        byz.control.write_text("{}")
    props = proposed()
    top = max(int(h) for h, _, _ in props)
    wait_for(lambda: min(heights(cluster, HONEST).values(), default=0) > top, 90, "the chain to pass the proposals")
    with _client(cluster, 0, "auditor") as c:
        for h, r, blk in props:
            final = c.blocks(int(h), int(h))[0]["hash"]
            print(f"Byzantine proposal height {h} round {r} block {blk[:16]}: finalized block {final[:16]}")
            assert final != blk, f"the proposal carrying the attack was finalized at height {h}"
    states = {i: (_tx_status(cluster, i, attack), _subject_status(cluster, i, byz.pc)) for i in HONEST}
    assert all(s == ("unknown", "live") for s in states.values()), states
    # the honest nodes' reason for their nil votes names the proposal and the table
    refusals = [ln for i in HONEST for ln in _log(cluster, i).splitlines()
                if "refusing the proposal" in ln and "carries an erase payload" in ln]
    assert any(f"height {h} round {r} by validator {BYZ}" in ln for h, r, _ in props for ln in refusals), \
        refusals[:3]
    print(refusals[0])


# -- a quorum certifies the attack: apply_block and the auditor still refuse it ---------------------------------
def _forge_certified_block(cluster: Cluster, tx: Transaction) -> tuple[int, bytes]:
    """Append a block carrying ``tx``, with a commit certificate signed by all four validator keys (what a
    Byzantine quorum could produce), to the stopped nodes at the highest tip; the others sync it from them.
    Returns (height, block hash)."""
    chain_id, keys = cluster.genesis.chain_id, cluster.genesis.public_keys()
    vkeys = [crypto.PrivateKey.from_seed(KeyFile.load(cluster.dir / "keys" / f"node{i}.key").seed)
             for i in range(cluster.n)]
    stores = [Store(cluster.data_dir(i) / "ledger.db", chain_id, cluster.genesis.hash()) for i in range(cluster.n)]
    try:
        top = max(s.height for s in stores)
        tip = next(s for s in stores if s.height == top).get_block(top)
        h = top + 1
        blk = Block.build(chain_id, h, 0, tip.time_ms + 1, tip.hash, proposer_index(h, 0, cluster.n),
                          validator_set_hash(keys), [tx])
        sigs = tuple(CommitSig(i, 0, Vote.create(k, chain_id, PRECOMMIT, h, 0, blk.hash(), i).signature)
                     for i, k in enumerate(vkeys))
        cert = CommitCertificate(h, blk.hash(), sigs)
        for s in stores:
            if s.height == top:
                s.save_block(h, blk.hash(), blk.header.timestamp_ms, blk.encode(), cert.encode(), [tx.hash()])
        return h, blk.hash()
    finally:
        for s in stores:
            s.close()


def test_apply_block_and_auditor_refuse_a_certified_mismatch(tmp_path, kafka_bootstrap, topic_factory) -> None:
    """A block carrying the attack, certified by all four validator keys, reaches every node (stored on two,
    synced by the others): ``apply_block`` gives it no effect on every node, and ``riskmask audit verify`` on the
    exported chain fails and names that block."""
    cluster = make_cluster(tmp_path / "c")
    try:
        cluster.up(wait_height=1, timeout_s=90)
        p = os.urandom(32)
        _register(cluster, list(range(cluster.n)), p)
        cluster.down()
        attack = _attack(cluster, p)
        h, bhash = _forge_certified_block(cluster, attack)
        cluster.up(wait_height=h + 2, timeout_s=90)
        for i in range(cluster.n):
            assert _tx_status(cluster, i, attack) == "committed"  # it is on every chain...
            assert _subject_status(cluster, i, p) == "live"       # ...and changed nothing
            assert "refused by the kinds table" in _log(cluster, i), f"node {i} did not log the refusal"
        print(f"certified forged block {h} ({bhash.hex()[:16]}) applied with no effect on all {cluster.n} nodes")
        # the auditor, with the genesis and the client registry, fails the chain at that block and names it
        verifier = LedgerVerifier(cluster.genesis, clients=ClientRegistry.load(cluster.dir / "clients.json"))
        with _client(cluster, 0, "auditor") as c:
            blocks = c.blocks(1, h + 1)
        with pytest.raises(BlockInvalid) as e:
            for b in blocks:
                verifier.feed(to_ledger_block(base64.b64decode(b["block"]), base64.b64decode(b["cert"])))
        print(f"auditor: {e.value}")
        assert e.value.height == h and f"block {h}" in str(e.value)
        assert "kinds table" in str(e.value) and "erase" in str(e.value)
        # the same chain exported to Kafka, verified by the auditor's command in its own process
        from kafka import KafkaProducer

        topic = topic_factory(prefix="txkinds-ledger")
        prod = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        for b in blocks:
            msg = to_ledger_block(base64.b64decode(b["block"]), base64.b64decode(b["cert"]))
            prod.send(topic, value=msg.to_bytes(), partition=0)
        prod.flush()
        prod.close()
        r = subprocess.run([sys.executable, "-m", "riskmask", "audit", "verify", "--genesis",
                            str(cluster.dir / "genesis.json"), "--bootstrap", kafka_bootstrap, "--ledger-topic", topic,
                            "--audit-topic", ""], capture_output=True, text=True, timeout=120, cwd=str(REPO))
        print(f"riskmask audit verify: rc={r.returncode} {r.stdout.strip()} {r.stderr.strip()[-300:]}")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert f"block {h}" in r.stdout and "kinds table" in r.stdout and "Traceback" not in r.stderr
    finally:
        cluster.down()
