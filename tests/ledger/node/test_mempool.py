"""The node's mempool: deduplicated, bounded in count and in bytes, oldest first, and a taken block's
transactions stay until their block is decided."""

from __future__ import annotations

import pytest

from ledger.node.mempool import Mempool, MempoolFull
from ledger.types import crypto
from ledger.types.block import TX_ANCHOR, Transaction, tx_hash

KEY = crypto.PrivateKey.from_seed(b"\x07" * 32)


def tx(n: int, size: int = 48) -> tuple[bytes, Transaction, bytes]:
    t = Transaction.create(KEY, "chain", TX_ANCHOR, n, 1_000 + n, bytes([n % 256]) * size)
    raw = t.encode()
    return tx_hash(raw), t, raw


def test_duplicates_are_refused_and_order_is_arrival_order() -> None:
    pool = Mempool(max_txs=10, max_bytes=1 << 20)
    entries = [tx(n) for n in (5, 1, 3)]
    for h, t, raw in entries:
        assert pool.add(h, t, raw, now=0.0)
    assert not pool.add(*entries[0], now=1.0)  # same hash: no second entry
    assert len(pool) == 3 and pool.size_bytes == sum(len(raw) for _, _, raw in entries)
    assert [t.nonce for t in pool.take(10, 1 << 20)] == [5, 1, 3]
    assert len(pool) == 3  # taken transactions stay until their block is decided


def test_count_and_byte_bounds_raise_mempool_full() -> None:
    pool = Mempool(max_txs=2, max_bytes=1 << 20)
    pool.add(*tx(1), now=0.0)
    pool.add(*tx(2), now=0.0)
    with pytest.raises(MempoolFull):
        pool.add(*tx(3), now=0.0)
    h, t, raw = tx(4, size=400)
    small = Mempool(max_txs=100, max_bytes=len(raw) + 10)
    small.add(h, t, raw, now=0.0)
    with pytest.raises(MempoolFull):
        small.add(*tx(5, size=400), now=0.0)


def test_remove_frees_room_and_take_respects_limits() -> None:
    pool = Mempool(max_txs=3, max_bytes=1 << 20)
    entries = [tx(n) for n in range(3)]
    for e in entries:
        pool.add(*e, now=0.0)
    assert pool.remove([entries[0][0], b"\0" * 32]) == 1  # an unknown hash is ignored
    assert entries[0][0] not in pool and pool.size_bytes == sum(len(e[2]) for e in entries[1:])
    pool.add(*tx(9), now=0.0)
    assert [t.nonce for t in pool.take(2, 1 << 20)] == [1, 2]
    one = len(entries[1][2]) + 4
    assert [t.nonce for t in pool.take(10, one)] == [1]  # bytes limit: length prefix counted
