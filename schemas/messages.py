"""Typed, frozen message dataclasses mirroring schemas/*.avsc.

The .avsc files are the source of truth; ``tests/schemas/test_messages.py`` checks that every dataclass has exactly
the fields of its schema, so the two cannot drift. Use ``to_bytes``/``from_bytes`` to go through the
single-object Avro framing in :mod:`schemas.serde`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Type, TypeVar

from schemas import serde

T = TypeVar("T", bound="Message")


@dataclass(frozen=True)
class Message:
    """Base class: the Avro schema name plus dict/bytes conversion."""

    SCHEMA: ClassVar[str] = ""
    NESTED: ClassVar[dict[str, Type["Message"]]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, Message) else v for v in value]
            elif isinstance(value, Message):
                value = value.to_dict()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: Type[T], data: dict[str, Any]) -> T:
        kwargs: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for name in names:
            if name not in data:
                continue
            value = data[name]
            nested = cls.NESTED.get(name)
            if nested is not None and isinstance(value, list):
                value = tuple(nested.from_dict(v) for v in value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    def to_bytes(self) -> bytes:
        return serde.encode(self.SCHEMA, self.to_dict())

    @classmethod
    def from_bytes(cls: Type[T], data: bytes) -> T:
        return cls.from_dict(serde.decode(cls.SCHEMA, data))


@dataclass(frozen=True)
class CameraFrame(Message):
    SCHEMA: ClassVar[str] = "riskmask.v1.CameraFrame"
    # Same shape as pipelines/frame.py:FrameContext: wire record vs decoded frame; schemas imports no pipelines.
    camera_id: str
    epoch: int
    seq: int
    capture_ts_us: int
    width: int
    height: int
    image: bytes
    encoding: str = "jpeg"
    image_key_id: Optional[bytes] = None


@dataclass(frozen=True)
class MaskRegion(Message):
    """A masked area as a viewer draws it; no identity class, risk group, suspect flag or track id."""

    SCHEMA: ClassVar[str] = "riskmask.v1.MaskRegion"
    x: int
    y: int
    w: int
    h: int
    mode: str
    shape: str = "box"


@dataclass(frozen=True)
class FaceDecision(Message):
    SCHEMA: ClassVar[str] = "riskmask.v1.FaceDecision"
    x: int
    y: int
    w: int
    h: int
    score: float
    risk_group: int
    mode: str
    strength: float
    track_id: Optional[int] = None
    source: str = "detected"
    identity: str = "unknown"
    suspect: bool = False
    shape: str = "box"
    mask_scale: float = 1.0
    subject_ref: Optional[str] = None


@dataclass(frozen=True)
class SealedFaces(Message):
    """Plaintext of ``AuditRecord.sealed_faces``: only ever stored encrypted to the auditor key."""

    SCHEMA: ClassVar[str] = "riskmask.v1.SealedFaces"
    NESTED: ClassVar[dict[str, Type[Message]]] = {"faces": FaceDecision}
    faces: tuple[FaceDecision, ...] = ()
    padding: Optional[bytes] = None


@dataclass(frozen=True)
class RedactedFrame(Message):
    SCHEMA: ClassVar[str] = "riskmask.v1.RedactedFrame"
    NESTED: ClassVar[dict[str, Type[Message]]] = {"masks": MaskRegion}
    camera_id: str
    epoch: int
    seq: int
    capture_ts_us: int
    processed_ts_us: int
    width: int
    height: int
    image: bytes
    raw_sha256: bytes
    redacted_sha256: bytes
    policy_id: str
    detector_id: str
    masks: tuple[MaskRegion, ...] = ()
    encoding: str = "jpeg"
    recognizer_id: str = ""
    watchlist_height: int = -1
    degraded: bool = False
    degraded_reason: Optional[str] = None
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1


@dataclass(frozen=True)
class AuditRecord(Message):
    """One frame's audit record. A record read from an earlier schema version keeps the bytes it was written
    with: ``to_bytes`` returns them, because they are a Merkle leaf of an already anchored block (a record
    built or changed here encodes with the current schema)."""

    SCHEMA: ClassVar[str] = "riskmask.v1.AuditRecord"
    NESTED: ClassVar[dict[str, Type[Message]]] = {"masks": MaskRegion}
    camera_id: str
    epoch: int
    seq: int
    capture_ts_us: int
    raw_sha256: bytes
    redacted_sha256: bytes
    policy_id: str
    detector_id: str
    masks: tuple[MaskRegion, ...] = ()
    recognizer_id: str = ""
    watchlist_height: int = -1
    degraded: bool = False
    auditor_key_id: Optional[bytes] = None
    sealed_faces: Optional[bytes] = None

    def to_bytes(self) -> bytes:
        wire = self.__dict__.get("_wire")
        return wire if wire is not None else super().to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "AuditRecord":
        record = super().from_bytes(data)
        if serde.peek_fingerprint(bytes(data)) != serde.fingerprint(cls.SCHEMA):
            object.__setattr__(record, "_wire", bytes(data))  # written by an earlier version: keep its leaf
        return record


@dataclass(frozen=True)
class AuditBlock(Message):
    SCHEMA: ClassVar[str] = "riskmask.v1.AuditBlock"
    NESTED: ClassVar[dict[str, Type[Message]]] = {"records": AuditRecord}
    camera_id: str
    index: int
    prev_hash: bytes
    window_start_us: int
    window_end_us: int
    merkle_root: bytes
    block_hash: bytes
    records: tuple[AuditRecord, ...] = ()
    anchor_tx_hash: Optional[bytes] = None

    @classmethod
    def from_bytes(cls, data: bytes) -> "AuditBlock":
        """Decode; for a block written by an earlier schema version, each record keeps the exact encoding it
        was written with (its Merkle leaf), so blocks anchored before an upgrade still verify after it."""
        block = super().from_bytes(data)
        if serde.peek_fingerprint(bytes(data)) != serde.fingerprint(cls.SCHEMA):
            raw, writer = serde.decode_as_written(cls.SCHEMA, data)
            (records_field,) = [f for f in writer["fields"] if f["name"] == "records"]
            items = records_field["type"]["items"]
            for record, datum in zip(block.records, raw["records"]):
                object.__setattr__(record, "_wire", serde.encode_with_schema(items, datum))
        return block


# Same shape as schemas/messages.py:CommitSig, LedgerBlock and the other messages: each mirrors its own .avsc record.
@dataclass(frozen=True)
class LedgerTx(Message):
    SCHEMA: ClassVar[str] = ""  # nested only
    kind: str
    tx_hash: bytes
    body: bytes


@dataclass(frozen=True)
class CommitSig(Message):
    SCHEMA: ClassVar[str] = ""  # nested only
    validator_index: int
    round: int
    signature: bytes


@dataclass(frozen=True)
class LedgerBlock(Message):
    SCHEMA: ClassVar[str] = "riskmask.v1.LedgerBlock"
    NESTED: ClassVar[dict[str, Type[Message]]] = {"txs": LedgerTx, "commit": CommitSig}
    chain_id: str
    height: int
    block_hash: bytes
    header: bytes
    txs: tuple[LedgerTx, ...] = ()
    commit: tuple[CommitSig, ...] = ()
    evidence: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class DeadLetter(Message):
    SCHEMA: ClassVar[str] = "riskmask.v1.DeadLetter"
    source_topic: str
    source_partition: int
    source_offset: int
    stage: str
    reason: str
    payload_sha256: bytes
    payload_size: int
    ts_us: int
    camera_id: Optional[str] = None
    epoch: Optional[int] = None
    seq: Optional[int] = None
    detail: str = ""


TOP_LEVEL: tuple[Type[Message], ...] = (CameraFrame, RedactedFrame, AuditRecord, AuditBlock, LedgerBlock,
                                        DeadLetter, FaceDecision, MaskRegion, SealedFaces)
