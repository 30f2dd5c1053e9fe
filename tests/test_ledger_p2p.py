"""Validator transport and node guards, in one process on loopback: handshake, framing, bad certificates."""

from __future__ import annotations

import asyncio
import dataclasses
import struct

import pytest

from ledger import crypto, p2p, sync
from ledger.cluster import init_cluster
from ledger.config import Genesis, KeyFile, NodeConfig
from ledger.node import LedgerNode
from ledger.types import PRECOMMIT, Block, CommitCertificate, CommitSig, Vote, validator_set_hash


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
