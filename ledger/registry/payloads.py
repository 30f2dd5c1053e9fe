"""Canonical binary payloads of the risk registry: subject transactions and audit anchors.

These are the bytes that go into a ledger transaction's payload. The encoding is fixed-layout and
versioned (magic ``RMTX``, format version, op code, then the op's fields in a fixed order, every variable
field length-prefixed), so decode -> encode is byte-identical and any two clients produce the same bytes for
the same content. Decoding is strict: unknown versions or ops, out-of-range values, over-long fields and
trailing bytes are refused with :class:`PayloadError`. Reading and writing use the ledger's one binary codec
(:mod:`ledger.types.codec`). Which transaction kind carries which operation, and who may submit it, is the kinds
table of :mod:`ledger.registry.kinds`.

No field ever carries a raw identifier or a face template: subject transactions carry only the keyed
pseudonym, the record version, the AES-GCM nonce and ciphertext, the id of the key-encryption key and a
commitment to the wrapped data key (the wrapped key itself lives in the nodes' deletable key store).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ledger.errors import DecodeError
from ledger.types import codec

MAGIC = b"RMTX"
FORMAT_VERSION = 1

OP_REGISTER = 1
OP_UPDATE = 2
OP_ERASE = 3
OP_ANCHOR = 4
OP_NAMES = {OP_REGISTER: "register", OP_UPDATE: "update", OP_ERASE: "erase", OP_ANCHOR: "anchor"}


PSEUDONYM_LEN = 32
KEY_ID_LEN = 8
NONCE_LEN = 12
DIGEST_LEN = 32
MAX_CIPHERTEXT = 64 * 1024  # 16 templates of 512 bytes plus attributes fit easily
MAX_CAMERA_ID = 128
MAX_STR = 4096


class PayloadError(DecodeError):
    """A payload that is malformed, non-canonical or out of range (a :class:`~ledger.errors.DecodeError`)."""


class Writer(codec.Writer):
    """The ledger codec's writer (kept under this name for the privacy module's records)."""


class Reader(codec.Reader):
    """The ledger codec's strict reader, raising :class:`PayloadError`; ``text`` defaults to MAX_STR."""

    __slots__ = ()

    def __init__(self, data: bytes) -> None:
        super().__init__(data, PayloadError)

    def text(self, max_len: int = MAX_STR, what: str = "text field") -> str:
        return super().text(max_len, what)


# Same shape as ledger/types/votes.py:_check_sig, pipelines/recognition/matching.py:MatchResult: own errors.
def _check_len(name: str, value: bytes, n: int) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != n:
        raise PayloadError(f"{name} must be {n} bytes")


@dataclass(frozen=True)
class SubjectTx:
    """Register or update of one subject's encrypted record (op is OP_REGISTER or OP_UPDATE)."""

    op: int
    pseudonym: bytes
    pkey_id: bytes
    version: int
    nonce: bytes
    ciphertext: bytes
    kek_id: bytes
    key_commitment: bytes

    def validate(self) -> None:
        if self.op not in (OP_REGISTER, OP_UPDATE):
            raise PayloadError("subject op must be register or update")
        _check_len("pseudonym", self.pseudonym, PSEUDONYM_LEN)
        _check_len("pkey_id", self.pkey_id, KEY_ID_LEN)
        _check_len("nonce", self.nonce, NONCE_LEN)
        _check_len("kek_id", self.kek_id, KEY_ID_LEN)
        _check_len("key_commitment", self.key_commitment, DIGEST_LEN)
        if self.op == OP_REGISTER and self.version != 1:
            raise PayloadError("a registration starts at version 1")
        if not 1 <= self.version < 2**63:
            raise PayloadError("version out of range")
        if not 16 < len(self.ciphertext) <= MAX_CIPHERTEXT:
            raise PayloadError("ciphertext size out of range")


@dataclass(frozen=True)
class EraseTx:
    """Erasure of a subject: nodes delete its wrapped data key when this commits."""

    pseudonym: bytes
    version: int
    op: int = OP_ERASE

    def validate(self) -> None:
        _check_len("pseudonym", self.pseudonym, PSEUDONYM_LEN)
        if not 2 <= self.version < 2**63:
            raise PayloadError("erase version must follow an existing record version")


@dataclass(frozen=True)
class AnchorTx:
    """Audit anchor: the Merkle root of one camera's audit block over a time window."""

    camera_id: str
    window_start_us: int
    window_end_us: int
    record_count: int
    merkle_root: bytes
    audit_index: int = -1
    audit_block_hash: bytes = b"\x00" * DIGEST_LEN
    op: int = OP_ANCHOR

    def validate(self) -> None:
        if not self.camera_id or len(self.camera_id.encode("utf-8")) > MAX_CAMERA_ID:
            raise PayloadError("camera_id must be 1..128 bytes")
        if not 0 <= self.window_start_us <= self.window_end_us < 2**63:
            raise PayloadError("anchor window must satisfy 0 <= start <= end")
        if not 0 <= self.record_count < 2**32:
            raise PayloadError("record_count out of range")
        if not -1 <= self.audit_index < 2**63:
            raise PayloadError("audit_index out of range")
        _check_len("merkle_root", self.merkle_root, DIGEST_LEN)
        _check_len("audit_block_hash", self.audit_block_hash, DIGEST_LEN)


RegistryTx = Union[SubjectTx, EraseTx, AnchorTx]


def encode(tx: RegistryTx) -> bytes:
    """Canonical bytes of a registry transaction payload (validated first)."""
    tx.validate()
    w = Writer().raw(MAGIC).u8(FORMAT_VERSION).u8(tx.op)
    if isinstance(tx, SubjectTx):
        (w.raw(tx.pseudonym).raw(tx.pkey_id).u64(tx.version).raw(tx.nonce).blob(tx.ciphertext)
         .raw(tx.kek_id).raw(tx.key_commitment))
    elif isinstance(tx, EraseTx):
        w.raw(tx.pseudonym).u64(tx.version)
    elif isinstance(tx, AnchorTx):
        (w.text(tx.camera_id).i64(tx.window_start_us).i64(tx.window_end_us).u32(tx.record_count)
         .raw(tx.merkle_root).i64(tx.audit_index).raw(tx.audit_block_hash))
    else:  # pragma: no cover - typing guards this
        raise PayloadError(f"unknown payload type {type(tx).__name__}")
    return w.getvalue()


def decode(data: bytes) -> RegistryTx:
    """Parse and validate a registry payload; refuses anything non-canonical."""
    r = Reader(data)
    if r.raw(4) != MAGIC:
        raise PayloadError("not a registry payload (bad magic)")
    version = r.u8()
    if version != FORMAT_VERSION:
        raise PayloadError(f"unsupported payload format version {version}")
    op = r.u8()
    tx: RegistryTx
    if op in (OP_REGISTER, OP_UPDATE):
        tx = SubjectTx(op=op, pseudonym=r.raw(PSEUDONYM_LEN), pkey_id=r.raw(KEY_ID_LEN), version=r.u64(),
                       nonce=r.raw(NONCE_LEN), ciphertext=r.blob(MAX_CIPHERTEXT), kek_id=r.raw(KEY_ID_LEN),
                       key_commitment=r.raw(DIGEST_LEN))
    elif op == OP_ERASE:
        tx = EraseTx(pseudonym=r.raw(PSEUDONYM_LEN), version=r.u64())
    elif op == OP_ANCHOR:
        tx = AnchorTx(camera_id=r.text(MAX_CAMERA_ID), window_start_us=r.i64(), window_end_us=r.i64(),
                      record_count=r.u32(), merkle_root=r.raw(DIGEST_LEN), audit_index=r.i64(),
                      audit_block_hash=r.raw(DIGEST_LEN))
    else:
        raise PayloadError(f"unknown registry op {op}")
    r.end()
    tx.validate()
    return tx


def is_registry_payload(payload: bytes) -> bool:
    """True when ``payload`` claims to be a registry payload (starts with the magic); it must then decode."""
    return payload[:4] == MAGIC


def op_name(tx: RegistryTx) -> str:
    """The transaction kind string used on the ledger (register, update, erase, anchor)."""
    return OP_NAMES[tx.op]


__all__ = ["MAGIC", "FORMAT_VERSION", "OP_REGISTER", "OP_UPDATE", "OP_ERASE", "OP_ANCHOR", "OP_NAMES",
           "PSEUDONYM_LEN", "KEY_ID_LEN", "NONCE_LEN", "DIGEST_LEN", "MAX_CIPHERTEXT", "MAX_CAMERA_ID", "MAX_STR",
           "PayloadError", "Writer", "Reader", "SubjectTx", "EraseTx", "AnchorTx", "RegistryTx", "encode", "decode",
           "op_name", "is_registry_payload"]
