"""Block sync, the catching-up half of a ledger node: ask a peer that is ahead for blocks, serve such requests.

A mixin of :class:`ledger.node.node.LedgerNode` (it uses the node's store, p2p and event queue). Synced blocks are
not trusted: each goes through the consensus state machine as a ``CommitReceived``, which verifies its commit
certificate against the genesis validators before anything is stored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ledger.consensus.events import CommitReceived
from ledger.node.peers import PeerGuards
from ledger.p2p import sync, transport as p2p
from ledger.types.block import Block, CommitCertificate

logger = logging.getLogger(__name__)

SYNC_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SyncDone:
    """Queue marker after a batch of synced blocks: check it was applied, fetch more if peers are ahead."""

    peer: int
    upto: int


class BlockSync(PeerGuards):
    """Sync requests, responses and progress checks for a node (and, inherited, its peer guards)."""

    store: Any
    p2p: Any
    _peer_heights: dict[int, int]
    _sync_inflight: Optional[tuple[int, int, float]]  # (peer, start height, deadline)
    feed: Callable[[Any], None]  # the node's: queue an event for the state machine

    def _request_sync(self, height: int, prefer: Optional[int] = None) -> None:
        if self._sync_inflight is not None and time.monotonic() < self._sync_inflight[2]:
            return
        height = max(height, self.store.height + 1)
        peers = self.p2p.connected()
        if not peers:
            return
        if prefer is None or prefer not in peers:
            cands = [p for p in peers if self._peer_heights.get(p, 0) >= height] or peers
            prefer = max(cands, key=lambda p: self._peer_heights.get(p, 0))
        self._sync_inflight = (prefer, height, time.monotonic() + SYNC_TIMEOUT_S)
        self.p2p.send(prefer, p2p.T_SYNC_REQ, sync.encode_request(height, sync.MAX_SYNC_BLOCKS))

    def _sync_response(self, start: int, count: int) -> bytes:
        items, total = [], 0
        for b in self.store.get_blocks(start, start + count - 1):
            if items and total + len(b.block) + len(b.cert) > sync.MAX_SYNC_BYTES:
                break
            items.append((b.block, b.cert))
            total += len(b.block) + len(b.cert)
        return sync.encode_response(items)

    def _on_sync_response(self, peer: int, items: list[tuple[bytes, bytes]]) -> None:
        """Queue the blocks that extend our chain (consensus verifies each certificate), then check progress.
        Only the peer asked, while the request is open, may answer: unsolicited responses are dropped."""
        inflight = self._sync_inflight
        if inflight is None or inflight[0] != peer:
            logger.debug("dropping an unsolicited sync response from validator %d", peer)
            return
        self._sync_inflight = None
        expect = self.store.height + 1
        fed = 0
        for braw, craw in items:
            block = Block.decode(braw)
            h = block.header.height
            if h < expect:
                continue
            if h != expect:
                break
            self.feed(CommitReceived(block, CommitCertificate.decode(craw)))
            expect += 1
            fed += 1
        if fed:
            self.feed(SyncDone(peer, expect - 1))

    def _sync_done(self, ev: SyncDone) -> None:
        if self.store.height < ev.upto:
            logger.warning("sync: block %d from validator %d was not accepted", self.store.height + 1, ev.peer)
        elif self._peer_heights.get(ev.peer, 0) > self.store.height:
            self._request_sync(self.store.height + 1, prefer=ev.peer)
