"""The node's mempool: verified, deduplicated transactions waiting for a block, bounded in count and bytes.

Admission (signature, the kinds table of :mod:`ledger.registry.kinds`, registry state) happens in
:mod:`ledger.node.node`; this module only keeps the admitted transactions in arrival order and hands the oldest
ones to the block builder.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Optional

from ledger.types.block import Transaction


class MempoolFull(Exception):
    """No room for another transaction right now (clients should retry later)."""


@dataclass
class Entry:
    tx: Transaction
    raw: bytes
    added: float  # monotonic seconds, for latency accounting


class Mempool:
    """Admitted transactions by hash, oldest first."""

    def __init__(self, max_txs: int, max_bytes: int) -> None:
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self._txs: "OrderedDict[bytes, Entry]" = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._txs

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, tx_hash: bytes) -> Optional[Entry]:
        return self._txs.get(tx_hash)

    def add(self, tx_hash: bytes, tx: Transaction, raw: bytes, now: float) -> bool:
        """Add a verified transaction; False when already present. Raises :class:`MempoolFull`."""
        if tx_hash in self._txs:
            return False
        if len(self._txs) >= self.max_txs or self._bytes + len(raw) > self.max_bytes:
            raise MempoolFull(f"mempool full ({len(self._txs)} transactions); retry later")
        self._txs[tx_hash] = Entry(tx, raw, now)
        self._bytes += len(raw)
        return True

    def remove(self, hashes: Iterable[bytes]) -> int:
        n = 0
        for h in hashes:
            e = self._txs.pop(h, None)
            if e is not None:
                self._bytes -= len(e.raw)
                n += 1
        return n

    def take(self, max_txs: int, max_bytes: int) -> list[Transaction]:
        """The oldest transactions that fit the limits (they stay until their block is decided)."""
        out: list[Transaction] = []
        total = 0
        for e in self._txs.values():
            if len(out) >= max_txs or total + len(e.raw) + 4 > max_bytes:
                break
            out.append(e.tx)
            total += len(e.raw) + 4
        return out
