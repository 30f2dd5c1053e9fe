"""Durable per-node storage in SQLite (WAL journal, synchronous=FULL: a commit survives power loss).

Tables:

* ``blocks`` — height -> canonical block bytes, commit certificate bytes, block hash, block time; a SHA-256 of
  each stored blob is checked on read so silent corruption fails loudly instead of serving a bad block.
* ``txs`` — transaction hash -> (height, index in block): the tx index behind status and inclusion proofs.
* ``signed_votes`` — every vote/proposal this validator signed, keyed by (height, round, step). It is written
  and committed BEFORE the message leaves the node, so after a crash the node never signs a conflicting
  message for a step it already signed (no double-sign).
* ``evidence`` — misbehaviour seen (equivocating votes/proposals), kept for operators and auditors.
* ``wrapped_keys`` — the deletable key store: wrapped per-subject data keys by subject pseudonym. It is not
  part of any block hash, so deleting a row (crypto-shredding on erasure) leaves the chain verifiable.
  ``secure_delete`` is on and deletion checkpoints the WAL, so deleted key bytes do not linger in the file.
* ``meta`` — chain id and genesis hash: a data directory of another chain is refused.
* ``peer_faults`` — validators this node cut off on the p2p layer (budget or protocol breaches), for operators.

The data directory is made 0700 and the database files 0600 (the wrapped keys and the signed votes are in
them); a directory or file left more open by an older version is closed on open.

Any SQLite error that means the file is damaged is raised as :class:`StoreCorrupt` (fail hard, never serve
possibly-wrong data).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    time_ms INTEGER NOT NULL,
    n_txs INTEGER NOT NULL,
    block BLOB NOT NULL,
    cert BLOB NOT NULL,
    digest BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS txs (
    hash BLOB PRIMARY KEY,
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signed_votes (
    height INTEGER NOT NULL,
    round INTEGER NOT NULL,
    step INTEGER NOT NULL,
    msg BLOB NOT NULL,
    PRIMARY KEY (height, round, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    height INTEGER NOT NULL,
    validator INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL UNIQUE,
    time_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    validator INTEGER NOT NULL,
    reason TEXT NOT NULL,
    time_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS wrapped_keys (
    subject BLOB PRIMARY KEY,
    wrapped BLOB NOT NULL,
    height INTEGER NOT NULL
) WITHOUT ROWID;
"""


class StoreError(Exception):
    """A storage operation failed."""


class StoreCorrupt(StoreError):
    """The database file or a stored record is damaged; the node must stop (fail hard)."""


class StoreConflict(StoreError):
    """A write contradicts what is stored (another block at a finalized height, a data dir of another chain)."""


@dataclass(frozen=True)
class StoredBlock:
    """A finalized block as stored: canonical bytes of the block and of its commit certificate."""

    height: int
    hash: bytes
    time_ms: int
    n_txs: int
    block: bytes
    cert: bytes


def _digest(block: bytes, cert: bytes) -> bytes:
    return hashlib.sha256(len(block).to_bytes(8, "big") + block + cert).digest()


def _restrict(path: Path, mode: int) -> None:
    """Make ``path`` (if it exists) exactly ``mode``; refuse to run over a path we cannot restrict."""
    try:
        if path.exists() and (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)
    except OSError as exc:
        raise StoreError(f"cannot restrict the permissions of {path}: {exc.strerror or exc}") from None


class Store:
    """One node's SQLite database. Thread-safe: one writer connection and one reader connection, each
    guarded by its lock, so reads from the event loop never wait for a write's fsync on another thread."""

    def __init__(self, path: Path, chain_id: str, genesis_hash: bytes) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _restrict(self.path.parent, 0o700)
        if not self.path.exists():  # created 0600, whatever the process umask
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._lock = threading.Lock()  # the writer connection
        self._rlock = threading.Lock()  # the reader connection
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA foreign_keys=ON")
            ok = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise StoreCorrupt(f"ledger database {self.path} failed its integrity check: {ok}")
            self._db.executescript(_SCHEMA)
            self._check_meta(chain_id, genesis_hash)
            # Readers get their own connection: in WAL mode they never wait for a writer's fsync.
            self._rdb = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._rdb.execute("PRAGMA query_only=ON")
            for suffix in ("", "-wal", "-shm"):
                _restrict(Path(str(self.path) + suffix), 0o600)
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"ledger database {self.path} is unreadable or corrupt: {exc}") from None
        self._height = self._load_height()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock, self._rlock:
            for db in (self._db, getattr(self, "_rdb", None)):
                try:
                    if db is not None:
                        db.close()
                except sqlite3.Error:
                    pass

    def _check_meta(self, chain_id: str, genesis_hash: bytes) -> None:
        rows = dict(self._db.execute("SELECT k, v FROM meta").fetchall())
        if not rows:
            with self._tx():
                self._db.executemany("INSERT INTO meta (k, v) VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION).encode()), ("chain_id", chain_id.encode()),
                    ("genesis_hash", genesis_hash)])
            return
        if rows.get("schema_version") != str(SCHEMA_VERSION).encode():
            raise StoreConflict(f"ledger database {self.path} has schema {rows.get('schema_version')!r}, "
                                f"expected {SCHEMA_VERSION}")
        if rows.get("chain_id") != chain_id.encode() or rows.get("genesis_hash") != genesis_hash:
            raise StoreConflict(f"ledger database {self.path} belongs to another chain "
                                f"(chain id {rows.get('chain_id', b'?').decode(errors='replace')!r})")

    class _Txn:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, et, ev, tb) -> None:
            if et is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")

    def _tx(self) -> "Store._Txn":
        return Store._Txn(self._db)

    def _run(self, fn, *args):
        """Run ``fn`` under the lock, mapping SQLite damage to StoreCorrupt."""
        with self._lock:
            try:
                return fn(*args)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.IntegrityError):
                    raise StoreConflict(str(exc)) from None
                raise StoreCorrupt(f"ledger database {self.path}: {exc}") from None

    def _read(self, fn):
        """Run ``fn(reader_connection)``; SQLite damage becomes StoreCorrupt."""
        with self._rlock:
            try:
                return fn(self._rdb)
            except sqlite3.DatabaseError as exc:
                raise StoreCorrupt(f"ledger database {self.path}: {exc}") from None

    # -- blocks ------------------------------------------------------------------------------------------
    def _load_height(self) -> int:
        row = self._run(lambda: self._db.execute("SELECT MAX(height) FROM blocks").fetchone())
        return int(row[0] or 0)

    @property
    def height(self) -> int:
        """Height of the last finalized block (0 = only genesis)."""
        return self._height

    def save_block(self, height: int, block_hash: bytes, time_ms: int, block: bytes, cert: bytes,
                   tx_hashes: Iterable[bytes]) -> None:
        """Store a finalized block and index its transactions, atomically. Heights must be contiguous."""
        tx_list = list(tx_hashes)

        def op() -> None:
            if height != self._height + 1:
                existing = self._db.execute("SELECT hash FROM blocks WHERE height=?", (height,)).fetchone()
                if existing is not None and bytes(existing[0]) == block_hash:
                    return  # idempotent re-save of the same block
                if existing is not None:
                    raise StoreConflict(f"refusing a second block at finalized height {height}")
                raise StoreConflict(f"block height {height} does not follow stored height {self._height}")
            with self._tx() as db:
                db.execute("INSERT INTO blocks (height, hash, time_ms, n_txs, block, cert, digest) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (height, block_hash, time_ms, len(tx_list), block, cert, _digest(block, cert)))
                db.executemany("INSERT OR IGNORE INTO txs (hash, height, idx) VALUES (?, ?, ?)",
                               [(h, height, i) for i, h in enumerate(tx_list)])
                # Signed votes below the finalized height can never be needed again.
                db.execute("DELETE FROM signed_votes WHERE height < ?", (height - 1,))
            self._height = height

        self._run(op)

    def _row_to_block(self, row) -> StoredBlock:
        height, bhash, time_ms, n_txs, block, cert, digest = row
        block, cert = bytes(block), bytes(cert)
        if _digest(block, cert) != bytes(digest):
            raise StoreCorrupt(f"ledger database {self.path}: block {height} fails its checksum")
        return StoredBlock(int(height), bytes(bhash), int(time_ms), int(n_txs), block, cert)

    def get_block(self, height: int) -> Optional[StoredBlock]:
        row = self._read(lambda db: db.execute(
            "SELECT height, hash, time_ms, n_txs, block, cert, digest FROM blocks WHERE height=?",
            (height,)).fetchone())
        return None if row is None else self._row_to_block(row)

    def get_blocks(self, start: int, end: int) -> list[StoredBlock]:
        """Blocks with start <= height <= end, ascending."""
        rows = self._read(lambda db: db.execute(
            "SELECT height, hash, time_ms, n_txs, block, cert, digest FROM blocks "
            "WHERE height BETWEEN ? AND ? ORDER BY height", (start, end)).fetchall())
        return [self._row_to_block(r) for r in rows]

    def block_hashes(self) -> Iterator[tuple[int, bytes]]:
        rows = self._read(lambda db: db.execute("SELECT height, hash FROM blocks ORDER BY height").fetchall())
        return ((int(h), bytes(x)) for h, x in rows)

    def last_block_time(self) -> int:
        row = self._read(lambda db: db.execute(
            "SELECT time_ms FROM blocks ORDER BY height DESC LIMIT 1").fetchone())
        return int(row[0]) if row else 0

    def tx_location(self, tx_hash: bytes) -> Optional[tuple[int, int]]:
        row = self._read(lambda db: db.execute(
            "SELECT height, idx FROM txs WHERE hash=?", (tx_hash,)).fetchone())
        return None if row is None else (int(row[0]), int(row[1]))

    def has_txs(self, tx_hashes: Iterable[bytes]) -> set[bytes]:
        """The subset of ``tx_hashes`` already finalized."""
        hs = list(tx_hashes)
        found: set[bytes] = set()

        def op(db: sqlite3.Connection) -> None:
            for i in range(0, len(hs), 500):
                chunk = hs[i:i + 500]
                q = "SELECT hash FROM txs WHERE hash IN (%s)" % ",".join("?" * len(chunk))
                found.update(bytes(r[0]) for r in db.execute(q, chunk))

        self._read(op)
        return found

    # -- signed votes (double-sign protection) --------------------------------------------------------------
    def save_signed(self, height: int, round_: int, step: int, msg: bytes) -> None:
        """Durably record a message this validator signed. Must complete before the message is sent."""
        def op() -> None:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO signed_votes (height, round, step, msg) VALUES (?, ?, ?, ?)",
                           (height, round_, step, msg))

        self._run(op)

    def get_signed(self, height: int, round_: int, step: int) -> Optional[bytes]:
        row = self._read(lambda db: db.execute(
            "SELECT msg FROM signed_votes WHERE height=? AND round=? AND step=?",
            (height, round_, step)).fetchone())
        return None if row is None else bytes(row[0])

    def signed_from(self, height: int) -> list[tuple[int, int, int, bytes]]:
        """Every signed message at or above ``height`` (replayed into consensus after a restart)."""
        rows = self._read(lambda db: db.execute(
            "SELECT height, round, step, msg FROM signed_votes WHERE height >= ? ORDER BY height, round, step",
            (height,)).fetchall())
        return [(int(h), int(r), int(s), bytes(m)) for h, r, s, m in rows]

    # -- evidence ------------------------------------------------------------------------------------------
    def add_evidence(self, height: int, validator: int, kind: str, data: bytes, time_ms: int) -> bool:
        """Record misbehaviour; returns False when the same evidence was already stored."""
        def op() -> bool:
            with self._tx() as db:
                cur = db.execute("INSERT OR IGNORE INTO evidence (height, validator, kind, data, time_ms) "
                                 "VALUES (?, ?, ?, ?, ?)", (height, validator, kind, data, time_ms))
                return cur.rowcount > 0

        return self._run(op)

    def list_evidence(self, limit: int = 1000) -> list[dict]:
        rows = self._read(lambda db: db.execute(
            "SELECT id, height, validator, kind, data, time_ms FROM evidence ORDER BY id LIMIT ?",
            (limit,)).fetchall())
        return [{"id": int(i), "height": int(h), "validator": int(v), "kind": k, "data": bytes(d),
                 "time_ms": int(t)} for i, h, v, k, d, t in rows]

    # -- peer faults ---------------------------------------------------------------------------------------
    def add_peer_fault(self, validator: int, reason: str, time_ms: int) -> None:
        """Record that validator ``validator`` was cut off on the p2p layer, and why."""
        def op() -> None:
            with self._tx() as db:
                db.execute("INSERT INTO peer_faults (validator, reason, time_ms) VALUES (?, ?, ?)",
                           (validator, reason[:500], time_ms))

        self._run(op)

    def list_peer_faults(self, limit: int = 1000) -> list[tuple[int, str, int]]:
        rows = self._read(lambda db: db.execute(
            "SELECT validator, reason, time_ms FROM peer_faults ORDER BY id DESC LIMIT ?", (limit,)).fetchall())
        return [(int(v), str(r), int(t)) for v, r, t in rows]

    # -- deletable key store ---------------------------------------------------------------------------------
    def put_wrapped_key(self, subject: bytes, wrapped: bytes, height: int = 0) -> None:
        """Store (or replace) the wrapped data key of a subject pseudonym."""
        def op() -> None:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO wrapped_keys (subject, wrapped, height) VALUES (?, ?, ?)",
                           (subject, wrapped, height))

        self._run(op)

    def get_wrapped_key(self, subject: bytes) -> Optional[bytes]:
        row = self._read(lambda db: db.execute(
            "SELECT wrapped FROM wrapped_keys WHERE subject=?", (subject,)).fetchone())
        return None if row is None else bytes(row[0])

    def delete_wrapped_key(self, subject: bytes) -> bool:
        """Crypto-shred: delete the wrapped key and checkpoint the WAL so its bytes leave the files."""
        def op() -> bool:
            with self._tx() as db:
                n = db.execute("DELETE FROM wrapped_keys WHERE subject=?", (subject,)).rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return n > 0

        return self._run(op)
