"""Peer guards of a ledger node: byte budgets for what other validators can make it hold, certified status.

A mixin of :class:`ledger.node.node.LedgerNode` (through :class:`ledger.node.blocksync.BlockSync`); it uses the node's
store, p2p, genesis and buffers. What each guard bounds:

* proposals: duplicates are dropped, and a peer that sends more than :data:`MAX_PROPOSALS_PER_ROUND`
  different proposals for one (height, round), or proposals for more than
  :data:`MAX_PROPOSAL_ROUNDS_PER_PEER` (height, round) pairs ahead of this node, is cut off (the consensus
  state machine bounds its own next-height buffer, see ``ledger.consensus.state.MAX_FUTURE_BYTES``);
* gossiped transaction frames: a duplicate frame is dropped unread, the inbox holds at most
  :data:`TX_INBOX_BYTES` (beyond it, proposals still carry the transactions) and one peer at most
  :data:`TX_INBOX_PEER_BYTES`, past which it is cut off;
* status: every status carries the tip's hash and commit certificate, so a node that lost its data can
  check the heights it hears instead of trusting the first peer (see :meth:`PeerGuards._note_peer_height`).

A peer cut off is disconnected and refused for a while by :meth:`ledger.p2p.transport.P2P.cut_off`, and recorded in
the store's ``peer_faults`` table.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Optional

from ledger.errors import LedgerError
from ledger.node.store import StoreError
from ledger.p2p import sync
from ledger.types import crypto
from ledger.types.block import CommitCertificate, Proposal, verify_commit

logger = logging.getLogger(__name__)

TX_INBOX_MAX = 1000  # gossip frames waiting for admission
TX_INBOX_BYTES = 64 * 1024 * 1024  # their bytes, all peers together (beyond it, proposals carry the txs)
TX_INBOX_PEER_BYTES = 24 * 1024 * 1024  # one peer's share; a peer past it is cut off
TX_RECENT_FRAMES = 4096  # digests of recent gossip frames: a duplicate frame is dropped unread
MAX_PROPOSALS_PER_ROUND = 4  # different proposals one peer may send for one (height, round)
MAX_PROPOSAL_ROUNDS_PER_PEER = 64  # (height, round) pairs one peer may propose for above our height


def _now_ms() -> int:
    return int(time.time() * 1000)


class PeerGuards:
    """Budgets and checks on what peers send; see the module docstring."""

    store: Any
    p2p: Any
    genesis: Any
    chain_id: str
    public_keys: list
    verifier: Any
    _closing: bool
    _io: Any
    _quiet_through: Optional[int]
    _certified: dict[int, int]
    _uncertified_warned: set[int]
    _status_cache: tuple[int, bytes, bytes]
    _proposals_seen: dict[tuple[int, int, int], dict[bytes, bool]]
    _tx_inbox: collections.deque
    _tx_inbox_bytes: int
    _tx_inbox_peer: dict[int, int]
    _tx_recent: "collections.OrderedDict[bytes, None]"
    _tx_task: Optional[asyncio.Task]

    def _note_peer_height(self, peer: int, height: int, block_hash: bytes = b"", cert: bytes = b"") -> None:
        """A node that started with no data cannot know what it signed before the data was lost. It stays
        silent until f+1 distinct validators told it their height, each height above 0 proven by a commit
        certificate checked against the genesis keys (so at least one of them is honest, and none can claim a
        height the validators did not commit); then through the highest of those heights + 2, so it can never
        contradict a vote it cast before the wipe. One forged status ends nothing."""
        if self._quiet_through is None or self._quiet_through >= 0:
            return
        if height > 0:
            try:
                if len(block_hash) != 32:
                    raise ValueError("no tip block hash")
                verify_commit(CommitCertificate.decode(cert), self.chain_id, self.public_keys, block_hash, height,
                              self.verifier)
            except (LedgerError, ValueError) as exc:
                if peer not in self._uncertified_warned:
                    self._uncertified_warned.add(peer)
                    logger.warning("ignoring an uncertified status from validator %d (height %d): %s", peer,
                                   height, exc)
                return
        self._certified[peer] = max(height, self._certified.get(peer, 0))
        if len(self._certified) < self.genesis.f + 1:
            logger.info("started without data: heard validators %s, waiting for %d before signing anything",
                        sorted(self._certified), self.genesis.f + 1)
            return
        top = max(self._certified.values())
        self._quiet_through = top + 2 if top > 0 else None
        if self._quiet_through:
            logger.warning("started without data while the chain is at height %d: not signing anything "
                           "before height %d", top, self._quiet_through + 1)

    def _status_body(self) -> bytes:
        """STATUS: our height and round, with the tip's hash and certificate (proof of the height)."""
        h = self.store.height
        if h == 0:
            return sync.encode_status(0, self._round())
        if self._status_cache[0] != h:
            b = self.store.get_block(h)
            self._status_cache = (h, b.hash, b.cert)
        return sync.encode_status(h, self._round(), self._status_cache[1], self._status_cache[2])

    def _note_proposal(self, peer: int, p: Proposal, body: bytes) -> bool:
        """True when a proposal frame should reach consensus. Duplicates are dropped (one copy may pass again
        once its height is current: the first may have come too early to be kept); a peer that sends more
        than MAX_PROPOSALS_PER_ROUND different proposals for one (height, round), or proposals for more than
        MAX_PROPOSAL_ROUNDS_PER_PEER (height, round) pairs ahead of us, is flooding and is cut off."""
        stub, top = p.stub, self.store.height
        if stub.height <= top:
            return False
        key = (peer, stub.height, stub.round)
        seen = self._proposals_seen.get(key)
        if seen is None:
            if len(self._proposals_seen) >= 64:
                self._proposals_seen = {k: v for k, v in self._proposals_seen.items() if k[1] > top}
            if sum(1 for k in self._proposals_seen if k[0] == peer) >= MAX_PROPOSAL_ROUNDS_PER_PEER:
                self.p2p.cut_off(peer, f"proposals for more than {MAX_PROPOSAL_ROUNDS_PER_PEER} rounds ahead")
                return False
            seen = self._proposals_seen[key] = {}
        digest, current = crypto.sha256(body), stub.height == top + 1
        if digest in seen and (seen[digest] or not current):
            return False
        seen[digest] = current
        if len(seen) > MAX_PROPOSALS_PER_ROUND:
            self.p2p.cut_off(peer, f"{len(seen)} different proposals for height {stub.height} round {stub.round}")
            return False
        return True

    def _queue_gossip(self, peer: int, body: bytes) -> None:
        """Queue a gossiped transactions frame for admission, within the inbox's byte budgets."""
        digest = crypto.sha256(body)
        if digest in self._tx_recent:
            return  # a duplicate frame
        self._tx_recent[digest] = None
        if len(self._tx_recent) > TX_RECENT_FRAMES:
            self._tx_recent.popitem(last=False)
        if self._tx_inbox_peer[peer] + len(body) > TX_INBOX_PEER_BYTES:
            self.p2p.cut_off(peer, f"gossip inbox share over {TX_INBOX_PEER_BYTES} bytes")
            return
        if len(self._tx_inbox) >= TX_INBOX_MAX or self._tx_inbox_bytes + len(body) > TX_INBOX_BYTES:
            return  # beyond it, proposals still carry the txs
        self._tx_inbox.append((peer, digest, body))
        self._tx_inbox_bytes += len(body)
        self._tx_inbox_peer[peer] += len(body)
        if self._tx_task is None:
            self._tx_task = asyncio.get_running_loop().create_task(self._tx_worker())

    def _on_peer_fault(self, peer: int, reason: str) -> None:
        """Record a validator the p2p layer cut off (off the loop: the write fsyncs)."""
        def record() -> None:
            try:
                self.store.add_peer_fault(peer, reason, _now_ms())
            except StoreError as exc:
                logger.error("could not record the fault of validator %d: %s", peer, exc)

        if not self._closing:
            asyncio.get_running_loop().run_in_executor(self._io, record)
