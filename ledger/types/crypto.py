"""Ed25519 signatures with domain separation, SHA-256, and a cached signature verifier.

A signature never covers bare message bytes but ``u8 len(domain) || domain || u8 len(chain) || chain ||
message`` (see :func:`signing_bytes`), so a signature made for one purpose (a transaction, a prevote, an API
request) or for one chain can never be replayed as another.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Callable, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.errors import SignatureError

DOMAIN_TX = b"riskmask/ledger/tx/v1"
DOMAIN_PROPOSAL = b"riskmask/ledger/proposal/v1"
DOMAIN_PREVOTE = b"riskmask/ledger/prevote/v1"
DOMAIN_PRECOMMIT = b"riskmask/ledger/precommit/v1"
DOMAIN_API_REQUEST = b"riskmask/ledger/api-request/v1"
DOMAIN_P2P_HANDSHAKE = b"riskmask/ledger/p2p-handshake/v1"
DOMAIN_CHECKPOINT = b"riskmask/ledger/checkpoint/v1"

PUBLIC_KEY_LEN = 32
SEED_LEN = 32
SIGNATURE_LEN = 64

#: ``verifier(public_key_bytes, signed_bytes, signature) -> bool``; pluggable so callers can cache.
Verifier = Callable[[bytes, bytes, bytes], bool]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def signing_bytes(domain: bytes, message: bytes, chain_id: str = "") -> bytes:
    """The exact bytes an Ed25519 signature covers."""
    chain = chain_id.encode("utf-8")
    if not 0 < len(domain) < 256 or len(chain) > 255:
        raise SignatureError("domain must be 1..255 bytes and chain id at most 255 bytes")
    return b"".join((bytes((len(domain),)), domain, bytes((len(chain),)), chain, message))


class PublicKey:
    """An Ed25519 public key (32 raw bytes)."""

    __slots__ = ("_raw", "_key")

    def __init__(self, raw: bytes, key: Ed25519PublicKey) -> None:
        self._raw = raw
        self._key = key

    @classmethod
    def from_bytes(cls, raw: bytes) -> "PublicKey":
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != PUBLIC_KEY_LEN:
            raise SignatureError("an Ed25519 public key is 32 bytes")
        try:
            return cls(bytes(raw), Ed25519PublicKey.from_public_bytes(bytes(raw)))
        except ValueError as exc:
            raise SignatureError(f"malformed Ed25519 public key: {exc}") from None

    def to_bytes(self) -> bytes:
        return self._raw

    def verify(self, domain: bytes, message: bytes, signature: bytes, chain_id: str = "") -> bool:
        """True only for a valid signature over ``signing_bytes(domain, message, chain_id)``."""
        return self.verify_signed(signing_bytes(domain, message, chain_id), signature)

    def verify_signed(self, signed: bytes, signature: bytes) -> bool:
        if len(signature) != SIGNATURE_LEN:
            return False
        try:
            self._key.verify(bytes(signature), signed)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PublicKey({self._raw.hex()[:16]}...)"


class PrivateKey:
    """An Ed25519 signing key, kept as its 32-byte seed."""

    __slots__ = ("_seed", "_key", "_public")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_LEN:
            raise SignatureError("an Ed25519 seed is 32 bytes")
        self._seed = bytes(seed)
        self._key = Ed25519PrivateKey.from_private_bytes(self._seed)
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._public = PublicKey(raw, self._key.public_key())

    @classmethod
    def generate(cls) -> "PrivateKey":
        return cls(os.urandom(SEED_LEN))

    @classmethod
    def from_seed(cls, seed: bytes) -> "PrivateKey":
        return cls(seed)

    def seed(self) -> bytes:
        return self._seed

    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, domain: bytes, message: bytes, chain_id: str = "") -> bytes:
        return self._key.sign(signing_bytes(domain, message, chain_id))

    def sign_signed(self, signed: bytes) -> bytes:
        """Sign bytes already framed by :func:`signing_bytes`."""
        return self._key.sign(signed)

    def __repr__(self) -> str:  # never print key material
        return f"PrivateKey(public={self._public.to_bytes().hex()[:16]}...)"


def verify_raw(public_key: bytes, signed: bytes, signature: bytes) -> bool:
    """Plain :data:`Verifier`: False for a malformed key or a bad signature."""
    try:
        return PublicKey.from_bytes(public_key).verify_signed(signed, signature)
    except SignatureError:
        return False


class CachingVerifier:
    """A :data:`Verifier` that remembers results (LRU), so duplicate messages cost one hash, not a verify.

    ``backend`` does the actual check (default: OpenSSL through ``cryptography``, each key parsed once);
    :mod:`ledger.node.fastverify` plugs in libsodium.
    """

    def __init__(self, max_entries: int = 65536, backend: Optional[Verifier] = None) -> None:
        self.max_entries = max_entries
        self._backend = backend or self._openssl
        self._keys: dict[bytes, PublicKey | None] = {}
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __call__(self, public_key: bytes, signed: bytes, signature: bytes) -> bool:
        k = hashlib.sha256(public_key + signature + signed).digest()
        hit = self._cache.get(k)
        if hit is not None:
            self.hits += 1
            self._cache.move_to_end(k)
            return hit
        self.misses += 1
        ok = bool(self._backend(public_key, signed, signature))
        self._cache[k] = ok
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return ok

    def _openssl(self, public_key: bytes, signed: bytes, signature: bytes) -> bool:
        pk = self._keys.get(public_key, False)
        if pk is False:
            try:
                pk = PublicKey.from_bytes(public_key)
            except SignatureError:
                pk = None
            if len(self._keys) < 4096:
                self._keys[public_key] = pk
        return pk is not None and pk.verify_signed(signed, signature)
