"""SQLite index of the registry state one node derives from its finalized blocks (``registry.db``).

* ``subjects`` — per pseudonym the latest committed version, nonce, ciphertext, KEK id, key commitment and
  whether it was erased (erased rows keep no ciphertext: the chain still has it, but it is unopenable);
* ``anchors`` — audit anchors (camera, window, record count, Merkle root) by transaction hash;
* ``pending_keys`` — wrapped data keys uploaded by a manager before their transaction commits, keyed by the
  SHA-256 commitment the transaction carries;
* ``missing_keys`` — live subjects whose wrapped key this node has not received yet;
* ``state_digests`` — the registry state digest (:mod:`ledger.registry.digest`) at every height whose block
  changed a subject, written in the same SQLite transaction as the block, so that the digest at any applied
  height can be served after the node has moved on (``digest_at``);
* ``meta`` — the applied height, and ``digests_from``: the first height whose digest this index can answer
  (0 for an index built from genesis; an index made before digests were kept starts at its applied height).

The index is derived state: lost or behind, it is rebuilt from the stored blocks. Writes of one block are
one SQLite transaction (:meth:`RegistryIndex.execute_block`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from ledger.registry import digest as state_digest

PENDING_KEY_TTL_S = 24 * 3600

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
CREATE TABLE IF NOT EXISTS state_digests (
    height INTEGER PRIMARY KEY,
    digest BLOB NOT NULL,
    subjects INTEGER NOT NULL
);
"""

_ENTRY_COLS = "pseudonym, version, status, height, tx_hash, nonce, ciphertext"



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
        self._entries: Optional[dict[bytes, bytes]] = None  # pseudonym -> digest entry, loaded on first use
        with self._lock:
            if self._db.execute("SELECT v FROM meta WHERE k='digests_from'").fetchone() is None:
                self._start_digests()

    def _start_digests(self) -> None:
        """First open of this index by a version that keeps digests: they start at the applied height."""
        row = self._db.execute("SELECT v FROM meta WHERE k='applied_height'").fetchone()
        applied = int(row[0]) if row else 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if applied > 0:
                entries = self._load_entries()
                self._db.execute("INSERT OR REPLACE INTO state_digests VALUES (?, ?, ?)",
                                 (applied, state_digest.state_digest(entries.values()), len(entries)))
            self._db.execute("INSERT INTO meta (k, v) VALUES ('digests_from', ?)", (applied,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _load_entries(self) -> dict[bytes, bytes]:
        if self._entries is None:
            rows = self._db.execute(f"SELECT {_ENTRY_COLS} FROM subjects").fetchall()
            self._entries = {bytes(r[0]): self._entry(r) for r in rows}
        return self._entries

    @staticmethod
    def _entry(r: tuple) -> bytes:
        return state_digest.entry(bytes(r[0]), int(r[1]), str(r[2]), int(r[3]), bytes(r[4]),
                                  None if r[5] is None else bytes(r[5]), None if r[6] is None else bytes(r[6]))

    def digest_at(self, height: int) -> Optional[tuple[bytes, int, int]]:
        """(state digest, subject count, applied height) of the registry state at ``height``; None when that
        height is not applied yet or older than the first digest this index kept (see ``digest_range``)."""
        with self._lock:
            applied_row = self._db.execute("SELECT v FROM meta WHERE k='applied_height'").fetchone()
            applied = int(applied_row[0]) if applied_row else 0
            start_row = self._db.execute("SELECT v FROM meta WHERE k='digests_from'").fetchone()
            start = int(start_row[0]) if start_row else applied
            if height > applied or height < start:
                return None
            row = self._db.execute("SELECT digest, subjects FROM state_digests WHERE height <= ? "
                                   "ORDER BY height DESC LIMIT 1", (height,)).fetchone()
        if row is None:
            return state_digest.EMPTY_DIGEST, 0, applied
        return bytes(row[0]), int(row[1]), applied

    def digest_range(self) -> tuple[int, int]:
        """(first, last) heights whose state digest this index can serve."""
        with self._lock:
            rows = dict(self._db.execute("SELECT k, v FROM meta WHERE k IN ('applied_height', 'digests_from')"))
        applied = int(rows.get("applied_height", 0))
        return int(rows.get("digests_from", applied)), applied

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

    def execute_block(self, height: int, ops: list[tuple], changed: Iterable[bytes] = ()) -> None:
        """Apply SQL effects of one block atomically and record the applied height; ``changed`` names the
        subjects the block changed, whose new state digest is recorded at ``height`` in the same transaction."""
        changed = sorted(set(changed))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in ops:
                    self._db.execute(sql, args)
                if changed:
                    entries = dict(self._load_entries())
                    for i in range(0, len(changed), 500):
                        part = changed[i:i + 500]
                        rows = self._db.execute(f"SELECT {_ENTRY_COLS} FROM subjects WHERE pseudonym IN "
                                                f"({','.join('?' * len(part))})", part).fetchall()
                        entries.update((bytes(r[0]), self._entry(r)) for r in rows)
                    self._db.execute("INSERT OR REPLACE INTO state_digests VALUES (?, ?, ?)",
                                     (height, state_digest.state_digest(entries.values()), len(entries)))
                self._db.execute("DELETE FROM pending_keys WHERE received < ?", (time.time() - PENDING_KEY_TTL_S,))
                self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('applied_height', ?)", (height,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._entries = None  # reloaded from the database on next use
                raise
            if changed:
                self._entries = entries
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


__all__ = ["RegistryIndex", "PENDING_KEY_TTL_S"]
