"""Python client of the ledger HTTP API: signs every request with a client key (see :mod:`ledger.client.signing`).

One :class:`LedgerClient` talks to one node over a keep-alive HTTP/1.1 connection (re-opened on failure);
:class:`ClusterClient` spreads calls over several nodes and fails over when one is down. Errors:
:class:`ApiError` (the node answered 4xx/5xx, with its reason) and :class:`Unavailable` (no answer).

Every request is signed for one node (its validator public key, see :mod:`ledger.client.signing`). Give ``node_id``
from genesis where the caller has it (:meth:`LedgerClient.for_validator`); otherwise the client asks the
node once (``GET /v1/node``). Addresses ``https://host:port`` use TLS, verified against ``ca_file`` or the
PEM file named by ``$RISKMASK_LEDGER_CA`` (else the system's trust store).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import ssl
import time
from typing import Any, Iterable, Optional, Sequence
from urllib.parse import urlencode

from ledger.client.signing import ANY_NODE, sign_request
from ledger.config import KeyFile, parse_address

CA_ENV = "RISKMASK_LEDGER_CA"

logger = logging.getLogger(__name__)


class ClientError(Exception):
    """Base of client errors."""


class ApiError(ClientError):
    """The node refused or failed the request; ``status`` is the HTTP status, ``reason`` its message."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class Unavailable(ClientError):
    """The node could not be reached (refused, reset, timed out)."""


class LedgerClient:
    """Signed requests to one node. Not thread-safe: use one client per thread."""

    def __init__(self, address: str, seed: bytes, timeout_s: float = 10.0, node_id: Optional[str] = None,
                 ca_file: Optional[str] = None) -> None:
        self.address = address
        scheme, sep, rest = address.partition("://")
        if not sep:
            scheme, rest = "http", address
        if scheme not in ("http", "https"):
            raise ValueError(f"ledger address {address!r}: scheme must be http or https")
        self.host, self.port = parse_address(rest.rstrip("/"), "ledger address")
        self.tls: Optional[ssl.SSLContext] = None
        if scheme == "https":
            ca = ca_file or os.environ.get(CA_ENV) or None
            self.tls = ssl.create_default_context(cafile=ca)
        self.seed = seed
        self.timeout_s = timeout_s
        self._node_id: Optional[str] = node_id.lower() if node_id else None
        self._pinned = node_id is not None
        self._conn: Optional[http.client.HTTPConnection] = None

    @classmethod
    def from_key_file(cls, address: str, key_file: str, timeout_s: float = 10.0) -> "LedgerClient":
        return cls(address, KeyFile.load(key_file).seed, timeout_s)

    @classmethod
    def for_validator(cls, validator: Any, seed: bytes, timeout_s: float = 10.0,
                      address: Optional[str] = None) -> "LedgerClient":
        """A client of a genesis validator (``ledger.config.ValidatorInfo``), its node id pinned from genesis."""
        return cls(address or validator.api_address, seed, timeout_s, node_id=validator.public_key.hex())

    def node_id(self) -> str:
        """The id (validator public key, hex) of the node this client signs for; asked once when not given."""
        if self._node_id is None:
            status, data = self.request_raw("GET", "/v1/node", node=ANY_NODE)
            try:
                info = json.loads(data)
                nid = str(info["node_id"]).lower()
            except (ValueError, KeyError, TypeError):
                raise ApiError(status, f"node {self.address} did not say its id: {data[:200]!r}") from None
            if status != 200:
                raise ApiError(status, str(info.get("error") if isinstance(info, dict) else data[:200]))
            if len(nid) != 64 or not all(ch in "0123456789abcdef" for ch in nid):
                raise ApiError(status, f"node {self.address} gave a malformed id")
            self._node_id = nid
        return self._node_id

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "LedgerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------------
    def request_raw(self, method: str, target: str, body: bytes = b"",
                    headers: Optional[dict[str, str]] = None, sign: bool = True,
                    node: Optional[str] = None) -> tuple[int, bytes]:
        """Send one request; returns (status, body). Retries once on a stale keep-alive connection."""
        if sign and node is None:
            node = self.node_id()
        for attempt in (0, 1):
            # Signed per attempt: a retry needs a fresh nonce or the node would refuse it as a replay.
            hdrs = {"Content-Type": "application/json"} if body else {}
            if sign:
                hdrs.update(sign_request(self.seed, method, target, body, node or ANY_NODE))
            hdrs.update(headers or {})
            if self._conn is None:
                if self.tls is not None:
                    self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                                             context=self.tls)
                else:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self._conn.request(method, target, body=body if body or method != "GET" else None,
                                   headers=hdrs)
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                if resp.status == 401 and b"signed for another node" in data and not self._pinned:
                    self._node_id = None  # the address now leads to another node: ask again next time
                return resp.status, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine,
                    http.client.CannotSendRequest, http.client.ResponseNotReady) as exc:
                self.close()
                if attempt == 1 or isinstance(exc, ConnectionRefusedError):
                    raise Unavailable(f"ledger node {self.address} unreachable: {exc}") from None
            except ssl.SSLError as exc:
                self.close()
                raise Unavailable(f"ledger node {self.address}: TLS failed: {exc}") from None
            except (socket.timeout, TimeoutError, OSError) as exc:
                self.close()
                raise Unavailable(f"ledger node {self.address} unreachable: {exc}") from None
        raise Unavailable(f"ledger node {self.address} unreachable")  # pragma: no cover

    def request(self, method: str, path: str, payload: Any = None,
                query: Optional[dict[str, Any]] = None) -> Any:
        """JSON request; returns the decoded JSON answer or raises :class:`ApiError`."""
        target = path + ("?" + urlencode(query) if query else "")
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        status, data = self.request_raw(method, target, body)
        try:
            obj = json.loads(data) if data else {}
        except ValueError:
            obj = None
        if status >= 400:
            reason = obj.get("error") if isinstance(obj, dict) else None
            raise ApiError(status, str(reason or data[:200]))
        if obj is None:
            return data
        return obj

    # -- endpoints -----------------------------------------------------------------------------------------
    def status(self) -> dict:
        return self.request("GET", "/v1/status")

    def submit(self, tx: bytes) -> str:
        """Submit one encoded transaction; returns its hash (hex). Raises ApiError when refused."""
        res = self.request("POST", "/v1/txs", {"tx": base64.b64encode(tx).decode()})
        return res["hash"]

    def submit_many(self, txs: Sequence[bytes]) -> dict:
        """Submit a batch; returns ``{"accepted": [hash...], "rejected": [{"index", "error"}...]}``."""
        return self.request("POST", "/v1/txs/batch", {"txs": [base64.b64encode(t).decode() for t in txs]})

    def tx(self, tx_hash: str) -> dict:
        """Status of a transaction: pending / committed (with height, index and Merkle inclusion proof) /
        unknown (this node has not seen it)."""
        try:
            return self.request("GET", f"/v1/txs/{tx_hash}")
        except ApiError as exc:
            if exc.status == 404:
                return {"status": "unknown", "hash": tx_hash}
            raise

    def block(self, height: int) -> dict:
        return self.request("GET", f"/v1/blocks/{int(height)}")

    def blocks(self, start: int, end: int) -> list[dict]:
        return self.request("GET", "/v1/blocks", query={"from": int(start), "to": int(end)})["blocks"]

    def evidence(self) -> list[dict]:
        return self.request("GET", "/v1/evidence")["evidence"]

    def openapi(self) -> str:
        status, data = self.request_raw("GET", "/openapi.yaml")
        if status != 200:
            raise ApiError(status, data[:200].decode(errors="replace"))
        return data.decode()

    def wait_committed(self, tx_hash: str, timeout_s: float = 30.0, poll_s: float = 0.1) -> dict:
        """Poll until the transaction is committed; raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.tx(tx_hash)
            if st.get("status") == "committed":
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"transaction {tx_hash} not committed after {timeout_s:.0f} s")
            time.sleep(poll_s)


class ClusterClient:
    """Calls any live node of a cluster, failing over to the next on :class:`Unavailable`."""

    def __init__(self, addresses: Iterable[str], seed: bytes, timeout_s: float = 10.0,
                 node_ids: Optional[Sequence[Optional[str]]] = None) -> None:
        addrs = list(addresses)
        ids = list(node_ids) if node_ids is not None else [None] * len(addrs)
        if len(ids) != len(addrs):
            raise ValueError("node_ids must match addresses one to one")
        self.clients = [LedgerClient(a, seed, timeout_s, node_id=n) for a, n in zip(addrs, ids)]
        if not self.clients:
            raise ValueError("at least one ledger address is needed")
        self._next = 0

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def call(self, name: str, *args: Any, **kw: Any) -> Any:
        last: Optional[Exception] = None
        for i in range(len(self.clients)):
            c = self.clients[(self._next + i) % len(self.clients)]
            try:
                out = getattr(c, name)(*args, **kw)
                self._next = (self._next + i) % len(self.clients)
                return out
            except Unavailable as exc:
                last = exc
        raise Unavailable(f"no ledger node reachable ({last})")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *a, **kw: self.call(name, *a, **kw)
