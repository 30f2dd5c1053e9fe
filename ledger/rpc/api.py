"""The ledger node's HTTP API: endpoint table, roles and handlers (served by :mod:`ledger.rpc.httpserver`).

Every request is authenticated by :class:`ledger.rpc.auth.Authenticator` (signed by a registered client key) and
authorised by the role list of its endpoint. Endpoints (see ``ledger/rpc/openapi.yaml``):

==========  ==========================  ======================================================
method      path                        roles
==========  ==========================  ======================================================
GET         /openapi.yaml               all
GET         /v1/node                    all (this node's id; the only request that may be signed for ``any``)
GET         /v1/status                  all
POST        /v1/txs                     manager (register/update/erase), pipeline (anchor); no other role
POST        /v1/txs/batch               as above, per transaction
GET         /v1/txs/{hash}              all (status + Merkle inclusion proof)
GET         /v1/blocks/{height}         manager, auditor, validator
GET         /v1/blocks?from=&to=        manager, auditor, validator (at most 100 blocks)
GET         /v1/evidence                auditor, validator
GET         /v1/tip                     all (latest block header + commit certificate, no transactions)
==========  ==========================  ======================================================

Other modules add endpoints with :meth:`LedgerApi.add` (same auth, same error handling), e.g.::

    api.add("GET", "/v1/watchlist", handler, roles={"pipeline", "validator"})

TLS is optional: with ``api_tls_cert`` and ``api_tls_key`` in the node config (PEM files) the node serves
HTTPS only (TLS 1.2 or newer).
"""

from __future__ import annotations

import base64
import binascii
import inspect
import logging
import ssl
from importlib import resources
from typing import Any, Iterable, Optional, Protocol

from ledger.config import SUBMIT_KINDS, ClientInfo, ClientRegistry
from ledger.rpc.auth import Authenticator
from ledger.rpc.httpserver import Handler, HttpError, HttpServer, Request, Response, Route, Router, ascii_uint
from ledger.types.block import Block

logger = logging.getLogger(__name__)

ALL_ROLES = frozenset({"manager", "pipeline", "auditor", "validator"})
READ_ROLES = frozenset({"manager", "auditor", "validator"})
SUBMIT_ROLES = frozenset({"manager", "pipeline", "validator"})
MAX_RANGE = 100


class LedgerService(Protocol):
    """What the API needs from the node."""

    def submit_txs(self, txs: list[bytes], client: ClientInfo) -> Any:
        """Admit transactions to the mempool; per tx (hash hex, None) or (None, reason). May be a coroutine."""

    def tx_status(self, tx_hash: bytes) -> dict: ...

    def block_json(self, height: int) -> Optional[dict]: ...

    def status_json(self) -> dict: ...

    def evidence_json(self) -> list[dict]: ...

    @property
    def height(self) -> int: ...


def _b64(data: str, what: str) -> bytes:
    if not isinstance(data, str):
        raise HttpError(400, f"{what} must be a base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, f"{what} is not valid base64") from None


def _int_query(req: Request, name: str, default: Optional[int] = None) -> int:
    v = req.query.get(name)
    if v is None:
        if default is None:
            raise HttpError(400, f"query parameter {name!r} is required")
        return default
    n = ascii_uint(v, 18)
    if n is None:
        raise HttpError(400, f"query parameter {name!r} must be a non-negative integer (ASCII digits)")
    return n


def node_identity(service: Any) -> tuple[str, int, str]:
    """(node id = validator public key hex, index, chain id) of a node service (``genesis`` + ``cfg.index``)."""
    genesis, index = service.genesis, service.cfg.index
    return genesis.validators[index].public_key.hex(), index, genesis.chain_id


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context from PEM files (TLS 1.2 or newer)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class LedgerApi:
    """Endpoint table + server of one node."""

    def __init__(self, service: LedgerService, registry: ClientRegistry, max_body: int,
                 clock_skew_s: float = 60.0, max_batch: int = 5000,
                 identity: Optional[tuple[str, int, str]] = None) -> None:
        self.service = service
        self.router = Router()
        self.node_id, self.index, self.chain_id = identity or node_identity(service)
        self.auth = Authenticator(registry, self.node_id, clock_skew_s)
        self.server = HttpServer(self.router, max_body, before=self.auth, pre_body=self.auth.precheck)
        self.max_batch = max_batch
        self._spec: Optional[bytes] = None
        self.add("GET", "/openapi.yaml", self._openapi, ALL_ROLES, "openapi")
        self.add("GET", "/v1/node", self._node, ALL_ROLES, "node", node_bound=False)
        self.add("GET", "/v1/status", self._status, ALL_ROLES, "status")
        self.add("POST", "/v1/txs", self._submit_one, SUBMIT_ROLES, "submit")
        self.add("POST", "/v1/txs/batch", self._submit_batch, SUBMIT_ROLES, "submit_batch")
        self.add("GET", "/v1/txs/{hash:hex}", self._tx, ALL_ROLES, "tx_status")
        self.add("GET", "/v1/blocks/{height:int}", self._block, READ_ROLES, "block")
        self.add("GET", "/v1/blocks", self._blocks, READ_ROLES, "blocks")
        self.add("GET", "/v1/evidence", self._evidence, frozenset({"auditor", "validator"}), "evidence")
        self.add("GET", "/v1/tip", self._tip, ALL_ROLES, "tip")

    def add(self, method: str, path: str, handler: Handler, roles: Iterable[str], name: str = "",
            max_body: Optional[int] = None, node_bound: bool = True) -> Route:
        """Register an endpoint. ``handler(req) -> Response``; ``req.context['client']`` is the caller."""
        roles = frozenset(roles)
        unknown = roles - ALL_ROLES
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}")
        return self.router.add(method, path, handler, roles, name, max_body, node_bound)

    async def start(self, host: str, port: int, ssl_context: Optional[ssl.SSLContext] = None) -> int:
        """Serve on host:port; HTTPS when ``ssl_context`` is given or the node config names a certificate."""
        if ssl_context is None:
            cfg = getattr(self.service, "cfg", None)
            cert, key = getattr(cfg, "api_tls_cert", None), getattr(cfg, "api_tls_key", None)
            if cert and key:
                ssl_context = tls_context(str(cert), str(key))
        return await self.server.start(host, port, ssl_context)

    async def stop(self) -> None:
        await self.server.stop()

    # -- handlers ------------------------------------------------------------------------------------------
    async def _openapi(self, req: Request) -> Response:
        if self._spec is None:
            self._spec = resources.files("ledger.rpc").joinpath("openapi.yaml").read_bytes()
        return Response(200, self._spec, "application/yaml")

    async def _node(self, req: Request) -> Response:
        return Response.json({"node_id": self.node_id, "index": self.index, "chain_id": self.chain_id,
                              "tls": self.server.tls})

    async def _status(self, req: Request) -> Response:
        return Response.json(self.service.status_json())

    async def _admit(self, raw: list[bytes], req: Request) -> list[tuple[Optional[str], Optional[str]]]:
        client: ClientInfo = req.context["client"]
        res = self.service.submit_txs(raw, client)
        return await res if inspect.isawaitable(res) else res

    async def _submit_one(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict) or set(body) != {"tx"}:
            raise HttpError(400, 'body must be {"tx": "<base64 transaction>"}')
        tx = _b64(body["tx"], "tx")
        [(h, err)] = await self._admit([tx], req)
        if err is not None:
            raise HttpError(_status_of(err), err)
        return Response.json({"hash": h, "status": "pending"}, 202)

    async def _submit_batch(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict) or set(body) != {"txs"} or not isinstance(body["txs"], list):
            raise HttpError(400, 'body must be {"txs": ["<base64 transaction>", ...]}')
        if not body["txs"]:
            raise HttpError(400, "txs must not be empty")
        if len(body["txs"]) > self.max_batch:
            raise HttpError(413, f"at most {self.max_batch} transactions per batch")
        raw = [_b64(t, f"txs[{i}]") for i, t in enumerate(body["txs"])]
        results = await self._admit(raw, req)
        accepted = [h for h, e in results if e is None]
        rejected = [{"index": i, "error": e} for i, (h, e) in enumerate(results) if e is not None]
        if not accepted:
            first = rejected[0]["error"]
            raise HttpError(_status_of(first), f"no transaction accepted; first error: {first}")
        return Response.json({"accepted": accepted, "rejected": rejected}, 202)

    async def _tx(self, req: Request) -> Response:
        hx = req.params["hash"]
        if len(hx) != 64:
            raise HttpError(400, "transaction hash must be 64 hex digits")
        st = self.service.tx_status(bytes.fromhex(hx))
        if st.get("status") == "unknown":
            return Response.json({"error": "unknown transaction", **st}, 404)
        return Response.json(st)

    async def _block(self, req: Request) -> Response:
        h = req.params["height"]
        if h < 1:
            raise HttpError(400, "height must be >= 1")
        blk = self.service.block_json(h)
        if blk is None:
            raise HttpError(404, f"no block at height {h} (current height {self.service.height})")
        return Response.json(blk)

    async def _blocks(self, req: Request) -> Response:
        start = _int_query(req, "from", 1)
        end = _int_query(req, "to", start + MAX_RANGE - 1)
        if start < 1 or end < start:
            raise HttpError(400, "need 1 <= from <= to")
        if end - start + 1 > MAX_RANGE:
            raise HttpError(400, f"at most {MAX_RANGE} blocks per request")
        end = min(end, self.service.height)
        blocks = [b for b in (self.service.block_json(h) for h in range(start, end + 1)) if b is not None]
        return Response.json({"blocks": blocks, "height": self.service.height})

    async def _evidence(self, req: Request) -> Response:
        return Response.json({"evidence": self.service.evidence_json()})

    async def _tip(self, req: Request) -> Response:
        """The latest finalized header and its commit certificate: enough for any role (the pipeline's
        watchlist freshness check) to verify the height against the genesis, without the transactions."""
        height = self.service.height
        blk = self.service.block_json(height) if height >= 1 else None
        if blk is None:
            raise HttpError(404, "no finalized block yet")
        header = Block.decode(base64.b64decode(blk["block"])).header.encode()
        return Response.json({"height": blk["height"], "hash": blk["hash"],
                              "header": base64.b64encode(header).decode(), "cert": blk["cert"]})


def _status_of(reason: str) -> int:
    """HTTP status of an admission refusal: 403 role, 429 mempool full (retry later), else 400."""
    if reason.startswith("forbidden"):
        return 403
    if reason.startswith("busy"):
        return 429
    return 400


def json_error(status: int, reason: str) -> Response:
    """A 4xx/5xx answer in the API's error shape."""
    return Response.json({"error": reason}, status)


__all__ = ["LedgerApi", "LedgerService", "ALL_ROLES", "READ_ROLES", "SUBMIT_ROLES", "SUBMIT_KINDS",
           "HttpError", "Request", "Response", "json_error"]
