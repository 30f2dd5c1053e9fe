"""Signed consensus messages: votes, proposal stubs, commit certificates and equivocation evidence.

Layouts (big-endian, after a one-byte tag) are in docs/ledger-core.md. Every signature is Ed25519 over
:func:`ledger.types.crypto.signing_bytes` of the encoding without its trailing signature, under the domain of the
message type and the chain id, so a prevote can never be passed off as a precommit or a message of another
chain.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from ledger.errors import DecodeError, SignatureError, ValidationError
from ledger.types import codec, crypto
from ledger.types.codec import HASH_LEN, MAX_VALIDATORS, Reader

PREVOTE = 1
PRECOMMIT = 2
VOTE_TYPE_NAMES = {PREVOTE: "prevote", PRECOMMIT: "precommit"}

EVIDENCE_DUPLICATE_VOTE = 1
EVIDENCE_DUPLICATE_PROPOSAL = 2

SIG = crypto.SIGNATURE_LEN
VALIDATORS_DOMAIN = b"riskmask/ledger/validators/v1"


def quorum(n: int) -> int:
    """Votes that make a quorum: 2f + 1 for n = 3f + 1 (in general floor(2n/3) + 1)."""
    return (2 * n) // 3 + 1


def weak_quorum(n: int) -> int:
    """f + 1: more than a third, so at least one honest validator is among them."""
    return n // 3 + 1


def proposer_index(height: int, round_: int, n: int) -> int:
    """Round-robin proposer of (height, round)."""
    return (height + round_) % n


def validator_set_hash(public_keys: Sequence[bytes]) -> bytes:
    """SHA-256 binding the ordered validator set (goes into every block header)."""
    if not 1 <= len(public_keys) <= MAX_VALIDATORS or any(len(k) != 32 for k in public_keys):
        raise ValidationError("validator set must be 1..64 keys of 32 bytes")
    return crypto.sha256(VALIDATORS_DOMAIN + codec.u16(len(public_keys)) + b"".join(public_keys))


def _encode_guard(fn):
    """Encoding an out-of-range field is a ValidationError, not a struct.error."""
    def wrapper(self):
        try:
            return fn(self)
        except (struct.error, TypeError, OverflowError) as exc:
            raise ValidationError(f"cannot encode {type(self).__name__}: {exc}") from None
    wrapper.__doc__ = fn.__doc__
    return wrapper


# Same shape as ledger/registry/payloads.py:_check_len, pipelines/recognition/matching.py:MatchResult: own errors.
def _check_sig(sig: bytes, what: str) -> None:
    if not isinstance(sig, bytes) or len(sig) != SIG:
        raise ValidationError(f"{what} signature must be 64 bytes")


@dataclass(frozen=True)
class Vote:
    """A prevote or precommit for ``block_hash`` (None = nil) at (height, round) by validator ``validator``."""

    type: int
    height: int
    round: int
    block_hash: Optional[bytes]
    validator: int
    signature: bytes = b""

    @_encode_guard
    def signing_bytes(self) -> bytes:
        if self.type not in VOTE_TYPE_NAMES:
            raise ValidationError(f"unknown vote type {self.type}")
        bh = self.block_hash
        if bh is None:
            mid = b"\x00"
        elif len(bh) == HASH_LEN:
            mid = b"\x01" + bh
        else:
            raise ValidationError("block hash must be 32 bytes")
        return b"".join((codec.u8(codec.TAG_VOTE), codec.u8(self.type), codec.u64(self.height),
                         codec.u32(self.round), mid, codec.u16(self.validator)))

    def encode(self) -> bytes:
        _check_sig(self.signature, "vote")
        return self.signing_bytes() + self.signature

    # Same shape as ledger/types/block.py:BlockHeader.decode: each message has its own limit, tag and layout.
    @classmethod
    def decode(cls, data: bytes) -> "Vote":
        return codec.decode_whole(data, 256, "vote", cls._read)

    @classmethod
    def _read(cls, r: Reader) -> "Vote":
        r.tag(codec.TAG_VOTE, "vote")
        vtype = r.u8()
        if vtype not in VOTE_TYPE_NAMES:
            raise DecodeError(f"unknown vote type {vtype}")
        height, round_ = r.u64(), r.u32()
        bh = r.raw(HASH_LEN) if r.flag() else None
        validator = r.u16()
        return cls(vtype, height, round_, bh, validator, r.raw(SIG))

    @property
    def domain(self) -> bytes:
        return crypto.DOMAIN_PREVOTE if self.type == PREVOTE else crypto.DOMAIN_PRECOMMIT

    def validate_basic(self) -> None:
        if self.type not in VOTE_TYPE_NAMES:
            raise ValidationError(f"unknown vote type {self.type}")
        if not 1 <= self.height <= codec.U64_MAX or not 0 <= self.round <= codec.U32_MAX:
            raise ValidationError("vote height must be >= 1 and round >= 0")
        if self.block_hash is not None and len(self.block_hash) != HASH_LEN:
            raise ValidationError("block hash must be 32 bytes")
        if not 0 <= self.validator < MAX_VALIDATORS:
            raise ValidationError("validator index out of range")
        _check_sig(self.signature, "vote")

    def signed(self, chain_id: str) -> bytes:
        """The exact bytes the signature covers."""
        return crypto.signing_bytes(self.domain, self.signing_bytes(), chain_id)

    # Same shape as ledger/types/votes.py:ProposalStub.create/verify: other fields and another signing domain.
    @classmethod
    def create(cls, key: crypto.PrivateKey, chain_id: str, vtype: int, height: int, round_: int,
               block_hash: Optional[bytes], validator: int) -> "Vote":
        unsigned = cls(vtype, height, round_, block_hash, validator)
        return cls(vtype, height, round_, block_hash, validator, key.sign_signed(unsigned.signed(chain_id)))

    def verify(self, chain_id: str, public_key: bytes, verifier: Optional[crypto.Verifier] = None) -> bool:
        return (verifier or crypto.verify_raw)(public_key, self.signed(chain_id), self.signature)


@dataclass(frozen=True)
class ProposalStub:
    """The signed part of a proposal: (height, round, pol_round, block hash, proposer) and the signature."""

    height: int
    round: int
    pol_round: int
    block_hash: bytes
    proposer: int
    signature: bytes = b""

    @_encode_guard
    def signing_bytes(self) -> bytes:
        if len(self.block_hash) != HASH_LEN:
            raise ValidationError("block hash must be 32 bytes")
        # pol_round is stored as pol_round + 1 (u32): -1 (none) -> 0, any round below ``round`` fits.
        return b"".join((codec.u8(codec.TAG_PROPOSAL_STUB), codec.u64(self.height), codec.u32(self.round),
                         codec.u32(self.pol_round + 1), self.block_hash, codec.u16(self.proposer)))

    def encode(self) -> bytes:
        _check_sig(self.signature, "proposal")
        return self.signing_bytes() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> "ProposalStub":
        return codec.decode_whole(data, 256, "proposal stub", cls._read)

    @classmethod
    def _read(cls, r: Reader) -> "ProposalStub":
        r.tag(codec.TAG_PROPOSAL_STUB, "proposal stub")
        height, round_, pol = r.u64(), r.u32(), r.u32() - 1
        return cls(height, round_, pol, r.raw(HASH_LEN), r.u16(), r.raw(SIG))

    def validate_basic(self) -> None:
        if not 1 <= self.height <= codec.U64_MAX or not 0 <= self.round <= codec.U32_MAX:
            raise ValidationError("proposal height must be >= 1 and round >= 0")
        if not (self.pol_round == -1 or 0 <= self.pol_round < self.round):
            raise ValidationError(f"pol_round {self.pol_round} must be -1 or in 0..round-1")
        if len(self.block_hash) != HASH_LEN:
            raise ValidationError("block hash must be 32 bytes")
        if not 0 <= self.proposer < MAX_VALIDATORS:
            raise ValidationError("proposer index out of range")
        _check_sig(self.signature, "proposal")

    def signed(self, chain_id: str) -> bytes:
        return crypto.signing_bytes(crypto.DOMAIN_PROPOSAL, self.signing_bytes(), chain_id)

    @classmethod
    def create(cls, key: crypto.PrivateKey, chain_id: str, height: int, round_: int, pol_round: int,
               block_hash: bytes, proposer: int) -> "ProposalStub":
        unsigned = cls(height, round_, pol_round, block_hash, proposer)
        return cls(height, round_, pol_round, block_hash, proposer, key.sign_signed(unsigned.signed(chain_id)))

    def verify(self, chain_id: str, public_key: bytes, verifier: Optional[crypto.Verifier] = None) -> bool:
        return (verifier or crypto.verify_raw)(public_key, self.signed(chain_id), self.signature)


# Same shape as ledger/consensus/events.py:ChainTip: part of the certificate's wire format, not consensus state.
@dataclass(frozen=True)
class CommitSig:
    """One precommit signature inside a commit certificate."""

    validator: int
    round: int
    signature: bytes


@dataclass(frozen=True)
class CommitCertificate:
    """Precommit signatures of a quorum for ``block_hash`` at ``height``: the proof that a block is final."""

    height: int
    block_hash: bytes
    sigs: tuple[CommitSig, ...]

    @property
    def round(self) -> int:
        return self.sigs[0].round if self.sigs else -1

    @_encode_guard
    def encode(self) -> bytes:
        if len(self.block_hash) != HASH_LEN:
            raise ValidationError("block hash must be 32 bytes")
        parts = [codec.u8(codec.TAG_CERT), codec.u64(self.height), self.block_hash, codec.u16(len(self.sigs))]
        last = -1
        for s in self.sigs:
            if s.validator <= last:
                raise ValidationError("certificate validators must be strictly increasing")
            last = s.validator
            _check_sig(s.signature, "commit")
            parts += (codec.u16(s.validator), codec.u32(s.round), s.signature)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "CommitCertificate":
        codec.check_size(data, 64 + MAX_VALIDATORS * (6 + SIG), "commit certificate")
        r = Reader(data)
        r.tag(codec.TAG_CERT, "commit certificate")
        height, bh, count = r.u64(), r.raw(HASH_LEN), r.u16()
        if not 1 <= count <= MAX_VALIDATORS:
            raise DecodeError(f"certificate with {count} signatures")
        sigs, last = [], -1
        for _ in range(count):
            v = r.u16()
            if v <= last:
                raise DecodeError("certificate validators must be strictly increasing")
            last = v
            sigs.append(CommitSig(v, r.u32(), r.raw(SIG)))
        r.end()
        return cls(height, bh, tuple(sigs))

    def validate_basic(self) -> None:
        if self.height < 1 or len(self.block_hash) != HASH_LEN:
            raise ValidationError("certificate height must be >= 1 and block hash 32 bytes")
        if not 1 <= len(self.sigs) <= MAX_VALIDATORS:
            raise ValidationError("certificate needs 1..64 signatures")
        if len({s.round for s in self.sigs}) != 1:
            raise ValidationError("all certificate signatures must be from one round")
        if any(b.validator <= a.validator for a, b in zip(self.sigs, self.sigs[1:])):
            raise ValidationError("certificate validators must be strictly increasing")
        for s in self.sigs:
            _check_sig(s.signature, "commit")

    def votes(self) -> list[Vote]:
        """The precommits this certificate carries."""
        return [Vote(PRECOMMIT, self.height, s.round, self.block_hash, s.validator, s.signature)
                for s in self.sigs]

    @classmethod
    def from_votes(cls, votes: Iterable[Vote]) -> "CommitCertificate":
        vs = sorted(votes, key=lambda v: v.validator)
        if not vs:
            raise ValidationError("a certificate needs votes")
        h, bh = vs[0].height, vs[0].block_hash
        if any(v.type != PRECOMMIT or v.height != h or v.block_hash != bh or v.block_hash is None for v in vs):
            raise ValidationError("certificate votes must be precommits for one block at one height")
        return cls(h, bh, tuple(CommitSig(v.validator, v.round, v.signature) for v in vs))


def verify_commit(cert: CommitCertificate, chain_id: str, public_keys: Sequence[bytes],
                  block_hash: Optional[bytes] = None, height: Optional[int] = None,
                  verifier: Optional[crypto.Verifier] = None) -> None:
    """Raise unless ``cert`` carries valid precommits of a quorum of ``public_keys`` (for the given block)."""
    cert.validate_basic()
    if block_hash is not None and cert.block_hash != block_hash:
        raise ValidationError("certificate is for another block")
    if height is not None and cert.height != height:
        raise ValidationError(f"certificate is for height {cert.height}, expected {height}")
    n = len(public_keys)
    if len(cert.sigs) < quorum(n):
        raise ValidationError(f"certificate has {len(cert.sigs)} signatures, quorum is {quorum(n)}")
    for vote in cert.votes():
        if vote.validator >= n:
            raise ValidationError(f"certificate names unknown validator {vote.validator}")
        if not vote.verify(chain_id, public_keys[vote.validator], verifier):
            raise SignatureError(f"bad precommit signature of validator {vote.validator}")


Signed = Union[Vote, ProposalStub]


@dataclass(frozen=True)
class Evidence:
    """Two conflicting signed messages from one validator for the same (type, height, round)."""

    kind: int
    a: bytes
    b: bytes

    @classmethod
    def of(cls, x: Signed, y: Signed) -> "Evidence":
        kind = EVIDENCE_DUPLICATE_VOTE if isinstance(x, Vote) else EVIDENCE_DUPLICATE_PROPOSAL
        ex, ey = x.encode(), y.encode()
        a, b = (ex, ey) if ex < ey else (ey, ex)
        ev = cls(kind, a, b)
        ev.validate_basic()
        return ev

    def messages(self) -> tuple[Signed, Signed]:
        dec = Vote.decode if self.kind == EVIDENCE_DUPLICATE_VOTE else ProposalStub.decode
        return dec(self.a), dec(self.b)

    def encode(self) -> bytes:
        return b"".join((codec.u8(codec.TAG_EVIDENCE), codec.u8(self.kind), codec.blob(self.a), codec.blob(self.b)))

    @classmethod
    def decode(cls, data: bytes) -> "Evidence":
        return codec.decode_whole(data, codec.MAX_EVIDENCE_BYTES, "evidence", cls._read)

    @classmethod
    def _read(cls, r: Reader) -> "Evidence":
        r.tag(codec.TAG_EVIDENCE, "evidence")
        kind = r.u8()
        if kind not in (EVIDENCE_DUPLICATE_VOTE, EVIDENCE_DUPLICATE_PROPOSAL):
            raise DecodeError(f"unknown evidence kind {kind}")
        a, b = r.blob(256, what="evidence message"), r.blob(256, what="evidence message")
        if not a < b:
            raise DecodeError("evidence messages must be distinct and in byte order")
        ev = cls(kind, a, b)
        ev.messages()  # both must decode canonically
        return ev

    def validate_basic(self) -> None:
        if self.kind not in (EVIDENCE_DUPLICATE_VOTE, EVIDENCE_DUPLICATE_PROPOSAL):
            raise ValidationError(f"unknown evidence kind {self.kind}")
        if not self.a < self.b:
            raise ValidationError("evidence messages must be distinct and in byte order")
        try:
            x, y = self.messages()
        except DecodeError as exc:
            raise ValidationError(f"evidence message does not decode: {exc}") from None
        x.validate_basic()
        y.validate_basic()
        if isinstance(x, Vote):
            same = (x.type, x.height, x.round, x.validator) == (y.type, y.height, y.round, y.validator)
            differ = x.block_hash != y.block_hash
        else:
            same = (x.height, x.round, x.proposer) == (y.height, y.round, y.proposer)
            differ = (x.block_hash, x.pol_round) != (y.block_hash, y.pol_round)
        if not same or not differ:
            raise ValidationError("evidence messages do not conflict")

    @property
    def height(self) -> int:
        return self.messages()[0].height

    @property
    def validator(self) -> int:
        x = self.messages()[0]
        return x.validator if isinstance(x, Vote) else x.proposer

    def verify(self, chain_id: str, public_keys: Sequence[bytes],
               verifier: Optional[crypto.Verifier] = None) -> None:
        """Raise unless both messages are validly signed by the named validator."""
        self.validate_basic()
        v = self.validator
        if v >= len(public_keys):
            raise ValidationError(f"evidence names unknown validator {v}")
        for m in self.messages():
            if not m.verify(chain_id, public_keys[v], verifier):
                raise SignatureError(f"evidence message not signed by validator {v}")
