"""Test hook: a Byzantine validator (node config ``"byzantine": true``). Never enable it in production.

The node runs the honest state machine, but every message it broadcasts is accompanied by attacks:

* each vote goes out together with a conflicting vote for the same (type, height, round) — a random block
  hash or nil — (equivocation), in a different order to different peers;
* each vote and proposal is first sent with a corrupted signature;
* each proposal it makes is accompanied by a second, validly signed proposal for the same (height, round)
  whose block has a wrong parent hash (equivocation and an invalid block at once).

Honest nodes must drop the forged signatures, refuse the wrong-parent block, count at most one vote per
validator and step, and record the equivocation as evidence; with at most f such validators the chain keeps
its safety and liveness.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from ledger.types import Block, Proposal, ProposalStub, Vote

logger = logging.getLogger(__name__)


def _corrupt(sig: bytes) -> bytes:
    return bytes([sig[0] ^ 0x01]) + sig[1:]


class Byzantine:
    """Wraps the node's broadcasts with equivocation, forged signatures and wrong-parent blocks."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.sent = 0
        logger.warning("node %d runs as a BYZANTINE validator (test hook)", node.cfg.index)

    def broadcast(self, mtype: int, message: Any, data: bytes) -> None:
        node = self.node
        peers = node.p2p.connected()
        try:
            if isinstance(message, Vote):
                alt_hash = None if message.block_hash is not None else os.urandom(32)
                alt = Vote.create(node.key, node.chain_id, message.type, message.height, message.round,
                                  alt_hash, message.validator)
                forged = dataclasses.replace(message, signature=_corrupt(message.signature)).encode()
                variants = [alt.encode(), data]
            elif isinstance(message, Proposal):
                stub, block = message.stub, message.block
                hd = block.header
                bad_block = Block.build(node.chain_id, hd.height, hd.round, hd.timestamp_ms, os.urandom(32),
                                        hd.proposer, hd.validators_hash, list(block.txs), list(block.evidence))
                bad_stub = ProposalStub.create(node.key, node.chain_id, stub.height, stub.round, stub.pol_round,
                                               bad_block.hash(), stub.proposer)
                alt = Proposal(bad_stub, bad_block)
                forged = Proposal(dataclasses.replace(stub, signature=_corrupt(stub.signature)), block).encode()
                variants = [alt.encode(), data]
            else:
                node.p2p.broadcast(mtype, data)
                return
        except Exception:  # the attack itself must not stop the node
            logger.exception("byzantine hook failed; sending the honest message only")
            node.p2p.broadcast(mtype, data)
            return
        for i, peer in enumerate(peers):
            node.p2p.send(peer, mtype, forged)
            order = variants if (i + self.sent) % 2 == 0 else list(reversed(variants))
            for body in order:
                node.p2p.send(peer, mtype, body)
        self.sent += 1
