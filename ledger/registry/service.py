"""The registry application of one node: admission, block application and the deletable key store hooks.

The node drives it through an ABCI-like interface:

* :meth:`RegistryService.check_tx` (admission, CheckTx): the kinds table (:mod:`ledger.registry.kinds`:
  kind, payload operation, sender role) and then the current state (a registration of a new pseudonym, an
  update or erasure of the next version of a live subject);
* proposal validation (ProcessProposal) is the table's stateless check, run by the node on every
  transaction of a proposed block (``ledger.node.node._validate_block``), so honest nodes vote nil on a block
  carrying a transaction the table refuses;
* :meth:`RegistryService.apply_block` (FinalizeBlock): applies a finalized block in order. A transaction
  the table refuses (it can only be there if a quorum misbehaved) or that the state does not allow has no
  effect, on every node alike (apply is deterministic).

Each block that changes a subject records the registry state digest at its height (:mod:`ledger.registry.digest`,
in the index's transaction); :meth:`RegistryService.digest_json` serves it and each watchlist page carries the
digest at the page's height, so a client can check a watchlist against f + 1 nodes.

Wrapped data keys: a manager uploads a subject's wrapped key before its transaction commits
(:meth:`RegistryService.upload_key`); on commit it moves to the node store's ``wrapped_keys`` table, on
erasure it is deleted there (crypto-shredding). A node that missed an upload lists it in ``missing_keys``;
:meth:`RegistryService.repair_keys` fetches it from peers, checked against the committed commitment.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any, Callable, Iterable, Optional, Protocol

from ledger.registry import kinds, payloads
from ledger.registry.kinds import KindError
from ledger.registry.payloads import AnchorTx, EraseTx, PayloadError, SubjectTx
from ledger.registry.state import RegistryIndex

logger = logging.getLogger(__name__)

WATCHLIST_PAGE = 500
WRAPPED_KEY_LEN = 69  # privacy.WRAPPED_KEY_LEN (not imported: nodes need no numpy)

RoleOf = Callable[[bytes], Optional[str]]  # sender public key -> its role, None for an unknown key


class RegistryRejected(ValueError):
    """A registry transaction that the current state does not allow (one readable reason)."""


class KeyStore(Protocol):
    """The node store's deletable key table (:class:`ledger.node.store.Store`)."""

    def put_wrapped_key(self, subject: bytes, wrapped: bytes, height: int = 0) -> None: ...

    def get_wrapped_key(self, subject: bytes) -> Optional[bytes]: ...

    def delete_wrapped_key(self, subject: bytes) -> bool: ...


class TxLike(Protocol):
    """What the application reads of a ledger transaction (:class:`ledger.types.block.Transaction`)."""

    kind: int
    sender: bytes
    payload: bytes


def key_commitment(wrapped: bytes) -> bytes:
    """The commitment a subject transaction carries for its wrapped data key."""
    return hashlib.sha256(b"riskmask-wrapped-key/v1" + wrapped).digest()


class RegistryService:
    """Registry state of one node: admission checks, block application, key store, JSON views.

    ``role_of`` maps a transaction sender's public key to its role (the cluster's client registry); apply
    refuses what the kinds table refuses for that role. Without it only kind and payload are checked.
    """

    def __init__(self, index: RegistryIndex, key_store: KeyStore, chain_height: Any = None,
                 role_of: Optional[RoleOf] = None) -> None:
        self.index = index
        self.keys = key_store
        self._height = chain_height or (lambda: index.applied_height)
        self._role_of = role_of

    # -- admission and application ---------------------------------------------------------------------
    def check_tx(self, kind: int, payload: bytes, role: Optional[str] = None) -> Optional[str]:
        """None when a transaction of ``kind`` with ``payload`` from a sender of ``role`` is acceptable now,
        else a one-line reason (a role refusal starts with "forbidden")."""
        try:
            tx = kinds.classify(kind, payload, role)
            if tx is not None:
                self._check_state(tx)
        except KindError as exc:
            return str(exc) if exc.forbidden else f"invalid transaction: {exc}"
        except RegistryRejected as exc:
            return f"invalid registry transaction: {exc}"
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

    def _classify_committed(self, tx: TxLike) -> Optional[payloads.RegistryTx]:
        """The table's verdict on a committed transaction (raises KindError)."""
        role: Optional[str] = None
        if self._role_of is not None:
            role = self._role_of(tx.sender)
            if role is None:
                raise KindError("sender is not a registered client", forbidden=True)
        return kinds.classify(tx.kind, tx.payload, role)

    def apply_block(self, height: int, txs: Iterable[tuple[bytes, TxLike]]) -> list[tuple[bytes, str]]:
        """Apply the transactions (tx_hash, transaction) of a finalized block, in block order.

        Returns the transactions that had no effect, with the reason: refused by the kinds table (a wrong
        payload operation for the kind, a sender role that may not submit it) or by the state.
        """
        if height <= self.index.applied_height:
            return []  # replay after restart: already applied
        ops: list[tuple] = []
        refused: list[tuple[bytes, str]] = []
        final_key: dict[bytes, Optional[bytes]] = {}  # last decision per subject: key to store, or delete
        overlay: dict[bytes, dict] = {}
        for tx_hash, ltx in txs:
            try:
                tx = self._classify_committed(ltx)
            except KindError as exc:
                logger.error("block %d: tx %s refused by the kinds table, no effect: %s", height,
                             tx_hash.hex()[:16], exc)
                refused.append((tx_hash, str(exc)))
                continue
            if tx is None:
                continue  # an opaque anchor: anchors nothing
            try:
                self._check_state(tx, overlay)
            except (PayloadError, RegistryRejected) as exc:
                logger.warning("block %d: registry tx %s has no effect: %s", height, tx_hash.hex()[:16], exc)
                refused.append((tx_hash, str(exc)))
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
        self.index.execute_block(height, ops, changed=[p for p in final_key])
        for p, w in final_key.items():
            if w is not None:
                self.keys.put_wrapped_key(p, w, height)
        return refused

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
            if wrapped is not None and key_commitment(wrapped) == commitment:
                self.upload_key(p, wrapped)
                fixed += 1
        return fixed

    def upload_key(self, pseudonym: bytes, wrapped: bytes) -> bytes:
        """Accept a wrapped key before (or after) its transaction commits; returns its commitment."""
        if len(pseudonym) != payloads.PSEUDONYM_LEN:
            raise RegistryRejected("pseudonym must be 32 bytes")
        if len(wrapped) != WRAPPED_KEY_LEN:
            raise RegistryRejected(f"wrapped key must be {WRAPPED_KEY_LEN} bytes")
        commitment = key_commitment(wrapped)
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
        if wrapped is not None and key_commitment(wrapped) != row["commitment"]:
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
            if wrapped is not None and key_commitment(wrapped) != row["commitment"]:
                wrapped = None
            out.append(_subject_out(row, wrapped))
        at = self.index.digest_at(applied)
        return {"height": applied, "since": since, "next_since": next_since,
                "complete": next_since >= applied, "records": out,
                "digest": at[0].hex() if at is not None else None}

    def digest_json(self, height: Optional[int] = None) -> Optional[dict[str, Any]]:
        """The registry state digest at ``height`` (default: the applied height); None when this node has not
        applied that height yet or kept no digest that old."""
        h = self.index.applied_height if height is None else height
        at = self.index.digest_at(h)
        if at is None:
            return None
        digest, subjects, applied = at
        return {"height": h, "applied_height": applied, "digest": digest.hex(), "subjects": subjects}

    def install(self, api: Any) -> None:
        """Add the registry endpoints to a :class:`ledger.rpc.api.LedgerApi` (:mod:`ledger.registry.endpoints`)."""
        from ledger.registry.endpoints import install  # cycle: ledger.registry.endpoints imports this module

        install(self, api)


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



__all__ = ["RegistryService", "RegistryRejected", "KeyStore", "TxLike", "RoleOf", "key_commitment", "WATCHLIST_PAGE", "WRAPPED_KEY_LEN"]
