"""The audit block format: per-camera hash-chained blocks of audit records (pure, no I/O).

The pipeline writes these blocks (:mod:`pipelines.audit_chain` cuts them) and the offline auditor
(:mod:`ledger.audit.verifier`) checks them; both use the functions here, so the format is written once, on the ledger
side, and the auditor needs nothing of the pipeline.

Block layout (all integers big-endian):
- ``merkle_root`` = RFC 6962 tree hash (:mod:`ledger.types.merkle`) over the leaves ``AuditRecord.to_bytes()`` (the
  Avro single-object encoding, so the schema fingerprint is bound into each leaf), in arrival order;
- ``block_hash`` = SHA-256(``BLOCK_DOMAIN`` || u32 len(camera_id) || camera_id (UTF-8) || i64 index ||
  prev_hash (32) || i64 window_start_us || i64 window_end_us || u32 record count || merkle_root (32));
- ``prev_hash`` is the previous block's ``block_hash`` for the same camera, 32 zero bytes for index 0.

A block is anchored on the ledger by an :class:`~ledger.registry.payloads.AnchorTx` (:func:`anchor_tx`).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Optional, Sequence

from ledger.registry.payloads import AnchorTx
from ledger.types import merkle
from schemas.messages import AuditBlock, AuditRecord

BLOCK_DOMAIN = b"riskmask.audit.block.v1\x00"
ZERO_HASH = b"\x00" * 32


class AuditChainError(ValueError):
    """A record for the wrong camera, a bad flush rule, or a block that does not verify."""


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash of ``leaves`` (the ledger's implementation, one for the whole project)."""
    return merkle.merkle_root(list(leaves))


def audit_block_hash(block: AuditBlock) -> bytes:
    """The hash ``block`` must carry, from its own header fields and record count."""
    return block_hash(block.camera_id, block.index, block.prev_hash, block.window_start_us, block.window_end_us,
                      len(block.records), block.merkle_root)


def block_hash(camera_id: str, index: int, prev_hash: bytes, window_start_us: int, window_end_us: int,
               record_count: int, root: bytes) -> bytes:
    """SHA-256 over the block header fields (layout in the module docstring)."""
    cam = camera_id.encode("utf-8")
    if len(prev_hash) != 32 or len(root) != 32:
        raise AuditChainError("prev_hash and merkle_root must be 32 bytes")
    header = b"".join((BLOCK_DOMAIN, struct.pack(">I", len(cam)), cam,
                       struct.pack(">q", index), prev_hash,
                       struct.pack(">qqI", window_start_us, window_end_us, record_count), root))
    return hashlib.sha256(header).digest()


def make_block(camera_id: str, index: int, prev_hash: bytes, records: Sequence[AuditRecord]) -> AuditBlock:
    """Seal ``records`` (non-empty, all of ``camera_id``) into the block at ``index`` after ``prev_hash``."""
    if not records:
        raise AuditChainError("an audit block needs at least one record")
    for r in records:
        if r.camera_id != camera_id:
            raise AuditChainError("record of another camera in this camera's block")
    start = min(r.capture_ts_us for r in records)
    end = max(r.capture_ts_us for r in records)
    root = merkle_root([r.to_bytes() for r in records])
    digest = block_hash(camera_id, index, prev_hash, start, end, len(records), root)
    return AuditBlock(camera_id=camera_id, index=index, prev_hash=prev_hash, window_start_us=start,
                      window_end_us=end, merkle_root=root, block_hash=digest, records=tuple(records))


def verify_block(block: AuditBlock, prev: Optional[AuditBlock] = None) -> None:
    """Recompute root and hash; with ``prev``, check the chain link. Raises :class:`AuditChainError`."""
    if not block.records:
        raise AuditChainError("block has no records")
    expected = make_block(block.camera_id, block.index, block.prev_hash, block.records)
    if expected.merkle_root != block.merkle_root:
        raise AuditChainError(f"block {block.index}: merkle root does not match its records")
    if (expected.window_start_us, expected.window_end_us) != (block.window_start_us, block.window_end_us):
        raise AuditChainError(f"block {block.index}: window does not match its records")
    if expected.block_hash != block.block_hash:
        raise AuditChainError(f"block {block.index}: block hash does not match its header")
    if block.index == 0 and block.prev_hash != ZERO_HASH:
        raise AuditChainError("first block must have a zero prev_hash")
    if prev is not None:
        if prev.camera_id != block.camera_id or prev.index + 1 != block.index:
            raise AuditChainError(f"block {block.index} does not follow block {prev.index}")
        if block.prev_hash != prev.block_hash:
            raise AuditChainError(f"block {block.index}: prev_hash is not the hash of block {prev.index}")


def verify_chain(blocks: Sequence[AuditBlock]) -> None:
    """Verify consecutive blocks of one camera (the first may start anywhere in the chain)."""
    prev: Optional[AuditBlock] = None
    for b in blocks:
        verify_block(b, prev)
        prev = b


def anchor_tx(block: AuditBlock) -> AnchorTx:
    """The ledger anchor transaction (``ledger.registry.payloads.AnchorTx``) for an audit block."""
    return AnchorTx(camera_id=block.camera_id, window_start_us=block.window_start_us,
                    window_end_us=block.window_end_us, record_count=len(block.records),
                    merkle_root=block.merkle_root, audit_index=block.index, audit_block_hash=block.block_hash)
