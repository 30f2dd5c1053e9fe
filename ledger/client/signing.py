"""Signing ledger API requests, the client half of :mod:`ledger.rpc.auth`: headers and the canonical request.

Every API call carries an Ed25519 signature by a registered client key. Headers (all required):

* ``X-Ledger-Key`` — the client's Ed25519 public key, 64 hex digits (its key id in the client registry);
* ``X-Ledger-Timestamp`` — unix time in milliseconds; refused when further than the allowed skew from now;
* ``X-Ledger-Nonce`` — 16..64 hex digits, never reused by that key within the skew window (replay guard);
* ``X-Ledger-Node`` — the node the request is meant for: its validator public key, 64 hex digits, as in
  genesis (``any`` only for ``GET /v1/node``, which tells a client the node's id);
* ``X-Ledger-Signature`` — 128 hex digits: Ed25519 over the API-request domain of :mod:`ledger.types.crypto` and
  the canonical request ``METHOD \\n target \\n sha256(body) hex \\n timestamp \\n nonce \\n node``, where
  ``target`` is the path with its query string exactly as sent.

Kept apart from the server's :class:`ledger.rpc.auth.Authenticator` so that a client (the pipeline, the manager's
commands) loads nothing of the node's HTTP server.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Optional

from ledger.types import crypto

H_KEY = "x-ledger-key"
H_TS = "x-ledger-timestamp"
H_NONCE = "x-ledger-nonce"
H_SIG = "x-ledger-signature"
H_NODE = "x-ledger-node"
ANY_NODE = "any"


def canonical_request(method: str, target: str, body: bytes, timestamp_ms: int, nonce: str, node: str) -> bytes:
    """The bytes a client signs for one request to the node ``node`` (64 hex digits, or ``any``)."""
    return "\n".join([method.upper(), target, hashlib.sha256(body).hexdigest(), str(timestamp_ms),
                      nonce, node]).encode("utf-8")


def sign_request(seed: bytes, method: str, target: str, body: bytes, node: str,
                 timestamp_ms: Optional[int] = None, nonce: Optional[str] = None) -> dict[str, str]:
    """Headers that authenticate one request to node ``node`` made with the client key ``seed``."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    nonce = nonce or os.urandom(16).hex()
    node = node.lower()
    key = crypto.PrivateKey.from_seed(seed)
    sig = key.sign(crypto.DOMAIN_API_REQUEST, canonical_request(method, target, body, ts, nonce, node))
    return {"X-Ledger-Key": key.public_key().to_bytes().hex(), "X-Ledger-Timestamp": str(ts),
            "X-Ledger-Nonce": nonce, "X-Ledger-Node": node, "X-Ledger-Signature": sig.hex()}
