"""Ledger data types with a canonical binary encoding: transactions, block headers, blocks, proposals.

Also re-exports the signed consensus messages of :mod:`ledger.types.votes`, so callers import every ledger type
from here. Layouts are in docs/ledger-core.md. For every accepted byte string ``b``,
``T.decode(b).encode() == b``; anything truncated, oversized, non-canonical or with trailing bytes raises
:class:`~ledger.errors.DecodeError`. ``validate_basic()`` checks what needs no chain state and no signature.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from ledger.errors import DecodeError, ValidationError
from ledger.registry.kinds import TX_ANCHOR, TX_ERASE, TX_KIND_NAMES, TX_REGISTER, TX_UPDATE
from ledger.types import codec, crypto, merkle
from ledger.types.codec import (HASH_LEN, MAX_BLOCK_BYTES, MAX_BLOCK_EVIDENCE, MAX_BLOCK_TXS, MAX_PAYLOAD_BYTES,
                                MAX_TX_BYTES, Reader)
from ledger.types.votes import (EVIDENCE_DUPLICATE_PROPOSAL, EVIDENCE_DUPLICATE_VOTE, PRECOMMIT, PREVOTE,
                                CommitCertificate, CommitSig, Evidence, ProposalStub, Vote, proposer_index, quorum,
                                validator_set_hash, verify_commit, weak_quorum)

__all__ = ["TX_REGISTER", "TX_UPDATE", "TX_ERASE", "TX_ANCHOR", "TX_KIND_NAMES", "Transaction", "BlockHeader",
           "Block", "Proposal", "Message", "decode_message", "tx_hash",
           # re-exported from ledger.types.votes
           "PREVOTE", "PRECOMMIT", "EVIDENCE_DUPLICATE_VOTE", "EVIDENCE_DUPLICATE_PROPOSAL", "Vote", "ProposalStub",
           "CommitSig", "CommitCertificate", "Evidence", "quorum", "weak_quorum", "proposer_index",
           "validator_set_hash", "verify_commit"]

# The kind codes come from the one table of transaction kinds (which payload each carries, who may submit
# it): ledger.registry.kinds. Decoding refuses a code outside the table.

_TX_HEAD = struct.Struct(">BB32sQQI")          # tag, kind, sender, nonce, timestamp_ms, payload length
_HDR_FIXED = struct.Struct(">QIQ32s32sIH32s32s")  # height .. evidence_hash (after the chain id)
SIG = crypto.SIGNATURE_LEN


@dataclass(frozen=True)
class Transaction:
    """A signed ledger transaction; ``payload`` is opaque here (built by the privacy module).

    ``validate_basic`` checks only the kind code; whether the payload fits the kind and the sender's role is
    the kinds table's check (:func:`ledger.registry.kinds.check`), which needs the client registry.
    """

    kind: int
    sender: bytes
    nonce: int
    timestamp_ms: int
    payload: bytes
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        """The encoding without the trailing signature."""
        if not isinstance(self.sender, bytes) or len(self.sender) != 32:
            raise ValidationError("sender must be a 32-byte Ed25519 public key")
        try:
            return _TX_HEAD.pack(codec.TAG_TX, self.kind, self.sender, self.nonce, self.timestamp_ms,
                                 len(self.payload)) + self.payload
        except (struct.error, TypeError) as exc:
            raise ValidationError(f"cannot encode transaction: {exc}") from None

    def encode(self) -> bytes:
        # Cached in the instance dict (the dataclass is frozen, its fields never change): a transaction is
        # encoded for the Merkle root, the block, the proposal and its hash.
        enc = self.__dict__.get("_enc")
        if enc is None:
            if len(self.signature) != SIG:
                raise ValidationError("transaction signature must be 64 bytes")
            enc = self.__dict__["_enc"] = self.signing_bytes() + self.signature
        return enc

    @classmethod
    def decode(cls, data: bytes) -> "Transaction":
        codec.check_size(data, MAX_TX_BYTES, "transaction")
        data = bytes(data)
        if len(data) < _TX_HEAD.size + 1 + SIG:
            raise DecodeError(f"truncated transaction ({len(data)} bytes)")
        tag, kind, sender, nonce, ts, plen = _TX_HEAD.unpack_from(data)
        if tag != codec.TAG_TX:
            raise DecodeError(f"not a transaction (tag 0x{tag:02x})")
        if kind not in TX_KIND_NAMES:
            raise DecodeError(f"unknown transaction kind {kind}")
        if not 1 <= plen <= MAX_PAYLOAD_BYTES:
            raise DecodeError(f"payload length {plen} outside 1..{MAX_PAYLOAD_BYTES}")
        end = _TX_HEAD.size + plen
        if len(data) != end + SIG:
            raise DecodeError("transaction length does not match its payload length"
                              if len(data) > end + SIG else "truncated transaction")
        tx = cls(kind, sender, nonce, ts, data[_TX_HEAD.size:end], data[end:])
        tx.__dict__["_enc"] = data
        return tx

    def validate_basic(self) -> None:
        if self.kind not in TX_KIND_NAMES:
            raise ValidationError(f"unknown transaction kind {self.kind}")
        if not isinstance(self.sender, bytes) or len(self.sender) != 32:
            raise ValidationError("sender must be a 32-byte Ed25519 public key")
        if not 0 <= self.nonce <= codec.U64_MAX or not 0 <= self.timestamp_ms <= codec.U64_MAX:
            raise ValidationError("nonce and timestamp must be unsigned 64-bit integers")
        if not 1 <= len(self.payload) <= MAX_PAYLOAD_BYTES:
            raise ValidationError(f"payload must be 1..{MAX_PAYLOAD_BYTES} bytes")
        if len(self.signature) != SIG:
            raise ValidationError("transaction signature must be 64 bytes")

    def hash(self) -> bytes:
        """Transaction id: SHA-256 of the full canonical encoding (signature included)."""
        h = self.__dict__.get("_hash")
        if h is None:
            h = self.__dict__["_hash"] = crypto.sha256(self.encode())
        return h

    def signed(self, chain_id: str) -> bytes:
        return crypto.signing_bytes(crypto.DOMAIN_TX, self.signing_bytes(), chain_id)

    @classmethod
    def create(cls, key: crypto.PrivateKey, chain_id: str, kind: int, nonce: int, timestamp_ms: int,
               payload: bytes) -> "Transaction":
        unsigned = cls(kind, key.public_key().to_bytes(), nonce, timestamp_ms, bytes(payload))
        unsigned._validate_unsigned()
        return cls(kind, unsigned.sender, nonce, timestamp_ms, unsigned.payload,
                   key.sign_signed(unsigned.signed(chain_id)))

    def _validate_unsigned(self) -> None:
        Transaction(self.kind, self.sender, self.nonce, self.timestamp_ms, self.payload, b"\0" * SIG).validate_basic()

    def verify_signature(self, chain_id: str, verifier: Optional[crypto.Verifier] = None) -> bool:
        """True when the sender's key signed this transaction for ``chain_id``."""
        return (verifier or crypto.verify_raw)(self.sender, self.signed(chain_id), self.signature)


@dataclass(frozen=True)
class BlockHeader:
    """Block header; its SHA-256 is the block hash. ``round``/``proposer`` name who built the block."""

    chain_id: str
    height: int
    round: int
    timestamp_ms: int
    prev_hash: bytes
    tx_root: bytes
    num_txs: int
    proposer: int
    validators_hash: bytes
    evidence_hash: bytes

    def encode(self) -> bytes:
        try:
            cid = codec.chain_id_bytes(self.chain_id)
            for h in (self.prev_hash, self.tx_root, self.validators_hash, self.evidence_hash):
                if len(h) != HASH_LEN:
                    raise ValueError("hashes must be 32 bytes")
            return b"".join((codec.u8(codec.TAG_HEADER), codec.u8(len(cid)), cid, _HDR_FIXED.pack(
                self.height, self.round, self.timestamp_ms, self.prev_hash, self.tx_root, self.num_txs,
                self.proposer, self.validators_hash, self.evidence_hash)))
        except (struct.error, TypeError, ValueError, AttributeError) as exc:
            raise ValidationError(f"cannot encode block header: {exc}") from None

    # Same shape as ledger/types/votes.py:Vote.decode: each message has its own limit, tag and layout.
    @classmethod
    def decode(cls, data: bytes) -> "BlockHeader":
        return codec.decode_whole(data, 512, "block header", cls._read)

    @classmethod
    def _read(cls, r: Reader) -> "BlockHeader":
        r.tag(codec.TAG_HEADER, "block header")
        n = r.u8()
        if not 1 <= n <= codec.MAX_CHAIN_ID_BYTES:
            raise DecodeError(f"chain id length {n} outside 1..{codec.MAX_CHAIN_ID_BYTES}")
        raw = r.raw(n)
        try:
            chain_id = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("chain id is not UTF-8") from None
        fields = _HDR_FIXED.unpack(r.raw(_HDR_FIXED.size))
        if fields[0] < 1:
            raise DecodeError("block height must be >= 1")
        return cls(chain_id, *fields)

    def hash(self) -> bytes:
        h = self.__dict__.get("_hash")  # cached: the header is frozen
        if h is None:
            h = self.__dict__["_hash"] = crypto.sha256(self.encode())
        return h

    def validate_basic(self) -> None:
        self.encode()  # every field in range and every hash 32 bytes
        if self.height < 1:
            raise ValidationError("block height must be >= 1")
        if not self.chain_id.isprintable():
            raise ValidationError("chain id must be printable")
        if not 0 <= self.num_txs <= MAX_BLOCK_TXS:
            raise ValidationError(f"block has more than {MAX_BLOCK_TXS} transactions")
        if not 0 <= self.proposer < codec.MAX_VALIDATORS:
            raise ValidationError("proposer index out of range")


@dataclass(frozen=True)
class Block:
    """A header, its transactions and the evidence of misbehaviour it records."""

    header: BlockHeader
    txs: tuple[Transaction, ...] = ()
    evidence: tuple[Evidence, ...] = ()

    @property
    def height(self) -> int:
        return self.header.height

    def hash(self) -> bytes:
        return self.header.hash()

    def encode(self) -> bytes:
        if len(self.txs) > MAX_BLOCK_TXS or len(self.evidence) > MAX_BLOCK_EVIDENCE:
            raise ValidationError("block over the transaction or evidence count limit")
        parts = [codec.u8(codec.TAG_BLOCK), self.header.encode(), codec.u32(len(self.txs))]
        for tx in self.txs:
            parts.append(codec.blob(tx.encode()))
        parts.append(codec.u16(len(self.evidence)))
        for ev in self.evidence:
            parts.append(codec.blob(ev.encode()))
        out = b"".join(parts)
        if len(out) > MAX_BLOCK_BYTES:
            raise ValidationError(f"block of {len(out)} bytes exceeds {MAX_BLOCK_BYTES}")
        return out

    @classmethod
    def decode(cls, data: bytes) -> "Block":
        return codec.decode_whole(data, MAX_BLOCK_BYTES, "block", cls._read)

    @classmethod
    def _read(cls, r: Reader) -> "Block":
        r.tag(codec.TAG_BLOCK, "block")
        header = BlockHeader._read(r)
        n = r.u32()
        if n > MAX_BLOCK_TXS:
            raise DecodeError(f"block with {n} transactions (limit {MAX_BLOCK_TXS})")
        dec = Transaction.decode
        txs = tuple(dec(r.blob(MAX_TX_BYTES, what="transaction")) for _ in range(n))
        m = r.u16()
        if m > MAX_BLOCK_EVIDENCE:
            raise DecodeError(f"block with {m} evidence items (limit {MAX_BLOCK_EVIDENCE})")
        ev = tuple(Evidence.decode(r.blob(codec.MAX_EVIDENCE_BYTES, what="evidence")) for _ in range(m))
        return cls(header, txs, ev)

    def tx_root(self) -> bytes:
        return merkle.merkle_root([tx.encode() for tx in self.txs])

    def evidence_root(self) -> bytes:
        return merkle.merkle_root([e.encode() for e in self.evidence])

    def validate_basic(self) -> None:
        self.header.validate_basic()
        if self.header.num_txs != len(self.txs):
            raise ValidationError(f"header says {self.header.num_txs} txs, block has {len(self.txs)}")
        for tx in self.txs:
            tx.validate_basic()
        for ev in self.evidence:
            ev.validate_basic()
        if len(self.encode()) > MAX_BLOCK_BYTES:
            raise ValidationError("block too large")
        if self.tx_root() != self.header.tx_root:
            raise ValidationError("transaction Merkle root does not match the header")
        if self.evidence_root() != self.header.evidence_hash:
            raise ValidationError("evidence hash does not match the header")

    @classmethod
    def build(cls, chain_id: str, height: int, round_: int, timestamp_ms: int, prev_hash: bytes, proposer: int,
              validators_hash: bytes, txs: Sequence[Transaction] = (),
              evidence: Sequence[Evidence] = ()) -> "Block":
        txs, evidence = tuple(txs), tuple(evidence)
        header = BlockHeader(chain_id, height, round_, timestamp_ms, prev_hash,
                             merkle.merkle_root([tx.encode() for tx in txs]), len(txs), proposer,
                             validators_hash, merkle.merkle_root([e.encode() for e in evidence]))
        return cls(header, txs, evidence)


@dataclass(frozen=True)
class Proposal:
    """A signed proposal stub plus the proposed block (the signature covers the stub, i.e. the block hash)."""

    stub: ProposalStub
    block: Block

    # Same shape as ledger/types/block.py:Proposal.round and the forwarders below: one property per stub field.
    @property
    def height(self) -> int:
        return self.stub.height

    @property
    def round(self) -> int:
        return self.stub.round

    @property
    def pol_round(self) -> int:
        return self.stub.pol_round

    @property
    def proposer(self) -> int:
        return self.stub.proposer

    @property
    def block_hash(self) -> bytes:
        return self.stub.block_hash

    def encode(self) -> bytes:
        return b"".join((codec.u8(codec.TAG_PROPOSAL), self.stub.encode(), codec.blob(self.block.encode())))

    @classmethod
    def decode(cls, data: bytes) -> "Proposal":
        codec.check_size(data, MAX_BLOCK_BYTES + 256, "proposal")
        r = Reader(data)
        r.tag(codec.TAG_PROPOSAL, "proposal")
        stub = ProposalStub._read(r)
        block = Block.decode(r.blob(MAX_BLOCK_BYTES, what="block"))
        r.end()
        return cls(stub, block)

    def validate_basic(self) -> None:
        self.stub.validate_basic()
        self.block.validate_basic()
        if self.block.hash() != self.stub.block_hash:
            raise ValidationError("proposal signs another block hash")
        if self.block.height != self.stub.height or self.block.header.round > self.stub.round:
            raise ValidationError("proposed block height/round does not fit the proposal")

    @classmethod
    def create(cls, key: crypto.PrivateKey, chain_id: str, block: Block, round_: int, pol_round: int,
               proposer: int) -> "Proposal":
        return cls(ProposalStub.create(key, chain_id, block.height, round_, pol_round, block.hash(), proposer),
                   block)


Message = Union[Vote, Proposal]


def decode_message(data: bytes) -> Message:
    """Decode a consensus message (vote or proposal) by its tag."""
    if not data:
        raise DecodeError("empty message")
    tag = data[0]
    if tag == codec.TAG_VOTE:
        return Vote.decode(data)
    if tag == codec.TAG_PROPOSAL:
        return Proposal.decode(data)
    raise DecodeError(f"not a consensus message (tag 0x{tag:02x})")


def tx_hash(data: bytes) -> bytes:
    """Transaction id of canonical transaction bytes (SHA-256)."""
    return crypto.sha256(data)
