"""The registry state digest: one SHA-256 over every subject's current record, in pseudonym order.

A node serves the digest of its registry state at a height (``GET /v1/registry/digest?height=H`` and the
``digest`` field of each watchlist page); the pipeline computes the same digest over the records it holds and
believes a watchlist only when f + 1 distinct nodes report that digest at that height
(:mod:`ledger.client.watchlist`). The registry state has no root in the block header, so this is how a node that
serves the certified height but leaves a record out (a risk downgrade, an erasure) is caught.

Canonical encoding (all integers big-endian)::

    digest = SHA-256("riskmask-registry-state/v1\\x00" || entry_1 || ... || entry_n)   (ascending pseudonym)
    entry  = pseudonym (32) || version (u64) || status (u8: 1 live, 2 erased) || height (u64)
             || tx_hash (32) || SHA-256(nonce || ciphertext) (32; 32 zero bytes for an erased subject)

``height`` is the height of the subject's last change and ``tx_hash`` the transaction that made it, both as
the watchlist serves them; the content hash binds the exact sealed record the pipeline opens. The empty state
has digest ``SHA-256(tag)``.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any, Iterable, Mapping, Optional

TAG = b"riskmask-registry-state/v1\x00"
ENTRY_LEN = 32 + 8 + 1 + 8 + 32 + 32
_STATUS = {"live": 1, "erased": 2}
_ZERO = bytes(32)


class DigestError(ValueError):
    """A record that cannot be encoded into the state digest (a malformed field)."""


def entry(pseudonym: bytes, version: int, status: str, height: int, tx_hash: bytes,
          nonce: Optional[bytes], ciphertext: Optional[bytes]) -> bytes:
    """The canonical encoding of one subject's current record."""
    if len(pseudonym) != 32 or len(tx_hash) != 32:
        raise DigestError("pseudonym and tx_hash must be 32 bytes")
    code = _STATUS.get(status)
    if code is None:
        raise DigestError(f"unknown subject status {status!r}")
    if not (0 <= version < 2**64 and 0 <= height < 2**64):
        raise DigestError("version and height must be unsigned 64-bit integers")
    if code == 1:
        if nonce is None or ciphertext is None:
            raise DigestError("a live subject has a nonce and a ciphertext")
        content = hashlib.sha256(nonce + ciphertext).digest()
    else:
        content = _ZERO
    return pseudonym + struct.pack(">QBQ", version, code, height) + tx_hash + content


def entry_of_row(row: Mapping[str, Any]) -> bytes:
    """The entry of a ``subjects`` row of the node's index (:mod:`ledger.registry.state`)."""
    return entry(bytes(row["pseudonym"]), int(row["version"]), str(row["status"]), int(row["height"]),
                 bytes(row["tx_hash"]), row["nonce"], row["ciphertext"])


def entry_of_record(rec: Mapping[str, Any]) -> tuple[bytes, int, bytes]:
    """(pseudonym, version, entry) of a record as the watchlist endpoint serves it (raises DigestError)."""
    try:
        p = bytes.fromhex(rec["pseudonym"])
        version, height = int(rec["version"]), int(rec["height"])
        tx_hash = bytes.fromhex(rec["tx_hash"])
        live = rec["status"] == "live"
        nonce = base64.b64decode(rec["nonce"], validate=True) if live else None
        ct = base64.b64decode(rec["ciphertext"], validate=True) if live else None
    except (KeyError, TypeError, ValueError) as exc:
        raise DigestError(f"malformed record: {type(exc).__name__}") from None
    return p, version, entry(p, version, str(rec["status"]), height, tx_hash, nonce, ct)


def state_digest(entries: Iterable[bytes]) -> bytes:
    """SHA-256 over the entries in ascending order (each entry starts with its pseudonym)."""
    h = hashlib.sha256(TAG)
    for e in sorted(entries):
        h.update(e)
    return h.digest()


EMPTY_DIGEST = state_digest(())


def digest_of_records(records: Iterable[Mapping[str, Any]], upto: Optional[int] = None) -> bytes:
    """The digest of the state a list of served records describes: per pseudonym the highest version whose
    height is at most ``upto`` (every record when None)."""
    best: dict[bytes, tuple[int, bytes]] = {}
    for rec in records:
        if upto is not None and int(rec["height"]) > upto:
            continue
        p, version, e = entry_of_record(rec)
        if p not in best or version >= best[p][0]:
            best[p] = (version, e)
    return state_digest(e for _, e in best.values())


__all__ = ["TAG", "ENTRY_LEN", "EMPTY_DIGEST", "DigestError", "entry", "entry_of_row", "entry_of_record",
           "state_digest", "digest_of_records"]
