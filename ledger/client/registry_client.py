"""The registry client: the manager's and the pipeline's library side of the risk registry.

:class:`RegistryClient` pseudonymises and encrypts on this side, uploads the wrapped data key to every node's
key store (a quorum must accept it), then submits the signed transaction and waits until it is committed and
applied. Face templates arrive ready-made (the caller embeds the photos: :mod:`pipelines.recognition.enrolment`); the
ledger loads no face model. Nothing here logs a raw identifier or a template. The ``riskmask`` subcommands
built on it are in :mod:`ledger.ops.manager_cli`.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ledger.client import keys as keyring, privacy
from ledger.client.api_client import ApiError, LedgerClient, Unavailable
from ledger.config import ConfigError, Genesis, KeyFile
from ledger.registry import payloads
from ledger.registry.payloads import AnchorTx, EraseTx, SubjectTx
from ledger.types import crypto, merkle
from ledger.types.block import Block, CommitCertificate, Transaction, verify_commit
from riskmask.errors import ServiceError, UserError

logger = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 60.0


class RegistryError(Exception):
    """A registry operation refused by the state (already registered, unknown, erased)."""


@dataclass(frozen=True)
class SearchResult:
    pseudonym: bytes
    status: str  # "live" | "erased" | "unknown"
    version: int = 0
    height: int = 0
    record: Optional[privacy.SubjectRecord] = None


@dataclass(frozen=True)
class Committed:
    pseudonym: bytes
    version: int
    tx_hash: str
    height: int


class RegistryClient:
    """Register, search, update and erase subjects; submit audit anchors. One instance per thread."""

    def __init__(self, genesis: Any, seed: bytes, ring: Optional[keyring.Keyring] = None,
                 addresses: Optional[Sequence[str]] = None, timeout_s: float = 10.0) -> None:
        self.genesis = genesis
        self.chain_id: str = genesis.chain_id
        self.seed = seed
        self.ring = ring
        addrs = list(addresses or [v.api_address for v in genesis.validators])
        self.clients = [LedgerClient(a, seed, timeout_s) for a in addrs]

    @classmethod
    def from_dir(cls, ledger_dir: Path, key_name: str = "manager", keys_dir: Optional[Path] = None,
                 key_file: Optional[Path] = None, need_keyring: bool = True) -> "RegistryClient":
        try:
            genesis = Genesis.load(Path(ledger_dir) / "genesis.json")
            seed = KeyFile.load(key_file or Path(ledger_dir) / "keys" / f"{key_name}.key").seed
        except ConfigError as exc:
            raise UserError(str(exc)) from None
        ring = None
        if need_keyring:
            try:
                ring = keyring.load_keyring(keys_dir)
            except keyring.KeyringError as exc:
                raise UserError(str(exc)) from None
        return cls(genesis, seed, ring)

    def close(self) -> None:
        for c in self.clients:
            c.close()

    # -- transport helpers -------------------------------------------------------------------------------
    def _any(self, fn) -> Any:
        """Call ``fn(client)`` on the first reachable node."""
        errors = []
        for c in self.clients:
            try:
                return fn(c)
            except Unavailable as exc:
                errors.append(str(exc))
        raise ServiceError(f"no ledger node reachable ({errors[-1] if errors else 'no nodes'})")

    def _ring(self) -> keyring.Keyring:
        if self.ring is None:
            raise UserError("this operation needs the privacy keyring (riskmask keys init)")
        return self.ring

    def lookup(self, pseudonym: bytes) -> Optional[dict]:
        def get(c):
            try:
                return c.request("GET", f"/v1/registry/subjects/{pseudonym.hex()}")
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise ServiceError(f"ledger refused the lookup: {exc.reason}") from None

        return self._any(get)

    def find(self, identity: privacy.Identity) -> tuple[bytes, Optional[dict]]:
        """(pseudonym, subject json) trying every pseudonymisation key; the active key's pseudonym if none."""
        ring = self._ring()
        first = None
        for _, key in ring.search_keys():
            p = privacy.pseudonym(key, identity)
            first = first or p
            rec = self.lookup(p)
            if rec is not None:
                return p, rec
        return first, None  # type: ignore[return-value]

    def _upload_key(self, pseudonym: bytes, wrapped: bytes) -> None:
        """Put the wrapped key on every reachable node; a quorum must hold it before the tx is sent."""
        ok, errors = 0, []
        body = {"pseudonym": pseudonym.hex(), "wrapped": base64.b64encode(wrapped).decode()}
        for c in self.clients:
            try:
                c.request("PUT", "/v1/registry/keys", body)
                ok += 1
            except ApiError as exc:
                if exc.status in (401, 403, 409):  # refused for this key or this subject: no point going on
                    raise RegistryError(exc.reason) from None
                errors.append(str(exc))
            except Unavailable as exc:
                errors.append(str(exc))
        if ok < self.genesis.quorum:
            raise ServiceError(f"only {ok} of {len(self.clients)} ledger nodes stored the data key "
                               f"(need {self.genesis.quorum}): {errors[-1] if errors else ''}")

    def _submit(self, kind: int, payload: bytes) -> str:
        key = crypto.PrivateKey.from_seed(self.seed)
        tx = Transaction.create(key, self.chain_id, kind, time.time_ns() // 1000, int(time.time() * 1000), payload)
        raw = tx.encode()

        def send(c):
            try:
                return c.submit(raw)
            except ApiError as exc:
                raise RegistryError(exc.reason) from None

        return self._any(send)

    def _wait(self, tx_hash: str, pseudonym: Optional[bytes] = None, version: int = 0,
              timeout_s: float = COMMIT_TIMEOUT_S) -> int:
        """Wait for commit (and, for subject txs, until the node applied it); returns the height."""
        deadline = time.monotonic() + timeout_s
        st = self._any(lambda c: c.wait_committed(tx_hash, timeout_s))
        height = int(st.get("height", 0))
        while pseudonym is not None:
            rec = self.lookup(pseudonym)
            if rec is not None and rec["version"] >= version:
                break
            if time.monotonic() > deadline:
                raise ServiceError(f"transaction {tx_hash[:16]} committed but not applied in {timeout_s:.0f} s")
            time.sleep(0.1)
        return height

    # -- operations ----------------------------------------------------------------------------------------
    def register(self, identity: privacy.Identity, record: privacy.SubjectRecord) -> Committed:
        record.validate()
        p, cur = self.find(identity)
        if cur is not None:
            raise RegistryError("subject is already registered (use update-risk)" if cur["status"] == "live"
                                else "subject was erased; an erased registration cannot be reused")
        return self._write(payloads.OP_REGISTER, p, 1, record)

    def _write(self, op: int, p: bytes, version: int, record: privacy.SubjectRecord,
               pkey_id: Optional[bytes] = None) -> Committed:
        ring = self._ring()
        if pkey_id is None:
            pkey_id = ring.active_pseudonym
        sealed = privacy.seal_record(record, self.chain_id, p, version, ring.kek, ring.active_kek)
        tx = SubjectTx(op=op, pseudonym=p, pkey_id=pkey_id, version=version, nonce=sealed.nonce,
                       ciphertext=sealed.ciphertext, kek_id=ring.active_kek, key_commitment=sealed.key_commitment)
        payload = payloads.encode(tx)
        self._upload_key(p, sealed.wrapped_key)
        h = self._submit(op, payload)
        return Committed(p, version, h, self._wait(h, p, version))

    def open(self, p: bytes, rec: Mapping[str, Any]) -> privacy.SubjectRecord:
        ring = self._ring()
        wrapped = base64.b64decode(rec["wrapped_key"]) if rec.get("wrapped_key") else None
        if wrapped is None:
            # a node may have missed the upload: ask the others before giving up
            for c in self.clients[1:]:
                try:
                    other = c.request("GET", f"/v1/registry/subjects/{p.hex()}")
                except Exception:  # noqa: BLE001 - any failure just means "not from this node"
                    continue
                if other.get("wrapped_key") and other["version"] == rec["version"]:
                    wrapped = base64.b64decode(other["wrapped_key"])
                    break
        kek = ring.kek_for(privacy.wrapped_kek_id(wrapped)) if wrapped else ring.kek
        return privacy.open_record(base64.b64decode(rec["nonce"]), base64.b64decode(rec["ciphertext"]), wrapped,
                                   self.chain_id, p, int(rec["version"]), kek)

    def search(self, identity: privacy.Identity) -> SearchResult:
        p, rec = self.find(identity)
        if rec is None:
            return SearchResult(p, "unknown")
        if rec["status"] != "live":
            return SearchResult(p, "erased", rec["version"], rec["height"])
        return SearchResult(p, "live", rec["version"], rec["height"], self.open(p, rec))

    def _live(self, identity: privacy.Identity) -> tuple[bytes, dict]:
        p, rec = self.find(identity)
        if rec is None:
            raise RegistryError("unknown subject: no registration matches these identity fields")
        if rec["status"] != "live":
            raise RegistryError("subject was erased")
        return p, rec

    def update(self, identity: privacy.Identity, risk: Optional[int] = None, suspect: Optional[bool] = None,
               attributes: Optional[Mapping[str, str]] = None) -> Committed:
        p, rec = self._live(identity)
        cur = self.open(p, rec)
        attrs = dict(cur.attributes)
        attrs.update(attributes or {})
        new = privacy.SubjectRecord(risk=cur.risk if risk is None else risk,
                                    suspect=cur.suspect if suspect is None else suspect,
                                    templates=cur.templates, attributes=tuple(sorted(attrs.items())),
                                    updated_us=time.time_ns() // 1000)
        new.validate()
        return self._write(payloads.OP_UPDATE, p, int(rec["version"]) + 1, new, bytes.fromhex(rec["pkey_id"]))

    def erase(self, identity: privacy.Identity) -> Committed:
        p, rec = self._live(identity)
        return self.erase_pseudonym(p, int(rec["version"]))

    def erase_pseudonym(self, p: bytes, version: int) -> Committed:
        payload = payloads.encode(EraseTx(pseudonym=p, version=version + 1))
        h = self._submit(payloads.OP_ERASE, payload)
        return Committed(p, version + 1, h, self._wait(h, p, version + 1))

    def rewrap(self, check_only: bool = False) -> tuple[int, int]:
        """Re-seal every live subject whose key is wrapped under an old KEK; returns (stale, rewrapped)."""
        ring = self._ring()
        since, stale, done = 0, 0, 0
        while True:
            page = self._any(lambda c: c.request("GET", "/v1/registry/watchlist", query={"since": since}))
            for rec in page["records"]:
                if rec["status"] != "live" or not rec.get("kek_id") or bytes.fromhex(rec["kek_id"]) == ring.active_kek:
                    continue
                stale += 1
                if check_only:
                    continue
                p = bytes.fromhex(rec["pseudonym"])
                cur = self.open(p, rec)
                self._write(payloads.OP_UPDATE, p, int(rec["version"]) + 1, cur, bytes.fromhex(rec["pkey_id"]))
                done += 1
            since = int(page["next_since"])
            if page["complete"]:
                return stale, done

    def submit_anchor(self, anchor: AnchorTx, wait: bool = True) -> tuple[str, int]:
        """Submit an audit anchor (pipeline role); returns (tx hash hex, height or 0 when not waiting)."""
        h = self._submit(payloads.OP_ANCHOR, payloads.encode(anchor))
        return h, (self._wait(h) if wait else 0)

    def anchor_proof(self, tx_hash: str) -> dict:
        """The anchor's inclusion proof, verified against its block header and commit certificate.

        Needs a key whose role may read blocks (auditor or manager). Returns the node's proof plus the
        decoded anchor; raises :class:`RegistryError` when anything does not verify.
        """
        try:
            st = self._any(lambda c: c.tx(tx_hash))
        except ApiError as exc:
            raise RegistryError(f"unknown transaction {tx_hash[:16]}: {exc.reason}") from None
        if st.get("status") != "committed":
            raise RegistryError(f"transaction {tx_hash[:16]} is {st.get('status')}")
        try:
            blk_json = self._any(lambda c: c.block(int(st["height"])))
        except ApiError as exc:
            raise RegistryError(f"cannot read block {st['height']}: {exc.reason}") from None
        block = Block.decode(base64.b64decode(blk_json["block"]))
        cert = CommitCertificate.decode(base64.b64decode(blk_json["cert"]))
        try:
            verify_commit(cert, self.chain_id, self.genesis.public_keys(), block.hash(), block.header.height)
        except Exception as exc:  # noqa: BLE001 - any certificate failure means: do not trust this proof
            raise RegistryError(f"block {block.header.height} certificate does not verify: {exc}") from None
        pr = st["proof"]
        idx = int(pr["leaf_index"])
        tx = block.txs[idx]
        if tx.hash().hex() != tx_hash or bytes.fromhex(pr["root"]) != block.header.tx_root:
            raise RegistryError("proof does not match the block")
        try:
            merkle.verify_inclusion(merkle.leaf_hash(tx.encode()), idx, int(pr["tree_size"]),
                                    [bytes.fromhex(x) for x in pr["path"]], block.header.tx_root)
        except Exception as exc:  # noqa: BLE001 - ProofError
            raise RegistryError(f"inclusion proof does not verify: {exc}") from None
        anchor = payloads.decode(tx.payload)
        if not isinstance(anchor, AnchorTx):
            raise RegistryError("transaction is not an audit anchor")
        return {"tx_hash": tx_hash, "height": block.header.height, "block_hash": block.hash().hex(),
                "verified": True, "proof": pr, "commit_signers": [s.validator for s in cert.sigs],
                "anchor": {"camera_id": anchor.camera_id, "window_start_us": anchor.window_start_us,
                           "window_end_us": anchor.window_end_us, "record_count": anchor.record_count,
                           "merkle_root": anchor.merkle_root.hex(), "audit_index": anchor.audit_index}}
