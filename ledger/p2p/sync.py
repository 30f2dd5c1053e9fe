"""Block sync between validators: wire formats of status, sync request and sync response frames.

A node announces ``STATUS`` (its finalized height, current round, and the hash and commit certificate of its
tip block) to every peer on connect and every second; the certificate lets a node that lost its data check a
claimed height without trusting the peer (see ``LedgerNode._note_peer_height``). A node that sees a peer
ahead asks it with ``SYNC_REQ`` (first height, max count) and gets ``SYNC_RESP``: finalized blocks with their commit certificates, in height order, at most
:data:`MAX_SYNC_BYTES` per response. The receiver verifies every certificate against the genesis validator
set (in :mod:`ledger.consensus`, fed as ``CommitReceived``) before anything is stored, so a lying peer can
slow a node down but never make it store a block the validators did not commit.
"""

from __future__ import annotations

import struct

MAX_SYNC_BLOCKS = 64
MAX_SYNC_BYTES = 16 * 1024 * 1024


class SyncError(ValueError):
    """A malformed sync frame."""


MAX_STATUS_CERT = 64 * 1024


def encode_status(height: int, round_: int, block_hash: bytes = b"", cert: bytes = b"") -> bytes:
    """Status frame: height u64 | round u32, then (from height 1) tip block hash (32) | its certificate."""
    if block_hash and len(block_hash) != 32:
        raise SyncError("block hash must be 32 bytes")
    return struct.pack(">QI", height, round_) + block_hash + cert


def decode_status(body: bytes) -> tuple[int, int, bytes, bytes]:
    """(height, round, tip block hash or b"", certificate bytes or b"")."""
    if len(body) < 12 or len(body) > 12 + 32 + MAX_STATUS_CERT or 12 < len(body) < 44:
        raise SyncError("bad status frame")
    height, round_ = struct.unpack(">QI", body[:12])
    return height, round_, body[12:44], body[44:]


def encode_request(start: int, count: int) -> bytes:
    return struct.pack(">QH", start, count)


def decode_request(body: bytes) -> tuple[int, int]:
    if len(body) != 10:
        raise SyncError("bad sync request")
    start, count = struct.unpack(">QH", body)
    if start < 1:
        raise SyncError("sync request must start at height >= 1")
    return start, max(0, min(count, MAX_SYNC_BLOCKS))


def encode_response(items: list[tuple[bytes, bytes]]) -> bytes:
    parts = [struct.pack(">H", len(items))]
    for block, cert in items:
        parts.append(struct.pack(">II", len(block), len(cert)))
        parts.append(block)
        parts.append(cert)
    return b"".join(parts)


def decode_response(body: bytes) -> list[tuple[bytes, bytes]]:
    if len(body) < 2:
        raise SyncError("bad sync response")
    (n,) = struct.unpack(">H", body[:2])
    if n > MAX_SYNC_BLOCKS:
        raise SyncError("too many blocks in a sync response")
    pos, out = 2, []
    for _ in range(n):
        if pos + 8 > len(body):
            raise SyncError("truncated sync response")
        lb, lc = struct.unpack(">II", body[pos:pos + 8])
        pos += 8
        if pos + lb + lc > len(body):
            raise SyncError("truncated sync response")
        out.append((body[pos:pos + lb], body[pos + lb:pos + lb + lc]))
        pos += lb + lc
    if pos != len(body):
        raise SyncError("trailing bytes in sync response")
    return out


def encode_txs(raws: list[bytes]) -> bytes:
    parts = [struct.pack(">I", len(raws))]
    for r in raws:
        parts.append(struct.pack(">I", len(r)))
        parts.append(r)
    return b"".join(parts)


# Same shape as ledger/p2p/sync.py:decode_response: another frame (u32 count, one length per transaction).
def decode_txs(body: bytes, max_count: int = 100000) -> list[bytes]:
    if len(body) < 4:
        raise SyncError("bad txs frame")
    (n,) = struct.unpack(">I", body[:4])
    if n > max_count:
        raise SyncError("too many transactions in one frame")
    pos, out = 4, []
    for _ in range(n):
        if pos + 4 > len(body):
            raise SyncError("truncated txs frame")
        (ln,) = struct.unpack(">I", body[pos:pos + 4])
        pos += 4
        if pos + ln > len(body):
            raise SyncError("truncated txs frame")
        out.append(body[pos:pos + ln])
        pos += ln
    if pos != len(body):
        raise SyncError("trailing bytes in txs frame")
    return out
