"""Validator transport and node guards, in one process on loopback: handshake, framing, bad certificates."""

from __future__ import annotations

import asyncio
import dataclasses
import struct

import pytest

from ledger.config import Genesis, KeyFile, NodeConfig
from ledger.node.node import LedgerNode
from ledger.ops.cluster import init_cluster
from ledger.p2p import sync, transport as p2p
from ledger.types import crypto
from ledger.types.block import PRECOMMIT, Block, CommitCertificate, CommitSig, Vote, validator_set_hash


def _keys(d, n=4):
    return [crypto.PrivateKey.from_seed(KeyFile.load(d / "keys" / f"node{i}.key").seed) for i in range(n)]


def test_handshake_proves_keys_and_frames_flow(tmp_path):
    init_cluster(tmp_path, 4)
    g = Genesis.load(tmp_path / "genesis.json")
    keys = _keys(tmp_path)

    async def scenario():
        got = []
        nodes = []
        for i in range(4):
            async def on_msg(peer, t, b, i=i):
                got.append((i, peer, t, b))
            n = p2p.P2P(g, i, keys[i], on_msg)
            await n.start(*g.validators[i].p2p_hostport)
            nodes.append(n)
        for _ in range(100):
            if all(len(n.connected()) == 3 for n in nodes):
                break
            await asyncio.sleep(0.05)
        assert [n.connected() for n in nodes] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
        nodes[0].broadcast(p2p.T_VOTE, b"hello")
        for _ in range(100):
            if len(got) == 3:
                break
            await asyncio.sleep(0.05)
        assert sorted(got) == [(1, 0, p2p.T_VOTE, b"hello"), (2, 0, p2p.T_VOTE, b"hello"),
                               (3, 0, p2p.T_VOTE, b"hello")]
        # An impostor claiming to be validator 2 (wrong key) is refused by everyone.
        await nodes[2].stop()
        impostor = p2p.P2P(g, 2, crypto.PrivateKey.generate(), on_msg)
        await impostor.start(*g.validators[2].p2p_hostport)
        await asyncio.sleep(1.5)
        assert all(2 not in n.connected() for i, n in enumerate(nodes) if i != 2)
        # A raw client sending an oversized frame header is dropped without harming the node.
        host, port = g.validators[3].p2p_hostport
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(struct.pack(">I", p2p.MAX_FRAME + 1) + b"x")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) is not None
        writer.close()
        assert nodes[3].connected() == [0, 1]
        for n in nodes:
            await n.stop()
        await impostor.stop()

    asyncio.run(scenario())


def test_sync_frames_round_trip_and_reject_garbage():
    items = [(b"block-1", b"cert-1"), (b"b" * 1000, b"c" * 70)]
    assert sync.decode_response(sync.encode_response(items)) == items
    assert sync.decode_txs(sync.encode_txs([b"a", b"bc"])) == [b"a", b"bc"]
    assert sync.decode_request(sync.encode_request(5, 10)) == (5, 10)
    for bad in (b"", b"\x00", sync.encode_response(items)[:-1], sync.encode_response(items) + b"x"):
        with pytest.raises(sync.SyncError):
            sync.decode_response(bad)
    with pytest.raises(sync.SyncError):
        sync.decode_request(sync.encode_request(0, 1))


def test_node_refuses_to_store_a_block_with_a_short_certificate(tmp_path):
    """Defence in depth: whatever consensus hands over, a block is stored only with a valid certificate."""
    init_cluster(tmp_path, 4, overrides={"block_interval": 30.0})
    cfg = NodeConfig.load(tmp_path / "node0.json")
    keys = _keys(tmp_path)

    async def scenario():
        node = LedgerNode(cfg)
        await node.start()
        try:
            g = node.genesis
            block = Block.build(g.chain_id, 1, 0, g.genesis_time + 1, g.hash(), 1,
                                validator_set_hash(g.public_keys()), [], [])
            votes = [Vote.create(keys[i], g.chain_id, PRECOMMIT, 1, 0, block.hash(), i) for i in range(2)]
            short = CommitCertificate.from_votes(votes)
            await node._commit(block, short)
            assert node.store.height == 0 and node._consensus_reset
            node._restart_consensus()
            assert not node._consensus_reset
            full = CommitCertificate.from_votes(
                votes + [Vote.create(keys[2], g.chain_id, PRECOMMIT, 1, 0, block.hash(), 2)])
            forged = dataclasses.replace(full, sigs=full.sigs[:2] + (CommitSig(2, 0, bytes(64)),))
            await node._commit(block, forged)
            assert node.store.height == 0
            node._consensus_reset = False
            await node._commit(block, full)
            assert node.store.height == 1 and node.store.get_block(1).hash == block.hash()
        finally:
            await node.stop()

    asyncio.run(scenario())


# -- sealed channels, pre-authentication limits, budgets ----------------------------------------------------

def _channels() -> tuple[p2p.Channel, p2p.Channel]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    ea, eb = a.public_key().public_bytes_raw(), b.public_key().public_bytes_raw()
    th = p2p.transcript_hash(b"g" * 32, 0, 1, ea, eb)
    return p2p.derive_channel(a, eb, th, initiator=True), p2p.derive_channel(b, ea, th, initiator=False)


def test_sealed_frames_refuse_tamper_replay_and_reorder():
    ini, res = _channels()
    f1, f2 = ini.seal(b"\x0bfirst"), ini.seal(b"\x0bsecond")
    tampered = f1[:10] + bytes([f1[10] ^ 1]) + f1[11:]
    with pytest.raises(p2p.P2PError):
        res.open(tampered[:4], tampered[4:])
    ini2, res2 = _channels()
    with pytest.raises(p2p.P2PError):  # a frame sealed for another connection
        res2.open(f1[:4], f1[4:])
    assert res.open(f1[:4], f1[4:]) == b"\x0bfirst"
    with pytest.raises(p2p.P2PError):  # replayed
        res.open(f1[:4], f1[4:])
    g1, g2 = ini2.seal(b"a"), ini2.seal(b"b")
    with pytest.raises(p2p.P2PError):  # reordered
        res2.open(g2[:4], g2[4:])
    assert res.open(f2[:4], f2[4:]) == b"\x0bsecond"
    # The two directions use different keys: a frame cannot be reflected back to its sender.
    back = res.seal(b"\x0bx")
    with pytest.raises(p2p.P2PError):
        res.open(back[:4], back[4:])


def test_unauthenticated_connections_are_capped_in_number_and_time(tmp_path):
    init_cluster(tmp_path, 4)
    g = Genesis.load(tmp_path / "genesis.json")
    keys = _keys(tmp_path)

    async def scenario():
        async def on_msg(peer, t, b):
            pass

        node = p2p.P2P(g, 3, keys[3], on_msg)
        port = await node.start("127.0.0.1", 0)
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3 * p2p.MAX_PENDING)]
        await asyncio.sleep(0.3)
        assert len(node._pending) <= p2p.MAX_PENDING
        assert node.refused_unauthenticated >= 2 * p2p.MAX_PENDING
        closed_early = 0
        for r, _ in conns[:p2p.MAX_PENDING]:
            closed_early += await _eof(r, 0.2)
        assert closed_early == p2p.MAX_PENDING  # the oldest made room
        t0 = asyncio.get_running_loop().time()
        for r, _ in conns[-p2p.MAX_PENDING:]:  # the newest are closed when their handshake time is up
            assert await _eof(r, p2p.HANDSHAKE_TIMEOUT_S + 2)
        assert asyncio.get_running_loop().time() - t0 <= p2p.HANDSHAKE_TIMEOUT_S + 2
        assert not node._pending
        for _, w in conns:
            w.close()
        await node.stop()

    asyncio.run(scenario())


async def _eof(reader: asyncio.StreamReader, timeout: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except asyncio.TimeoutError:
        return False
    except ConnectionError:
        return True


def test_peer_that_does_not_read_is_cut_off_and_recorded(tmp_path):
    init_cluster(tmp_path, 4)
    g = Genesis.load(tmp_path / "genesis.json")
    keys = _keys(tmp_path)

    async def scenario():
        stuck = asyncio.Event()

        async def never_returns(peer, t, b):  # validator 1 stops reading after its first frame
            await stuck.wait()

        async def on_msg(peer, t, b):
            pass

        faults = []
        a = p2p.P2P(g, 0, keys[0], on_msg, on_fault=lambda peer, why: faults.append((peer, why)))
        b = p2p.P2P(g, 1, keys[1], never_returns)
        await b.start(*g.validators[1].p2p_hostport)
        await a.start(*g.validators[0].p2p_hostport)
        for _ in range(100):
            if a.connected() == [1]:
                break
            await asyncio.sleep(0.05)
        assert a.connected() == [1]
        chunk = b"x" * (1024 * 1024)
        for _ in range(p2p.SEND_QUEUE_BYTES // len(chunk) + 40):
            a.send(1, p2p.T_TXS, chunk)
            await asyncio.sleep(0)
        assert 1 not in a.connected()
        assert faults and faults[0][0] == 1 and "send queue" in faults[0][1]
        assert a.banned(1)
        stuck.set()
        await a.stop()
        await b.stop()

    asyncio.run(scenario())


def test_wiped_node_needs_f_plus_one_certified_statuses(tmp_path):
    """Unit view of the rule the real-process test exercises: uncertified or forged heights end nothing."""
    init_cluster(tmp_path, 4)
    cfg = NodeConfig.load(tmp_path / "node3.json")
    keys = _keys(tmp_path)
    node = LedgerNode(cfg)
    try:
        g = node.genesis
        node._quiet_through = -1
        block = Block.build(g.chain_id, 7, 0, g.genesis_time + 1, b"\x01" * 32, 3,
                            validator_set_hash(g.public_keys()), [], [])
        votes = [Vote.create(keys[i], g.chain_id, PRECOMMIT, 7, 0, block.hash(), i) for i in range(3)]
        good = CommitCertificate.from_votes(votes).encode()
        short = CommitCertificate.from_votes(votes[:2]).encode()
        node._note_peer_height(0, 0)  # "the chain is new": one voice
        assert node._is_quiet() and node._quiet_through == -1
        node._note_peer_height(1, 9, block.hash(), good)  # certificate for another height
        node._note_peer_height(1, 7, block.hash(), short)  # not a quorum
        node._note_peer_height(2, 7, b"", b"")  # no proof at all
        assert node._quiet_through == -1 and set(node._certified) == {0}
        node._note_peer_height(1, 7, block.hash(), good)
        assert node._quiet_through == 9  # f+1 = 2 validators heard, highest certified 7: silent through 9
        status = sync.decode_status(sync.encode_status(7, 2, block.hash(), good))
        assert status == (7, 2, block.hash(), good)
        with pytest.raises(sync.SyncError):
            sync.decode_status(sync.encode_status(7, 2) + b"short")
    finally:
        node.store.close()


def test_next_height_buffer_keeps_one_proposal_per_round_within_budget(tmp_path):
    import os

    from ledger.consensus.events import ChainTip, ProposalReceived
    from ledger.consensus.state import MAX_FUTURE_BYTES, ConsensusState
    from ledger.types.block import TX_ANCHOR, Proposal, ProposalStub, Transaction

    init_cluster(tmp_path, 4)
    g = Genesis.load(tmp_path / "genesis.json")
    keys = _keys(tmp_path)
    cs = ConsensusState(g.chain_id, g.public_keys(), 0, keys[0], ChainTip(0, g.hash(), g.genesis_time))
    cs.start()
    txs = [Transaction.create(keys[1], g.chain_id, TX_ANCHOR, i, g.genesis_time, os.urandom(60_000))
           for i in range(64)]  # about 3.9 MB per block
    vhash = validator_set_hash(g.public_keys())
    for k in range(12):
        for rnd in (0, 1, 2, 3, 4, 8):  # height 2, each round's own proposer
            proposer = (2 + rnd) % 4
            blk = Block.build(g.chain_id, 2, rnd, g.genesis_time + k, os.urandom(32), proposer, vhash, txs, [])
            stub = ProposalStub.create(keys[proposer], g.chain_id, 2, rnd, -1, blk.hash(), proposer)
            cs.handle(ProposalReceived(Proposal(stub, blk)))
    kept = [(m.stub.round, m.stub.block_hash) for m in cs._future]
    # One proposal per round (the first), round 8 too far ahead, and the fifth round over the byte budget.
    assert [r for r, _ in kept] == [0, 1, 2, 3]
    assert cs._future_bytes <= MAX_FUTURE_BYTES < cs._future_bytes + 3_800_000
