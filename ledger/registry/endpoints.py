"""HTTP endpoints of the registry (added to a node's :class:`ledger.rpc.api.LedgerApi`) and peer key repair.

==========  =====================================  ==========================================
method      path                                   roles
==========  =====================================  ==========================================
PUT         /v1/registry/keys                      manager, validator (wrapped key upload)
GET         /v1/registry/subjects/{pseudonym}      pipeline, manager, validator
GET         /v1/registry/watchlist?since=H         pipeline, manager, validator
GET         /v1/registry/digest?height=H           pipeline, manager, validator
GET         /v1/registry/anchors/{tx_hash}         pipeline, manager, auditor, validator
==========  =====================================  ==========================================

The digest endpoint answers the registry state digest (:mod:`ledger.registry.digest`) at height ``H``
(default: the applied height), 409 while ``H`` is not applied yet, 404 for a height older than the first digest
the node kept; the pipeline believes a watchlist only when f + 1 nodes report its digest (:mod:`ledger.client.watchlist`).

Transactions are submitted through ``POST /v1/txs``; who may submit which kind is the kinds table
(:mod:`ledger.registry.kinds`).
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any, Callable, Iterable, Optional

from ledger.client.api_client import ApiError, LedgerClient, Unavailable
from ledger.registry.service import RegistryRejected, RegistryService
from ledger.rpc.httpserver import HttpError, Response, ascii_uint

logger = logging.getLogger(__name__)

MANAGER_ROLES = frozenset({"manager", "validator"})
WATCHLIST_ROLES = frozenset({"pipeline", "manager", "validator"})
ANCHOR_ROLES = frozenset({"pipeline", "manager", "auditor", "validator"})


def install(svc: RegistryService, api: Any) -> None:
    """Add the registry endpoints of ``svc`` to ``api``."""
    ep = _Endpoints(svc)
    api.add("PUT", "/v1/registry/keys", ep.upload_key, MANAGER_ROLES, "registry_upload_key", max_body=4096)
    api.add("GET", "/v1/registry/subjects/{pseudonym:hex}", ep.subject, WATCHLIST_ROLES, "registry_subject")
    api.add("GET", "/v1/registry/watchlist", ep.watchlist, WATCHLIST_ROLES, "registry_watchlist")
    api.add("GET", "/v1/registry/digest", ep.digest, WATCHLIST_ROLES, "registry_digest")
    api.add("GET", "/v1/registry/anchors/{tx_hash:hex}", ep.anchor, ANCHOR_ROLES, "registry_anchor")


class _Endpoints:
    def __init__(self, svc: RegistryService) -> None:
        self.svc = svc

    async def upload_key(self, req: Any) -> Any:
        body = req.json()
        if not isinstance(body, dict) or set(body) != {"pseudonym", "wrapped"}:
            raise HttpError(400, 'body must be {"pseudonym": "<hex>", "wrapped": "<base64>"}')
        try:
            pseudonym = bytes.fromhex(body["pseudonym"])
            wrapped = base64.b64decode(body["wrapped"], validate=True)
        except (ValueError, TypeError, binascii.Error):
            raise HttpError(400, "pseudonym must be hex and wrapped base64") from None
        try:
            commitment = self.svc.upload_key(pseudonym, wrapped)
        except RegistryRejected as exc:
            raise HttpError(409 if "erased" in str(exc) else 400, str(exc)) from None
        return Response.json({"commitment": commitment.hex()})

    async def subject(self, req: Any) -> Any:
        hx = req.params["pseudonym"]
        if len(hx) != 64:
            raise HttpError(400, "pseudonym must be 64 hex digits")
        out = self.svc.subject_json(bytes.fromhex(hx))
        if out is None:
            raise HttpError(404, "unknown subject")
        out["chain_height"] = self.svc.index.applied_height
        return Response.json(out)

    async def watchlist(self, req: Any) -> Any:
        since = req.query.get("since", "0")
        if not since.isdigit() or len(since) > 18:
            raise HttpError(400, "since must be a non-negative integer height")
        return Response.json(self.svc.watchlist_json(int(since)))

    async def digest(self, req: Any) -> Any:
        raw = req.query.get("height")
        height: Optional[int] = None
        if raw is not None:
            height = ascii_uint(raw, 18)
            if height is None:
                raise HttpError(400, "height must be a non-negative integer (ASCII digits)")
        out = self.svc.digest_json(height)
        if out is None:
            first, applied = self.svc.index.digest_range()
            if height is not None and height > applied:
                raise HttpError(409, f"height {height} is not applied yet (applied height {applied})")
            raise HttpError(404, f"no state digest kept before height {first}")
        return Response.json(out)

    async def anchor(self, req: Any) -> Any:
        hx = req.params["tx_hash"]
        if len(hx) != 64:
            raise HttpError(400, "transaction hash must be 64 hex digits")
        row = self.svc.index.anchor(bytes.fromhex(hx))
        if row is None:
            raise HttpError(404, "no committed anchor with this transaction hash")
        return Response.json({k: (v.hex() if isinstance(v, bytes) else v) for k, v in row.items()})



def peer_key_fetcher(addresses: Iterable[str], seed: bytes, timeout_s: float = 5.0) -> Callable[[bytes], Optional[bytes]]:
    """``fetch(pseudonym)`` asking peer nodes (validator key ``seed``) for a subject's wrapped key."""
    clients = [LedgerClient(a, seed, timeout_s) for a in addresses]

    def fetch(pseudonym: bytes) -> Optional[bytes]:
        for c in clients:
            try:
                rec = c.request("GET", f"/v1/registry/subjects/{pseudonym.hex()}")
            except (ApiError, Unavailable):
                continue
            if rec.get("wrapped_key"):
                return base64.b64decode(rec["wrapped_key"])
        return None

    return fetch


__all__ = ["install", "peer_key_fetcher", "MANAGER_ROLES", "WATCHLIST_ROLES", "ANCHOR_ROLES"]
