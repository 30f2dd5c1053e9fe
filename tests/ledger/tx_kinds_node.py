"""A Byzantine validator process for the transaction-kinds tests (tests/ledger/registry/test_kinds_cluster.py).

It runs the real node code (``ledger.node.node.LedgerNode``) with its real validator key and adds two attacks,
driven by a JSON control file the test rewrites while it runs (path in ``$TXK_CONTROL``)::

    {"gossip": ["<hex tx>", ...], "inject": ["<hex tx>", ...]}

* ``gossip``: every 0.3 s the transactions are sent to every peer as a p2p transaction batch (the frame
  honest nodes use to gossip their mempools), never through this node's own admission;
* ``inject``: every block this node proposes carries the transactions, whatever the kinds table says.
  Each such proposal is logged as ``BYZ-PROPOSED height=H round=R block=HASH``.

Run: ``python -m tests.ledger.tx_kinds_node --config node3.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional

from ledger.config import NodeConfig
from ledger.consensus.events import BlockContent, Broadcast
from ledger.node.node import LedgerNode
from ledger.p2p import sync, transport as p2p
from ledger.types.block import Proposal, Transaction

logger = logging.getLogger("tests.ledger.tx_kinds_node")


class KindsAttacker(LedgerNode):
    """A validator that gossips and proposes transactions the kinds table refuses."""

    def __init__(self, cfg: NodeConfig, control: Path) -> None:
        super().__init__(cfg)
        self.control = control

    def _load(self, key: str) -> list[bytes]:
        try:
            data = json.loads(self.control.read_text())
        except (OSError, ValueError):
            return []
        return [bytes.fromhex(h) for h in data.get(key, [])]

    def _build_block(self, height: int, round_: int) -> BlockContent:
        content = super()._build_block(height, round_)
        extra = [Transaction.decode(raw) for raw in self._load("inject")]
        if not extra:
            return content
        have = {tx.hash() for tx in content.txs}
        txs = list(content.txs) + [tx for tx in extra if tx.hash() not in have]
        return BlockContent(content.timestamp_ms, txs, content.evidence)

    async def _execute(self, actions: list) -> None:
        inject = {Transaction.decode(raw).hash() for raw in self._load("inject")}
        for a in actions:
            if isinstance(a, Broadcast) and isinstance(a.message, Proposal) and inject:
                blk = a.message.block
                if inject & {tx.hash() for tx in blk.txs}:
                    logger.warning("BYZ-PROPOSED height=%d round=%d block=%s", blk.header.height,
                                   a.message.round, blk.hash().hex())
        await super()._execute(actions)

    async def gossip_forever(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            raws = self._load("gossip")
            if raws:
                self.p2p.broadcast(p2p.T_TXS, sync.encode_txs(raws))
                logger.info("BYZ-GOSSIP %d transactions", len(raws))


async def _serve(cfg: NodeConfig, control: Path) -> int:
    node = KindsAttacker(cfg, control)
    stop = asyncio.Event()
    node.stop_event = stop
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    task = loop.create_task(node.gossip_forever())
    await stop.wait()
    task.cancel()
    await node.stop()
    return 1 if node.fatal else 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.ledger.tx_kinds_node")
    ap.add_argument("--config", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = NodeConfig.load(args.config)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s node{cfg.index} %(levelname)s %(name)s: %(message)s")
    control = Path(os.environ["TXK_CONTROL"])
    return asyncio.run(_serve(cfg, control))


if __name__ == "__main__":
    sys.exit(main())
