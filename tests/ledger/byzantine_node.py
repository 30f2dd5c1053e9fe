"""A Byzantine validator process for the cluster tests: the real node code with attacks on everything it sends.

Run: ``python -m tests.ledger.byzantine_node --config node3.json`` (its validator key, as an honest node would be).
The node runs the honest state machine (:class:`ledger.node.node.LedgerNode`), but every message it broadcasts is
accompanied by attacks:

* each vote goes out together with a conflicting vote for the same (type, height, round) — a random block
  hash or nil — (equivocation), in a different order to different peers;
* each vote and proposal is first sent with a corrupted signature;
* each proposal it makes is accompanied by a second, validly signed proposal for the same (height, round)
  whose block has a wrong parent hash (equivocation and an invalid block at once).

Honest nodes must drop the forged signatures, refuse the wrong-parent block, count at most one vote per
validator and step, and record the equivocation as evidence; with at most f such validators the chain keeps
its safety and liveness. This lives in tests/: the product ships no Byzantine mode.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from ledger.config import NodeConfig
from ledger.consensus.events import Broadcast
from ledger.node.node import LedgerNode
from ledger.p2p import transport as p2p
from ledger.types.block import Block, Proposal, ProposalStub, Vote

logger = logging.getLogger("tests.ledger.byzantine_node")

BANNER = "runs as a BYZANTINE validator"


def _corrupt(sig: bytes) -> bytes:
    return bytes([sig[0] ^ 0x01]) + sig[1:]


class Byzantine:
    """Wraps a node's broadcasts with equivocation, forged signatures and wrong-parent blocks."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.sent = 0
        logger.warning("node %d %s (test process)", node.cfg.index, BANNER)

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


class ByzantineNode(LedgerNode):
    """The honest node, whose every vote and proposal goes out through :class:`Byzantine`."""

    def __init__(self, cfg: NodeConfig) -> None:
        super().__init__(cfg)
        self.attacker = Byzantine(self)

    async def _execute(self, actions: list) -> None:
        honest = []
        for a in actions:
            if isinstance(a, Broadcast) and not self._is_quiet():
                if honest:
                    await super()._execute(honest)
                    honest = []
                if self._consensus_reset:
                    return  # the rest belongs to a decision the node refused
                mtype = p2p.T_PROPOSAL if isinstance(a.message, Proposal) else p2p.T_VOTE
                self.attacker.broadcast(mtype, a.message, a.data)
            else:
                honest.append(a)
        if honest:
            await super()._execute(honest)


async def _serve(cfg: NodeConfig) -> int:
    node = ByzantineNode(cfg)
    stop = asyncio.Event()
    node.stop_event = stop
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    await stop.wait()
    await node.stop()
    return 1 if node.fatal else 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.ledger.byzantine_node")
    ap.add_argument("--config", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = NodeConfig.load(args.config)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s node{cfg.index} %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
