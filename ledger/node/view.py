"""The read side of a ledger node as the HTTP API sees it: status, blocks, transaction proofs, evidence.

A mixin of :class:`ledger.node.node.LedgerNode` (it uses the node's store, mempool, consensus and p2p); kept
apart so the node module holds only the runtime around the state machine.
"""

from __future__ import annotations

import base64
import collections
from typing import Any, Optional

from ledger.consensus.events import STEP_NAMES
from ledger.types import merkle
from ledger.types.block import Block

MERKLE_CACHE = 16


class NodeView:
    """Implements :class:`ledger.rpc.api.LedgerService`'s read methods for a node."""

    store: Any
    mempool: Any
    consensus: Any
    p2p: Any
    cfg: Any
    chain_id: str
    _last_hash: bytes
    _last_time: int
    _merkle_cache: "collections.OrderedDict[int, tuple]"

    def _round(self) -> int:
        return int(getattr(self.consensus, "round", 0) or 0) if self.consensus is not None else 0

    @property
    def height(self) -> int:
        return self.store.height

    def status_json(self) -> dict:
        c = self.consensus
        step = getattr(c, "step", None)
        return {"index": self.cfg.index, "chain_id": self.chain_id, "height": self.store.height,
                "round": self._round(), "step": STEP_NAMES.get(step, str(step)),
                "peers": self.p2p.connected(), "last_block_time_ms": self._last_time if self.store.height else 0,
                "last_block_hash": self._last_hash.hex(), "mempool": len(self.mempool)}

    def block_json(self, height: int) -> Optional[dict]:
        b = self.store.get_block(height)
        if b is None:
            return None
        blk = Block.decode(b.block)
        hd = blk.header
        header = {"chain_id": hd.chain_id, "height": hd.height, "round": hd.round,
                  "timestamp_ms": hd.timestamp_ms, "prev_hash": hd.prev_hash.hex(), "tx_root": hd.tx_root.hex(),
                  "num_txs": hd.num_txs, "proposer": hd.proposer, "validators_hash": hd.validators_hash.hex(),
                  "evidence_hash": hd.evidence_hash.hex()}
        return {"height": b.height, "hash": b.hash.hex(), "time_ms": b.time_ms, "n_txs": b.n_txs,
                "block": base64.b64encode(b.block).decode(), "cert": base64.b64encode(b.cert).decode(),
                "header": header, "tx_hashes": [tx.hash().hex() for tx in blk.txs]}

    def _tree(self, height: int) -> tuple["merkle.MerkleTree", Block]:
        cached = self._merkle_cache.get(height)
        if cached is not None:
            self._merkle_cache.move_to_end(height)
            return cached
        blk = Block.decode(self.store.get_block(height).block)
        tree = merkle.MerkleTree([tx.encode() for tx in blk.txs])
        self._merkle_cache[height] = (tree, blk)
        if len(self._merkle_cache) > MERKLE_CACHE:
            self._merkle_cache.popitem(last=False)
        return tree, blk

    def tx_status(self, tx_hash: bytes) -> dict:
        loc = self.store.tx_location(tx_hash)
        if loc is None:
            if tx_hash in self.mempool:
                return {"status": "pending", "hash": tx_hash.hex()}
            return {"status": "unknown", "hash": tx_hash.hex()}
        height, idx = loc
        tree, blk = self._tree(height)
        proof = tree.inclusion_proof(idx)
        return {"status": "committed", "hash": tx_hash.hex(), "height": height, "index": idx,
                "block_hash": blk.hash().hex(),
                "proof": {"leaf_index": idx, "tree_size": len(blk.txs), "root": blk.header.tx_root.hex(),
                          "path": [p.hex() for p in proof]}}

    def evidence_json(self) -> list[dict]:
        return [{"height": e["height"], "validator": e["validator"], "kind": e["kind"],
                 "data": base64.b64encode(e["data"]).decode(), "time_ms": e["time_ms"]}
                for e in self.store.list_evidence()]


