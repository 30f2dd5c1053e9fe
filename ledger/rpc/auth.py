"""Authenticating signed API requests on a node: signature, freshness, target node, replay guard and role.

The request format (headers, canonical request) is :mod:`ledger.client.signing`, the client half. A node refuses a
request signed for another node, so a request captured at one node (or by one node) cannot be replayed to the
others; each node's nonce cache then stops replays to itself. The role of the key (from the client registry)
must be among the endpoint's roles.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Optional

from ledger.client.signing import ANY_NODE, H_KEY, H_NODE, H_NONCE, H_SIG, H_TS, canonical_request, sign_request
from ledger.config import ClientInfo, ClientRegistry
from ledger.rpc.httpserver import HttpError, Request, Route, ascii_uint
from ledger.types import crypto

__all__ = ["ANY_NODE", "Authenticator", "NonceCache", "canonical_request", "sign_request"]

MAX_NONCES = 1_000_000


class NonceCache:
    """Nonces seen per key until their timestamp leaves the skew window (bounded, oldest evicted)."""

    def __init__(self, window_s: float, max_entries: int = MAX_NONCES) -> None:
        self.window_ms = int(window_s * 1000)
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def check_and_add(self, key_id: str, nonce: str, ts_ms: int, now_ms: int) -> bool:
        """False when (key, nonce) was already used; otherwise remember it and return True."""
        self._expire(now_ms)
        k = (key_id, nonce)
        if k in self._seen:
            return False
        self._seen[k] = ts_ms + self.window_ms
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return True

    def seen(self, key_id: str, nonce: str) -> bool:
        """Whether (key, nonce) was already used (and not yet expired); remembers nothing."""
        return (key_id, nonce) in self._seen

    def _expire(self, now_ms: int) -> None:
        # Entries are (roughly) in arrival order; stop at the first unexpired one.
        while self._seen:
            k, exp = next(iter(self._seen.items()))
            if exp >= now_ms:
                break
            self._seen.popitem(last=False)


class Authenticator:
    """Checks signature, freshness, target node, replay and role for every routed request (the server's
    ``before`` hook); :meth:`precheck` checks what it can from the headers alone before a body is read."""

    def __init__(self, registry: ClientRegistry, node_id: str, clock_skew_s: float = 60.0) -> None:
        if len(node_id) != 64 or not _is_hex(node_id):
            raise ValueError("node_id must be the node's validator public key, 64 hex digits")
        self.registry = registry
        self.node_id = node_id.lower()
        self.skew_ms = int(clock_skew_s * 1000)
        self.nonces = NonceCache(clock_skew_s * 2)
        self._keys: dict[str, crypto.PublicKey] = {}

    async def __call__(self, req: Request, route: Route) -> None:
        req.context["client"] = self.authenticate(req, route)

    def precheck(self, method: str, path: str, headers: dict[str, str]) -> None:
        """Refuse (HttpError) a request whose headers alone show it cannot pass; no signature check. A
        replayed header set (a used nonce) is refused here, before its body is read."""
        key_id, _, _, nonce, _ = self._headers(headers, None)
        if self.nonces.seen(key_id, nonce):
            raise HttpError(401, "replayed request (nonce already used)")

    def _headers(self, h: dict[str, str], route: Optional[Route]) -> tuple[str, ClientInfo, int, str, str]:
        missing = [n for n in (H_KEY, H_TS, H_NONCE, H_NODE, H_SIG) if n not in h]
        if missing:
            raise HttpError(401, f"unsigned request: missing header {missing[0]}")
        ts = ascii_uint(h[H_TS], 16)
        if ts is None:
            raise HttpError(400, "malformed X-Ledger-Timestamp (unix milliseconds in ASCII digits expected)")
        key_id = h[H_KEY].lower()
        if len(key_id) != 64 or not _is_hex(key_id):
            raise HttpError(401, "malformed X-Ledger-Key (64 hex digits expected)")
        client = self.registry.lookup(key_id)
        if client is None:
            raise HttpError(401, "unknown client key")
        now = int(time.time() * 1000)
        if abs(now - ts) > self.skew_ms:
            raise HttpError(401, "stale or future timestamp (check the client clock)")
        nonce = h[H_NONCE].lower()
        if not 16 <= len(nonce) <= 64 or not _is_hex(nonce):
            raise HttpError(401, "malformed X-Ledger-Nonce (16..64 hex digits expected)")
        node = h[H_NODE].lower()
        if node != self.node_id:
            if node != ANY_NODE:
                raise HttpError(401, f"request signed for another node (this node is {self.node_id})")
            if route is not None and route.node_bound:
                raise HttpError(401, f"request must be signed for this node ({self.node_id}), not 'any'")
        sig_hex = h[H_SIG]
        if len(sig_hex) != 128 or not _is_hex(sig_hex):
            raise HttpError(401, "malformed X-Ledger-Signature (128 hex digits expected)")
        return key_id, client, ts, nonce, node

    def authenticate(self, req: Request, route: Route) -> ClientInfo:
        h = req.headers
        key_id, client, ts, nonce, node = self._headers(h, route)
        pk = self._keys.get(key_id)
        if pk is None:
            pk = crypto.PublicKey.from_bytes(client.public_key)
            self._keys[key_id] = pk
        msg = canonical_request(req.method, req.target, req.body, ts, h[H_NONCE], node)
        if not pk.verify(crypto.DOMAIN_API_REQUEST, msg, bytes.fromhex(h[H_SIG])):
            raise HttpError(401, "bad request signature")
        if client.role not in route.roles:
            raise HttpError(403, f"role {client.role!r} may not call {route.method} {route.template}")
        # Replay check last, so a forged request cannot burn a legitimate client's nonce.
        if not self.nonces.check_and_add(key_id, nonce, ts, int(time.time() * 1000)):
            raise HttpError(401, "replayed request (nonce already used)")
        return client


def _is_hex(s: str) -> bool:
    if not s.isascii():
        return False
    try:
        bytes.fromhex(s)
    except ValueError:
        return False
    return True
