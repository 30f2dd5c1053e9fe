"""Audit records and per-camera hash-chained audit blocks (pure, no I/O).

Every redacted frame yields one :class:`~schemas.messages.AuditRecord`: the SHA-256 of the raw and of the
redacted image, the masked regions as published, the watchlist height and the policy/model ids, and what was
done to each face (box, track id, source, identity class, risk group, suspect flag, mask mode and strength;
no template, no pseudonym, a keyed subject reference only for disclosed high-risk subjects) *sealed to the
auditor's X25519 key* (``sealed_faces``, bound to the frame by its camera/epoch/seq and image hashes). Without
an auditor key no per-face decision is recorded at all: nothing of it is ever written in clear.
A :class:`CameraChain` collects one camera's records and cuts an
:class:`~schemas.messages.AuditBlock` when ``max_records`` records are pending or when the capture times of
the arriving records span ``max_window_us`` (no timers: the flush is decided on each arriving record).

The block format itself (hashing, Merkle root, verification, the ledger anchor) is the auditor's as much as
the pipeline's: it lives in :mod:`ledger.audit.blocks` and is re-exported here for the pipeline's callers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ledger.audit.blocks import (BLOCK_DOMAIN, ZERO_HASH, AuditChainError, anchor_tx, block_hash, make_block,
                                 merkle_root, verify_block, verify_chain)
from ledger.client.privacy import auditor_key_id, decisions_aad, seal_for_auditor
from schemas.messages import AuditBlock, AuditRecord, FaceDecision, RedactedFrame, SealedFaces

logger = logging.getLogger(__name__)

__all__ = ["BLOCK_DOMAIN", "ZERO_HASH", "AuditChainError", "CameraChain", "ChainHead", "FlushRule", "anchor_tx", "block_hash",
           "make_block", "merkle_root", "padded", "record_from_redacted", "scrub_face", "seal_decisions",
           "verify_block", "verify_chain"]

DEFAULT_MAX_RECORDS = 250          # 10 s of a 25 fps camera
DEFAULT_MAX_WINDOW_US = 10_000_000
SEAL_BLOCK = 512  # sealed plaintexts are padded to a multiple of this: about 9 faces per step


def padded(faces: SealedFaces, block: int = SEAL_BLOCK) -> bytes:
    """The encoding of ``faces`` padded with zero bytes to a multiple of ``block`` (the sealed length then
    tells the number of faces, disclosed ones included, only in steps of about ``block / 55``)."""
    bare = len(faces.to_bytes())
    target = -(-(bare + 4) // block) * block
    for n in range(max(0, target - bare - 4), target - bare + 1):  # union index + varint length: 2-4 bytes
        data = SealedFaces(faces=faces.faces, padding=b"\0" * n).to_bytes()
        if len(data) == target:
            return data
    return SealedFaces(faces=faces.faces, padding=b"\0" * max(0, target - bare - 3)).to_bytes()


def seal_decisions(frame: RedactedFrame, decisions: Sequence[FaceDecision],
                   auditor_public_key: bytes) -> tuple[bytes, bytes]:
    """(auditor key id, sealed box) of a frame's per-face decisions, bound to that frame."""
    plain = padded(SealedFaces(faces=tuple(scrub_face(f) for f in decisions)))
    aad = decisions_aad(frame.camera_id, frame.epoch, frame.seq, frame.raw_sha256, frame.redacted_sha256)
    return auditor_key_id(auditor_public_key), seal_for_auditor(auditor_public_key, plain, aad)


def record_from_redacted(frame: RedactedFrame, decisions: Sequence[FaceDecision] = (),
                         auditor_public_key: Optional[bytes] = None) -> AuditRecord:
    """The audit record of one redacted frame; ``decisions`` are sealed to ``auditor_public_key`` (and left
    out entirely without one: never in clear)."""
    kid = sealed = None
    if auditor_public_key is not None:
        kid, sealed = seal_decisions(frame, decisions, auditor_public_key)
    return AuditRecord(
        camera_id=frame.camera_id, epoch=frame.epoch, seq=frame.seq, capture_ts_us=frame.capture_ts_us,
        raw_sha256=frame.raw_sha256, redacted_sha256=frame.redacted_sha256, policy_id=frame.policy_id,
        detector_id=frame.detector_id, masks=frame.masks, recognizer_id=frame.recognizer_id,
        watchlist_height=frame.watchlist_height, degraded=frame.degraded, auditor_key_id=kid,
        sealed_faces=sealed)


def scrub_face(face: FaceDecision) -> FaceDecision:
    """Defence in depth: a subject reference survives only on a disclosed (unmasked) matched face."""
    if face.subject_ref is not None and not (face.identity == "matched" and face.mode == "none"):
        return FaceDecision(**{**face.to_dict(), "subject_ref": None})
    return face


@dataclass(frozen=True)
class FlushRule:
    """Cut a block at ``max_records`` records or once the records span ``max_window_us`` of capture time."""

    max_records: int = DEFAULT_MAX_RECORDS
    max_window_us: int = DEFAULT_MAX_WINDOW_US

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_window_us < 0:
            raise AuditChainError("max_records must be >= 1 and max_window_us >= 0")


@dataclass
class ChainHead:
    """One camera's chain without its pending records: the next index, the last block hash, and the count and
    capture-time span of what is pending. Small and fixed-size, so a runner can store it on every frame while
    the records themselves are appended to a bag (pipelines.transforms.audit)."""

    camera_id: str
    rule: FlushRule = field(default_factory=FlushRule)
    next_index: int = 0
    prev_hash: bytes = ZERO_HASH
    pending: int = 0
    start_us: int = 0
    end_us: int = 0

    def admit(self, record: AuditRecord) -> bool:
        """Count ``record`` as pending; True when the pending records must now be sealed into a block."""
        if record.camera_id != self.camera_id:
            raise AuditChainError("record of another camera")
        ts = record.capture_ts_us
        self.start_us, self.end_us = (ts, ts) if not self.pending else (min(self.start_us, ts), max(self.end_us, ts))
        self.pending += 1
        return self.pending >= self.rule.max_records or self.end_us - self.start_us >= self.rule.max_window_us

    def seal(self, records: Sequence[AuditRecord]) -> AuditBlock:
        """The block of ``records`` (the pending ones, in arrival order); advances the chain."""
        if len(records) != self.pending or not records:
            raise AuditChainError(f"{len(records)} records to seal, {self.pending} pending")
        block = make_block(self.camera_id, self.next_index, self.prev_hash, list(records))
        self.next_index += 1
        self.prev_hash = block.block_hash
        self.pending = 0
        logger.debug("audit block %s #%d: %d records", self.camera_id, block.index, len(block.records))
        return block


@dataclass
class CameraChain:
    """One camera's chain state held in one object: a :class:`ChainHead` and the pending records."""

    camera_id: str
    rule: FlushRule = field(default_factory=FlushRule)
    next_index: int = 0
    prev_hash: bytes = ZERO_HASH
    pending: list[AuditRecord] = field(default_factory=list)

    _head: ChainHead = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._head = self.head()

    def head(self) -> ChainHead:
        """A fresh head derived from the fields (also how a chain saved in this form is carried over)."""
        head = ChainHead(self.camera_id, self.rule, self.next_index, self.prev_hash)
        for r in self.pending:
            head.admit(r)
        return head

    def add(self, record: AuditRecord) -> Optional[AuditBlock]:
        """Append a record; returns the block it completed, if any."""
        cut = self._head.admit(record)
        self.pending.append(record)
        return self.flush() if cut else None

    def flush(self) -> Optional[AuditBlock]:
        """Seal the pending records into a block (None when nothing is pending)."""
        if not self.pending:
            return None
        block = self._head.seal(self.pending)
        self.next_index, self.prev_hash, self.pending = self._head.next_index, self._head.prev_hash, []
        return block
