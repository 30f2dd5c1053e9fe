"""Privacy information de-identification module (runs on the client: manager CLI and pipeline).

A raw identity never leaves this module in clear:

* :func:`canonical_identity` brings identity fields to one canonical form (Unicode NFKC, case folding,
  control/format characters removed, whitespace collapsed, dates to ISO ``YYYY-MM-DD``), so that the same
  person typed differently yields the same bytes;
* :func:`pseudonym` is HMAC-SHA256(pseudonymisation key, canonical identifiers): deterministic for a key,
  useless without it (a plain hash of a name and birth date could be brute-forced);
* :func:`seal_record` encrypts the subject payload (risk, suspect flag, face templates, attributes) with
  AES-256-GCM under a fresh random data key; the additional data binds chain id, pseudonym and record
  version, so a ciphertext cannot be replayed under another subject, chain or version;
* the data key is wrapped (AES-256-GCM, additional data = chain id + pseudonym) by a key-encryption key (KEK)
  that no ledger node holds. Only the wrapped key goes to the nodes' deletable key store; deleting it
  (erasure) makes the ciphertext on the immutable chain unopenable even for a KEK holder (crypto-shredding).
"""

from __future__ import annotations

import calendar
import datetime as _dt
import hashlib
import hmac
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.registry.payloads import KEY_ID_LEN, NONCE_LEN, PayloadError, Reader, Writer

TEMPLATE_DIM = 128
MAX_TEMPLATES = 16
MAX_ATTRIBUTES = 32
MAX_ATTR_VALUE = 1024
RECORD_MAGIC = b"RMSR"
RECORD_VERSION = 1
WRAP_VERSION = 1
WRAPPED_KEY_LEN = 1 + KEY_ID_LEN + NONCE_LEN + 32 + 16
_ATTR_KEY = re.compile(r"^[a-z0-9_.-]{1,64}$")
_PSEUDONYM_DOMAIN = b"riskmask-pseudonym/v1"
_RECORD_AAD_DOMAIN = b"riskmask-record/v1"
_WRAP_AAD_DOMAIN = b"riskmask-dek-wrap/v1"
_COMMIT_DOMAIN = b"riskmask-wrapped-key/v1"


class PrivacyError(ValueError):
    """Base error of the privacy module."""


class InvalidIdentity(PrivacyError):
    """Identity fields that are missing, empty or cannot be normalised (e.g. an impossible date)."""


class InvalidRecord(PrivacyError):
    """A subject payload outside its limits (risk not 0..100, bad template, bad attribute)."""


class DecryptionError(PrivacyError):
    """Authentication failed: wrong key, tampered ciphertext, or additional data of another subject."""


class KeyErased(PrivacyError):
    """The subject's wrapped data key was deleted (erased): its ciphertext can no longer be opened."""


# --------------------------------------------------------------------------------------------------------
# Canonical identity


def canonical_text(value: str) -> str:
    """NFKC, case-folded, control/format characters removed, runs of whitespace collapsed to one space."""
    if not isinstance(value, str):
        raise InvalidIdentity("identity fields must be text")
    s = unicodedata.normalize("NFKC", value)
    s = s.casefold()
    s = unicodedata.normalize("NFKC", s)  # case folding can denormalise (e.g. U+0130)
    s = "".join(ch for ch in s if unicodedata.category(ch) not in ("Cc", "Cf") or ch.isspace())
    return " ".join(s.split())


def canonical_id_number(value: str) -> str:
    """A document number: canonical text without spaces, hyphens, dots or slashes (separators vary)."""
    return re.sub(r"[\s\-./]", "", canonical_text(value))


_MONTHS = {name.casefold(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.casefold(): i for i, name in enumerate(calendar.month_abbr) if name})
_MONTHS["sept"] = 9


def canonical_date(value: str, today: Optional[_dt.date] = None) -> str:
    """Normalise a birth date to ISO ``YYYY-MM-DD``.

    Accepted: ``1980-03-12``, ``1980/03/12``, ``1980.03.12``, ``19800312``, ``12.03.1980`` and ``12-03-1980``
    (day first, the European convention), ``12 March 1980``, ``March 12, 1980``, ``12 mar 1980`` and the
    slash forms ``DD/MM/YYYY`` / ``MM/DD/YYYY`` only when unambiguous (one part above 12 or both equal).
    Anything else, an impossible day, a year before 1900 or a date in the future is refused, never guessed.
    """
    s = canonical_text(value)
    if not s:
        raise InvalidIdentity("birth date is empty")
    y = m = d = None
    if mt := re.fullmatch(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})", s):
        y, m, d = (int(g) for g in mt.groups())
    elif mt := re.fullmatch(r"(\d{4})(\d{2})(\d{2})", s):
        y, m, d = (int(g) for g in mt.groups())
    elif mt := re.fullmatch(r"(\d{1,2})[.-](\d{1,2})[.-](\d{4})", s):
        d, m, y = (int(g) for g in mt.groups())
    elif mt := re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", s):
        a, b, y = (int(g) for g in mt.groups())
        if a > 12 >= b:
            d, m = a, b
        elif b > 12 >= a:
            m, d = a, b
        elif a == b:
            d = m = a
        else:
            raise InvalidIdentity(f"ambiguous date {value!r} (day/month order): write it as YYYY-MM-DD")
    elif mt := re.fullmatch(r"(\d{1,2})(?:st|nd|rd|th)? ([a-z]+)\.?,? (\d{4})", s):
        d, y = int(mt.group(1)), int(mt.group(3))
        m = _MONTHS.get(mt.group(2))
    elif mt := re.fullmatch(r"([a-z]+)\.? (\d{1,2})(?:st|nd|rd|th)?,? (\d{4})", s):
        d, y = int(mt.group(2)), int(mt.group(3))
        m = _MONTHS.get(mt.group(1))
    if y is None or m is None or d is None:
        raise InvalidIdentity(f"unrecognised date {value!r}: write it as YYYY-MM-DD")
    try:
        date = _dt.date(y, m, d)
    except ValueError as exc:
        raise InvalidIdentity(f"impossible date {value!r}: {exc}") from None
    today = today or _dt.date.today()
    if date.year < 1900 or date > today:
        raise InvalidIdentity(f"birth date {date.isoformat()} out of range (1900..today)")
    return date.isoformat()


@dataclass(frozen=True)
class Identity:
    """The identifying fields of a subject, raw as typed. Only canonical forms are ever hashed."""

    name: str
    birth_date: str
    id_number: str = ""

    def __repr__(self) -> str:  # never print identifiers, e.g. in a traceback or log line
        return "Identity(<redacted>)"


def canonical_identity(identity: Identity) -> bytes:
    """The canonical, length-prefixed byte string of an identity (the HMAC input)."""
    name = canonical_text(identity.name)
    if not name:
        raise InvalidIdentity("name is missing")
    birth = canonical_date(identity.birth_date)
    number = canonical_id_number(identity.id_number or "")
    return Writer().raw(_PSEUDONYM_DOMAIN).text(name).text(birth).text(number).getvalue()


def pseudonym(pseudonym_key: bytes, identity: Identity) -> bytes:
    """HMAC-SHA256(pseudonymisation key, canonical identifiers): 32 bytes."""
    if len(pseudonym_key) < 32:
        raise PrivacyError("pseudonymisation key must be at least 32 bytes")
    return hmac.new(pseudonym_key, canonical_identity(identity), hashlib.sha256).digest()


# --------------------------------------------------------------------------------------------------------
# Subject payload (the plaintext inside AES-GCM)


@dataclass(frozen=True)
class SubjectRecord:
    """What is known about a registered subject. Encrypted before it leaves the client."""

    risk: int
    suspect: bool
    templates: tuple[bytes, ...] = ()  # each TEMPLATE_DIM little-endian float32 values
    attributes: tuple[tuple[str, str], ...] = ()
    updated_us: int = 0

    def __repr__(self) -> str:
        return (f"SubjectRecord(risk={self.risk}, suspect={self.suspect}, templates={len(self.templates)}, "
                f"attributes={len(self.attributes)})")

    @classmethod
    def make(cls, risk: int, suspect: bool, templates: Sequence[np.ndarray] = (),
             attributes: Optional[Mapping[str, str]] = None, updated_us: int = 0) -> "SubjectRecord":
        """Build a validated record from numpy templates and an attribute mapping."""
        blobs = tuple(template_bytes(t) for t in templates)
        attrs = tuple(sorted((attributes or {}).items()))
        rec = cls(risk=risk, suspect=suspect, templates=blobs, attributes=attrs, updated_us=updated_us)
        rec.validate()
        return rec

    def template_arrays(self) -> list[np.ndarray]:
        return [np.frombuffer(t, dtype="<f4").astype(np.float32) for t in self.templates]

    def validate(self) -> None:
        if isinstance(self.risk, bool) or not isinstance(self.risk, int) or not 0 <= self.risk <= 100:
            raise InvalidRecord(f"risk must be an integer 0..100, got {self.risk!r}")
        if not isinstance(self.suspect, bool):
            raise InvalidRecord("suspect flag must be a boolean")
        if len(self.templates) > MAX_TEMPLATES:
            raise InvalidRecord(f"at most {MAX_TEMPLATES} face templates per subject")
        for t in self.templates:
            if len(t) != TEMPLATE_DIM * 4:
                raise InvalidRecord(f"face template must be {TEMPLATE_DIM} float32 values")
            if not np.all(np.isfinite(np.frombuffer(t, dtype="<f4"))):
                raise InvalidRecord("face template has non-finite values")
        if len(self.attributes) > MAX_ATTRIBUTES:
            raise InvalidRecord(f"at most {MAX_ATTRIBUTES} attributes")
        keys = [k for k, _ in self.attributes]
        if keys != sorted(set(keys)):
            raise InvalidRecord("attribute keys must be unique and sorted")
        for k, v in self.attributes:
            if not _ATTR_KEY.match(k):
                raise InvalidRecord(f"attribute key {k!r} must match [a-z0-9_.-]{{1,64}}")
            if len(v) > MAX_ATTR_VALUE:
                raise InvalidRecord(f"attribute {k!r} longer than {MAX_ATTR_VALUE} characters")
        if not 0 <= self.updated_us < 2**63:
            raise InvalidRecord("updated_us out of range")

    def encode(self) -> bytes:
        """Canonical versioned plaintext encoding."""
        self.validate()
        w = (Writer().raw(RECORD_MAGIC).u8(RECORD_VERSION).u8(self.risk).boolean(self.suspect)
             .i64(self.updated_us).u16(len(self.templates)).u16(TEMPLATE_DIM))
        for t in self.templates:
            w.raw(t)
        w.u16(len(self.attributes))
        for k, v in self.attributes:
            w.text(k).text(v)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> "SubjectRecord":
        try:
            r = Reader(data)
            if r.raw(4) != RECORD_MAGIC:
                raise InvalidRecord("not a subject record")
            if (v := r.u8()) != RECORD_VERSION:
                raise InvalidRecord(f"unsupported subject record version {v}")
            risk, suspect, updated = r.u8(), r.boolean(), r.i64()
            count, dim = r.u16(), r.u16()
            if dim != TEMPLATE_DIM or count > MAX_TEMPLATES:
                raise InvalidRecord("bad template table")
            templates = tuple(r.raw(dim * 4) for _ in range(count))
            n_attr = r.u16()
            if n_attr > MAX_ATTRIBUTES:
                raise InvalidRecord("too many attributes")
            attrs = tuple((r.text(64), r.text(MAX_ATTR_VALUE * 4)) for _ in range(n_attr))
            r.end()
        except PayloadError as exc:
            raise InvalidRecord(str(exc)) from None
        rec = cls(risk=risk, suspect=suspect, templates=templates, attributes=attrs, updated_us=updated)
        rec.validate()
        return rec


def template_bytes(template: np.ndarray) -> bytes:
    """A 128-d face template as little-endian float32 bytes (validated: shape and finiteness)."""
    arr = np.asarray(template, dtype=np.float32).reshape(-1)
    if arr.size != TEMPLATE_DIM:
        raise InvalidRecord(f"face template must have {TEMPLATE_DIM} values, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise InvalidRecord("face template has non-finite values")
    return arr.astype("<f4").tobytes()


# --------------------------------------------------------------------------------------------------------
# Encryption, key wrapping, crypto-shredding


def record_aad(chain_id: str, pseudonym_: bytes, version: int) -> bytes:
    """Additional authenticated data of a record ciphertext: chain id, pseudonym and record version."""
    if not chain_id:
        raise PrivacyError("chain id is required")
    return Writer().raw(_RECORD_AAD_DOMAIN).text(chain_id).blob(pseudonym_).u64(version).getvalue()


@dataclass(frozen=True)
class SealedRecord:
    """The encrypted record plus its wrapped data key (which must go to the key store, not the chain)."""

    nonce: bytes
    ciphertext: bytes
    wrapped_key: bytes
    kek_id: bytes = field(default=b"")

    @property
    def key_commitment(self) -> bytes:
        return key_commitment(self.wrapped_key)


def key_commitment(wrapped_key: bytes) -> bytes:
    """SHA-256 commitment to a wrapped data key; on chain, it lets nodes check a key-store upload."""
    return hashlib.sha256(_COMMIT_DOMAIN + bytes(wrapped_key)).digest()


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise PrivacyError(f"{what} must be 32 bytes (AES-256)")


def wrap_data_key(kek: bytes, kek_id: bytes, data_key: bytes, chain_id: str, pseudonym_: bytes) -> bytes:
    """Wrap a data key under the KEK with AES-256-GCM; the additional data binds chain and subject."""
    _check_key(kek, "key-encryption key")
    _check_key(data_key, "data key")
    if len(kek_id) != KEY_ID_LEN:
        raise PrivacyError("kek id must be 8 bytes")
    nonce = os.urandom(NONCE_LEN)
    header = bytes([WRAP_VERSION]) + kek_id
    aad = Writer().raw(_WRAP_AAD_DOMAIN).raw(header).text(chain_id).blob(pseudonym_).getvalue()
    return header + nonce + AESGCM(kek).encrypt(nonce, data_key, aad)


def wrapped_kek_id(wrapped_key: bytes) -> bytes:
    """Which KEK wrapped this data key (so a keyring holding old KEKs after rotation picks the right one)."""
    if len(wrapped_key) != WRAPPED_KEY_LEN or wrapped_key[0] != WRAP_VERSION:
        raise DecryptionError("malformed wrapped data key")
    return wrapped_key[1:1 + KEY_ID_LEN]


def unwrap_data_key(kek: bytes, wrapped_key: Optional[bytes], chain_id: str, pseudonym_: bytes) -> bytes:
    """Unwrap a data key; ``None`` (deleted from the key store) raises :class:`KeyErased`."""
    if wrapped_key is None:
        raise KeyErased("the subject's data key was erased; the record cannot be decrypted")
    _check_key(kek, "key-encryption key")
    kek_id = wrapped_kek_id(wrapped_key)
    header, nonce, body = wrapped_key[:1 + KEY_ID_LEN], wrapped_key[1 + KEY_ID_LEN:1 + KEY_ID_LEN + NONCE_LEN], \
        wrapped_key[1 + KEY_ID_LEN + NONCE_LEN:]
    aad = Writer().raw(_WRAP_AAD_DOMAIN).raw(header).text(chain_id).blob(pseudonym_).getvalue()
    try:
        return AESGCM(kek).decrypt(nonce, body, aad)
    except InvalidTag:
        raise DecryptionError(f"cannot unwrap data key (kek {kek_id.hex()}): wrong KEK or "
                              "key bound to another subject/chain") from None


def seal_record(record: SubjectRecord, chain_id: str, pseudonym_: bytes, version: int, kek: bytes,
                kek_id: bytes) -> SealedRecord:
    """Encrypt a record under a fresh random data key and wrap that key under the KEK."""
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_LEN)
    ciphertext = AESGCM(data_key).encrypt(nonce, record.encode(), record_aad(chain_id, pseudonym_, version))
    wrapped = wrap_data_key(kek, kek_id, data_key, chain_id, pseudonym_)
    return SealedRecord(nonce=nonce, ciphertext=ciphertext, wrapped_key=wrapped, kek_id=kek_id)


def open_record(nonce: bytes, ciphertext: bytes, wrapped_key: Optional[bytes], chain_id: str, pseudonym_: bytes,
                version: int, kek: bytes) -> SubjectRecord:
    """Unwrap the data key and decrypt a record; any mismatch fails closed with a typed error."""
    data_key = unwrap_data_key(kek, wrapped_key, chain_id, pseudonym_)
    try:
        plain = AESGCM(data_key).decrypt(nonce, ciphertext, record_aad(chain_id, pseudonym_, version))
    except InvalidTag:
        raise DecryptionError("record authentication failed (tampered, or another subject/version/chain)") \
            from None
    return SubjectRecord.decode(plain)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two templates (0.0 when either is all zeros)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0 or not math.isfinite(na * nb):
        return 0.0
    return float(np.dot(a, b) / (na * nb))


# --------------------------------------------------------------------------------------------------------
# Sealing for auditors (per-face decisions in audit records)
#
# A sealed box: a fresh X25519 key pair per message, ECDH with the auditor's public key, HKDF-SHA256 over the
# shared secret (salt = ephemeral public || auditor public) to a one-time AES-256-GCM key. Only the holder of
# the auditor's private key opens it; the pipeline holds the public key alone. Layout:
# version (1) || auditor key id (8) || ephemeral public key (32) || nonce (12) || ciphertext || tag (16).

SEAL_VERSION = 1
_SEAL_INFO = b"riskmask-auditor-seal/v1"
SEAL_OVERHEAD = 1 + KEY_ID_LEN + 32 + NONCE_LEN + 16


def auditor_key_id(public_key: bytes) -> bytes:
    """8-byte id of an auditor X25519 public key (its SHA-256 prefix: public, names the key)."""
    return hashlib.sha256(b"riskmask-auditor-key/v1" + bytes(public_key)).digest()[:KEY_ID_LEN]


def _seal_key(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_SEAL_INFO).derive(shared)


def decisions_aad(camera_id: str, epoch: int, seq: int, raw_sha256: bytes, redacted_sha256: bytes) -> bytes:
    """Additional data of a frame's sealed face decisions: they cannot be moved to another frame's record."""
    return (Writer().raw(_SEAL_INFO).text(camera_id).i64(epoch).i64(seq).blob(raw_sha256).blob(redacted_sha256)
            .getvalue())


def seal_for_auditor(public_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt ``plaintext`` so that only the auditor private key can open it; ``aad`` is bound, not stored."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != 32:
        raise PrivacyError("auditor public key must be 32 bytes (X25519)")
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(bytes(public_key)))
    key = _seal_key(shared, eph_pub, bytes(public_key))
    header = bytes([SEAL_VERSION]) + auditor_key_id(public_key) + eph_pub
    nonce = os.urandom(NONCE_LEN)
    return header + nonce + AESGCM(key).encrypt(nonce, bytes(plaintext), header + bytes(aad))


def open_for_auditor(private_key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Open a :func:`seal_for_auditor` box; DecryptionError for another key, other ``aad`` or tampering."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    sealed = bytes(sealed)
    if len(sealed) < SEAL_OVERHEAD or sealed[0] != SEAL_VERSION:
        raise DecryptionError("malformed sealed box")
    priv = X25519PrivateKey.from_private_bytes(bytes(private_key))
    pub = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    header = sealed[:1 + KEY_ID_LEN + 32]
    if header[1:1 + KEY_ID_LEN] != auditor_key_id(pub):
        raise DecryptionError(f"sealed for auditor key {header[1:1 + KEY_ID_LEN].hex()}, not this key "
                              f"({auditor_key_id(pub).hex()})")
    eph_pub = header[1 + KEY_ID_LEN:]
    nonce, body = sealed[len(header):len(header) + NONCE_LEN], sealed[len(header) + NONCE_LEN:]
    try:
        shared = priv.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        return AESGCM(_seal_key(shared, eph_pub, pub)).decrypt(nonce, body, header + bytes(aad))
    except (InvalidTag, ValueError):
        raise DecryptionError("sealed box authentication failed (tampered, or bound to another frame)") from None


# --------------------------------------------------------------------------------------------------------
# Raw camera frames: AES-256-GCM under a per-camera key

FRAME_AAD_DOMAIN = b"riskmask-camera-frame/v1"


def frame_aad(camera_id: str, epoch: int, seq: int, capture_ts_us: int, width: int, height: int,
              encoding: str) -> bytes:
    """Additional data of an encrypted frame image: every CameraFrame field but the image itself."""
    return (Writer().raw(FRAME_AAD_DOMAIN).text(camera_id).i64(epoch).i64(seq).i64(capture_ts_us).i64(width)
            .i64(height).text(encoding).getvalue())


def encrypt_frame(key: bytes, image: bytes, aad: bytes) -> bytes:
    """nonce (12) || AES-256-GCM ciphertext || tag of one frame's encoded image."""
    _check_key(key, "camera frame key")
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, bytes(image), aad)


def decrypt_frame(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """The encoded image of :func:`encrypt_frame`; DecryptionError for a wrong key, other frame or tampering."""
    _check_key(key, "camera frame key")
    blob = bytes(blob)
    if len(blob) < NONCE_LEN + 16:
        raise DecryptionError("encrypted frame too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad)
    except InvalidTag:
        raise DecryptionError("frame authentication failed (wrong key, tampered, or another frame)") from None
