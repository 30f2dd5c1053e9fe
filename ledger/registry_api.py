"""The risk registry on a ledger node: subject index, deletable key store hooks and API endpoints.

A node never decrypts anything. It keeps, next to its block store, an index of the registry state derived
from committed blocks (``registry.db`` in the node data directory, rebuilt from blocks if lost):

* ``subjects`` — per pseudonym the latest committed version, nonce, ciphertext, KEK id, key commitment and
  whether it was erased (erased rows keep no ciphertext: the chain still has it, but it is unopenable);
* ``anchors`` — audit anchors (camera, window, record count, Merkle root) by transaction hash;
* ``pending_keys`` — wrapped data keys uploaded by a manager before their transaction commits, keyed by the
  SHA-256 commitment the transaction carries. On commit the matching key moves to the node store's
  ``wrapped_keys`` table; on erasure it is deleted there (crypto-shredding) and every pending key of the
  pseudonym is dropped.

Hooks the node calls: :meth:`RegistryService.check_tx` at admission (mempool) and
:meth:`RegistryService.apply_block` when a block is finalized, plus :meth:`RegistryService.install` to add the
endpoints to the API table. A node that missed a key upload (it was down) lists it in ``missing_keys``;
:meth:`RegistryService.repair_keys` with :func:`peer_key_fetcher` fetches it from peers, checked against the
committed commitment. Apply is deterministic: an invalid transaction inside a block (e.g. a second
registration of the same pseudonym in one block) leaves the state unchanged on every node alike.
"""

from __future__ import annotations

import base64
import binascii
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol

from ledger import payloads
from ledger.payloads import AnchorTx, EraseTx, PayloadError, SubjectTx

logger = logging.getLogger(__name__)

MANAGER_ROLES = frozenset({"manager", "validator"})
WATCHLIST_ROLES = frozenset({"pipeline", "manager", "validator"})
WATCHLIST_PAGE = 500
PENDING_KEY_TTL_S = 24 * 3600
WRAPPED_KEY_LEN = 69  # privacy.WRAPPED_KEY_LEN (not imported: nodes need no numpy)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subjects (
    pseudonym BLOB PRIMARY KEY,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    pkey_id BLOB,
    nonce BLOB,
    ciphertext BLOB,
    kek_id BLOB,
    commitment BLOB,
    height INTEGER NOT NULL,
    tx_hash BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subjects_height ON subjects (height);
CREATE TABLE IF NOT EXISTS anchors (
    tx_hash BLOB PRIMARY KEY,
    height INTEGER NOT NULL,
    camera_id TEXT NOT NULL,
    window_start_us INTEGER NOT NULL,
    window_end_us INTEGER NOT NULL,
    record_count INTEGER NOT NULL,
    merkle_root BLOB NOT NULL,
    audit_index INTEGER NOT NULL,
    audit_block_hash BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS anchors_camera ON anchors (camera_id, window_start_us);
CREATE TABLE IF NOT EXISTS pending_keys (
    commitment BLOB PRIMARY KEY,
    pseudonym BLOB NOT NULL,
    wrapped BLOB NOT NULL,
    received REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS missing_keys (
    pseudonym BLOB PRIMARY KEY,
    commitment BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""


class RegistryRejected(ValueError):
    """A registry transaction that the current state does not allow (one readable reason)."""


class KeyStore(Protocol):
    """The node store's deletable key table (:class:`ledger.store.Store`)."""

    def put_wrapped_key(self, subject: bytes, wrapped: bytes, height: int = 0) -> None: ...

    def get_wrapped_key(self, subject: bytes) -> Optional[bytes]: ...

    def delete_wrapped_key(self, subject: bytes) -> bool: ...


def _commitment(wrapped: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(b"riskmask-wrapped-key/v1" + wrapped).digest()


def is_registry_payload(payload: bytes) -> bool:
    return payload[:4] == payloads.MAGIC


class RegistryIndex:
    """SQLite index of the registry state of one node (thread-safe, short calls)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def applied_height(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k='applied_height'").fetchone()
        return int(row[0]) if row else 0

    def subject(self, pseudonym: bytes) -> Optional[dict[str, Any]]:
        with self._lock:
            row = self._db.execute("SELECT pseudonym, version, status, pkey_id, nonce, ciphertext, kek_id, "
                                   "commitment, height, tx_hash FROM subjects WHERE pseudonym=?",
                                   (pseudonym,)).fetchone()
        return None if row is None else self._row(row)

    @staticmethod
    def _row(row: tuple) -> dict[str, Any]:
        keys = ("pseudonym", "version", "status", "pkey_id", "nonce", "ciphertext", "kek_id", "commitment",
                "height", "tx_hash")
        return {k: (bytes(v) if isinstance(v, (bytes, memoryview)) else v) for k, v in zip(keys, row)}

    def changed_since(self, height: int, upto: int, limit: Optional[int] = None) -> list[dict[str, Any]]:
        """Subjects whose last change is at a height in (height, upto], ascending by height."""
        sql = ("SELECT pseudonym, version, status, pkey_id, nonce, ciphertext, kek_id, commitment, height, "
               "tx_hash FROM subjects WHERE height > ? AND height <= ? ORDER BY height, pseudonym")
        args: tuple = (height, upto)
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [self._row(r) for r in rows]

    def anchor(self, tx_hash: bytes) -> Optional[dict[str, Any]]:
        with self._lock:
            row = self._db.execute("SELECT tx_hash, height, camera_id, window_start_us, window_end_us, "
                                   "record_count, merkle_root, audit_index, audit_block_hash FROM anchors "
                                   "WHERE tx_hash=?", (tx_hash,)).fetchone()
        if row is None:
            return None
        keys = ("tx_hash", "height", "camera_id", "window_start_us", "window_end_us", "record_count",
                "merkle_root", "audit_index", "audit_block_hash")
        return {k: (bytes(v) if isinstance(v, (bytes, memoryview)) else v) for k, v in zip(keys, row)}

    def put_pending(self, commitment: bytes, pseudonym: bytes, wrapped: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pending_keys (commitment, pseudonym, wrapped, received) "
                             "VALUES (?, ?, ?, ?)", (commitment, pseudonym, wrapped, time.time()))

    def pending(self, commitment: bytes) -> Optional[tuple[bytes, bytes]]:
        with self._lock:
            row = self._db.execute("SELECT pseudonym, wrapped FROM pending_keys WHERE commitment=?",
                                   (commitment,)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def missing(self) -> list[tuple[bytes, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT pseudonym, commitment FROM missing_keys").fetchall()
        return [(bytes(p), bytes(c)) for p, c in rows]

    def clear_missing(self, pseudonym: bytes) -> None:
        with self._lock:
            self._db.execute("DELETE FROM missing_keys WHERE pseudonym=?", (pseudonym,))

    def execute_block(self, height: int, ops: list[tuple]) -> None:
        """Apply SQL effects of one block atomically and record the applied height."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in ops:
                    self._db.execute(sql, args)
                self._db.execute("DELETE FROM pending_keys WHERE received < ?", (time.time() - PENDING_KEY_TTL_S,))
                self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('applied_height', ?)", (height,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class RegistryService:
    """Registry state of one node: admission checks, block application, endpoints."""

    def __init__(self, index: RegistryIndex, key_store: KeyStore, chain_height: Any = None) -> None:
        self.index = index
        self.keys = key_store
        self._height = chain_height or (lambda: index.applied_height)

    # -- admission and application ---------------------------------------------------------------------
    def check_tx(self, payload: bytes, role: str = "validator", kind: Optional[int] = None) -> Optional[str]:
        """None when the payload is acceptable now, else a one-line reason (refused at admission).

        With ``kind`` (the transaction's kind code), register/update/erase transactions must carry a registry
        payload of that same op, and a registry payload must match its transaction's kind.
        """
        if not is_registry_payload(payload):
            if kind in (payloads.OP_REGISTER, payloads.OP_UPDATE, payloads.OP_ERASE):
                return f"invalid registry transaction: a {payloads.OP_NAMES[kind]} needs a registry payload"
            return None
        try:
            tx = payloads.decode(payload)
            if kind is not None and kind != tx.op:
                raise PayloadError(f"payload op {payloads.op_name(tx)} does not match transaction kind {kind}")
            self._check_state(tx)
        except (PayloadError, RegistryRejected) as exc:
            return f"invalid registry transaction: {exc}"
        kind_name = payloads.op_name(tx)
        if role == "manager" and kind_name == "anchor" or role == "pipeline" and kind_name != "anchor":
            return f"forbidden: role {role} may not submit {kind_name} transactions"
        return None

    def _check_state(self, tx: payloads.RegistryTx, overlay: Optional[dict] = None) -> None:
        if isinstance(tx, AnchorTx):
            return
        cur = (overlay or {}).get(tx.pseudonym) or self.index.subject(tx.pseudonym)
        if isinstance(tx, SubjectTx) and tx.op == payloads.OP_REGISTER:
            if cur is not None:
                raise RegistryRejected("subject already registered" if cur["status"] == "live"
                                       else "subject was erased; an erased pseudonym cannot be reused")
            return
        if cur is None:
            raise RegistryRejected("unknown subject")
        if cur["status"] == "erased":
            raise RegistryRejected("subject was erased")
        if tx.version != cur["version"] + 1:
            raise RegistryRejected(f"version {tx.version} does not follow committed version {cur['version']}")

    def apply_block(self, height: int, txs: Iterable[tuple[bytes, bytes]]) -> None:
        """Apply the registry transactions (tx_hash, payload) of a finalized block, in block order."""
        if height <= self.index.applied_height:
            return  # replay after restart: already applied
        ops: list[tuple] = []
        final_key: dict[bytes, Optional[bytes]] = {}  # last decision per subject: key to store, or delete
        overlay: dict[bytes, dict] = {}
        for tx_hash, payload in txs:
            if not is_registry_payload(payload):
                continue
            try:
                tx = payloads.decode(payload)
                self._check_state(tx, overlay)
            except (PayloadError, RegistryRejected) as exc:
                logger.warning("block %d: registry tx %s has no effect: %s", height, tx_hash.hex()[:16], exc)
                continue
            if isinstance(tx, AnchorTx):
                ops.append(("INSERT OR IGNORE INTO anchors VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (tx_hash, height, tx.camera_id, tx.window_start_us, tx.window_end_us,
                             tx.record_count, tx.merkle_root, tx.audit_index, tx.audit_block_hash)))
            elif isinstance(tx, SubjectTx):
                overlay[tx.pseudonym] = {"status": "live", "version": tx.version}
                ops.append(("INSERT OR REPLACE INTO subjects VALUES (?, ?, 'live', ?, ?, ?, ?, ?, ?, ?)",
                            (tx.pseudonym, tx.version, tx.pkey_id, tx.nonce, tx.ciphertext, tx.kek_id,
                             tx.key_commitment, height, tx_hash)))
                pend = self.index.pending(tx.key_commitment)
                if pend is not None and pend[0] == tx.pseudonym:
                    final_key[tx.pseudonym] = pend[1]
                    ops.append(("DELETE FROM pending_keys WHERE commitment=?", (tx.key_commitment,)))
                    ops.append(("DELETE FROM missing_keys WHERE pseudonym=?", (tx.pseudonym,)))
                else:
                    # the key may still arrive (late upload, peer repair); the previous version's key is stale
                    final_key[tx.pseudonym] = None
                    ops.append(("INSERT OR REPLACE INTO missing_keys VALUES (?, ?)",
                                (tx.pseudonym, tx.key_commitment)))
                    logger.warning("block %d: no wrapped key uploaded for subject commitment %s", height,
                                   tx.key_commitment.hex()[:16])
            elif isinstance(tx, EraseTx):
                overlay[tx.pseudonym] = {"status": "erased", "version": tx.version}
                ops.append(("UPDATE subjects SET status='erased', version=?, nonce=NULL, ciphertext=NULL, "
                            "commitment=NULL, height=?, tx_hash=? WHERE pseudonym=?",
                            (tx.version, height, tx_hash, tx.pseudonym)))
                ops.append(("DELETE FROM pending_keys WHERE pseudonym=?", (tx.pseudonym,)))
                ops.append(("DELETE FROM missing_keys WHERE pseudonym=?", (tx.pseudonym,)))
                final_key[tx.pseudonym] = None
        # Deletions before the index commit: a crash in between must never leave an erased key behind
        # (a replay does not revisit applied heights). Puts after: a lost put is repaired like a missed upload.
        for p, w in final_key.items():
            if w is None:
                self.keys.delete_wrapped_key(p)
        self.index.execute_block(height, ops)
        for p, w in final_key.items():
            if w is not None:
                self.keys.put_wrapped_key(p, w, height)

    def missing_keys(self) -> list[tuple[bytes, bytes]]:
        """(pseudonym, commitment) of live subjects whose wrapped key this node does not hold."""
        return self.index.missing()

    def repair_keys(self, fetch: Callable[[bytes], Optional[bytes]]) -> int:
        """Fill missing wrapped keys with ``fetch(pseudonym)`` (e.g. from peers); only a key matching the
        committed commitment is stored. Returns how many were repaired."""
        fixed = 0
        for p, commitment in self.missing_keys():
            try:
                wrapped = fetch(p)
            except Exception as exc:  # noqa: BLE001 - a peer failure only delays the repair
                logger.debug("key repair for %s failed: %s", p.hex()[:12], type(exc).__name__)
                continue
            if wrapped is not None and _commitment(wrapped) == commitment:
                self.upload_key(p, wrapped)
                fixed += 1
        return fixed

    def upload_key(self, pseudonym: bytes, wrapped: bytes) -> bytes:
        """Accept a wrapped key before (or after) its transaction commits; returns its commitment."""
        if len(pseudonym) != payloads.PSEUDONYM_LEN:
            raise RegistryRejected("pseudonym must be 32 bytes")
        if len(wrapped) != WRAPPED_KEY_LEN:
            raise RegistryRejected(f"wrapped key must be {WRAPPED_KEY_LEN} bytes")
        commitment = _commitment(wrapped)
        cur = self.index.subject(pseudonym)
        if cur is not None and cur["status"] == "erased":
            raise RegistryRejected("subject was erased")
        if cur is not None and cur["commitment"] == commitment:
            self.keys.put_wrapped_key(pseudonym, wrapped, cur["height"])  # late upload of a committed key
            self.index.clear_missing(pseudonym)
        else:
            self.index.put_pending(commitment, pseudonym, wrapped)
        return commitment

    def subject_json(self, pseudonym: bytes, include_key: bool = True) -> Optional[dict[str, Any]]:
        row = self.index.subject(pseudonym)
        if row is None:
            return None
        wrapped = self.keys.get_wrapped_key(pseudonym) if include_key and row["status"] == "live" else None
        if wrapped is not None and _commitment(wrapped) != row["commitment"]:
            wrapped = None  # a key of another version: never serve a mismatched key
        return _subject_out(row, wrapped)

    def watchlist_json(self, since: int, limit: int = WATCHLIST_PAGE) -> dict[str, Any]:
        """Subject records changed after height ``since`` (still encrypted), paged by whole heights."""
        applied = self.index.applied_height
        rows = self.index.changed_since(since, applied, limit + 1)
        next_since = applied
        if len(rows) > limit:
            cut = rows[limit]["height"]
            rows = [r for r in rows if r["height"] < cut]
            if rows:
                next_since = cut - 1
            else:  # one height with more than a page of changes: return all of that height
                rows = self.index.changed_since(cut - 1, cut)
                next_since = cut
        out = []
        for row in rows:
            wrapped = self.keys.get_wrapped_key(row["pseudonym"]) if row["status"] == "live" else None
            if wrapped is not None and _commitment(wrapped) != row["commitment"]:
                wrapped = None
            out.append(_subject_out(row, wrapped))
        return {"height": applied, "since": since, "next_since": next_since,
                "complete": next_since >= applied, "records": out}

    # -- endpoints ---------------------------------------------------------------------------------------
    def install(self, api: Any) -> None:
        """Add the registry endpoints to a :class:`ledger.api.LedgerApi`."""
        api.add("PUT", "/v1/registry/keys", self._h_upload_key, MANAGER_ROLES, "registry_upload_key",
                max_body=4096)
        api.add("GET", "/v1/registry/subjects/{pseudonym:hex}", self._h_subject, WATCHLIST_ROLES,
                "registry_subject")
        api.add("GET", "/v1/registry/watchlist", self._h_watchlist, WATCHLIST_ROLES, "registry_watchlist")
        api.add("GET", "/v1/registry/anchors/{tx_hash:hex}", self._h_anchor,
                frozenset({"pipeline", "manager", "auditor", "validator"}), "registry_anchor")

    async def _h_upload_key(self, req: Any) -> Any:
        from ledger.httpserver import HttpError, Response

        body = req.json()
        if not isinstance(body, dict) or set(body) != {"pseudonym", "wrapped"}:
            raise HttpError(400, 'body must be {"pseudonym": "<hex>", "wrapped": "<base64>"}')
        try:
            pseudonym = bytes.fromhex(body["pseudonym"])
            wrapped = base64.b64decode(body["wrapped"], validate=True)
        except (ValueError, TypeError, binascii.Error):
            raise HttpError(400, "pseudonym must be hex and wrapped base64") from None
        try:
            commitment = self.upload_key(pseudonym, wrapped)
        except RegistryRejected as exc:
            raise HttpError(409 if "erased" in str(exc) else 400, str(exc)) from None
        return Response.json({"commitment": commitment.hex()})

    async def _h_subject(self, req: Any) -> Any:
        from ledger.httpserver import HttpError, Response

        hx = req.params["pseudonym"]
        if len(hx) != 64:
            raise HttpError(400, "pseudonym must be 64 hex digits")
        out = self.subject_json(bytes.fromhex(hx))
        if out is None:
            raise HttpError(404, "unknown subject")
        out["chain_height"] = self.index.applied_height
        return Response.json(out)

    async def _h_watchlist(self, req: Any) -> Any:
        from ledger.httpserver import HttpError, Response

        since = req.query.get("since", "0")
        if not since.isdigit() or len(since) > 18:
            raise HttpError(400, "since must be a non-negative integer height")
        return Response.json(self.watchlist_json(int(since)))

    async def _h_anchor(self, req: Any) -> Any:
        from ledger.httpserver import HttpError, Response

        hx = req.params["tx_hash"]
        if len(hx) != 64:
            raise HttpError(400, "transaction hash must be 64 hex digits")
        row = self.index.anchor(bytes.fromhex(hx))
        if row is None:
            raise HttpError(404, "no committed anchor with this transaction hash")
        return Response.json({k: (v.hex() if isinstance(v, bytes) else v) for k, v in row.items()})


def _b64(b: Optional[bytes]) -> Optional[str]:
    return None if b is None else base64.b64encode(b).decode("ascii")


def _subject_out(row: dict[str, Any], wrapped: Optional[bytes]) -> dict[str, Any]:
    return {"pseudonym": row["pseudonym"].hex(), "status": row["status"], "version": row["version"],
            "height": row["height"], "tx_hash": row["tx_hash"].hex(),
            "pkey_id": row["pkey_id"].hex() if row["pkey_id"] else None,
            "kek_id": row["kek_id"].hex() if row["kek_id"] else None,
            "nonce": _b64(row["nonce"]), "ciphertext": _b64(row["ciphertext"]),
            "commitment": row["commitment"].hex() if row["commitment"] else None,
            "wrapped_key": _b64(wrapped)}


def peer_key_fetcher(addresses: Iterable[str], seed: bytes, timeout_s: float = 5.0) -> Callable[[bytes], Optional[bytes]]:
    """``fetch(pseudonym)`` asking peer nodes (validator key ``seed``) for a subject's wrapped key."""
    from ledger.client import ApiError, LedgerClient, Unavailable

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
