"""In-memory watchlist for the pipeline role: registered subjects decrypted from the ledger, synced incrementally.

The pipeline holds the key-encryption keys (never the pseudonymisation key: it never computes a pseudonym).
:class:`WatchlistSync` pulls ``GET /v1/registry/watchlist?since=h`` — subject records changed after height
``h``, still encrypted, each with its wrapped data key — unwraps and decrypts them locally, and keeps
``(pseudonym, templates, risk, suspect)`` per live subject in memory. Erased subjects disappear on the next
sync. A record that cannot be opened (its key not yet on that node, or a failed authentication) is left out
and retried on the next sync: an unknown face is masked at full strength, so failing closed is safe.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ledger import privacy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchEntry:
    """One live subject as the pipeline needs it. ``templates`` is (k, 128) float32, L2-normalised rows."""

    pseudonym: bytes
    templates: np.ndarray
    risk: int
    suspect: bool
    version: int
    height: int

    def __repr__(self) -> str:
        return (f"WatchEntry({self.pseudonym.hex()[:12]}.., templates={len(self.templates)}, risk={self.risk}, "
                f"suspect={self.suspect}, v{self.version})")


@dataclass(frozen=True)
class Match:
    entry: WatchEntry
    similarity: float


class Watchlist:
    """Decrypted subjects by pseudonym; thread-safe reads while a sync applies changes."""

    def __init__(self, keks: Mapping[bytes, bytes], chain_id: str) -> None:
        self._keks = dict(keks)
        self.chain_id = chain_id
        self._entries: dict[bytes, WatchEntry] = {}
        self._unresolved: dict[bytes, int] = {}  # pseudonym -> version we could not open yet
        self._lock = threading.Lock()
        self.height = 0
        self._matrix: Optional[np.ndarray] = None
        self._owners: list[WatchEntry] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def unresolved(self) -> set[bytes]:
        return set(self._unresolved)

    def entries(self) -> list[WatchEntry]:
        with self._lock:
            return list(self._entries.values())

    def get(self, pseudonym: bytes) -> Optional[WatchEntry]:
        return self._entries.get(pseudonym)

    def apply_record(self, rec: Mapping[str, Any]) -> bool:
        """Apply one record of the watchlist endpoint; returns whether the entry is now resolved."""
        p = bytes.fromhex(rec["pseudonym"])
        if rec["status"] != "live":
            with self._lock:
                self._entries.pop(p, None)
                self._unresolved.pop(p, None)
                self._matrix = None
            return True
        current = self._entries.get(p)
        if current is not None and current.version >= rec["version"]:
            return True
        try:
            entry = self._open(p, rec)
        except (privacy.PrivacyError, KeyError, ValueError) as exc:
            # no pseudonym in logs: a pseudonym is personal data (invariant 3)
            logger.warning("watchlist: a subject record (v%s) is not usable yet: %s", rec.get("version"),
                           type(exc).__name__)
            with self._lock:
                # an older version stays usable only if this one merely lacks its key on that node
                if not isinstance(exc, privacy.KeyErased):
                    self._entries.pop(p, None)
                self._unresolved[p] = int(rec["version"])
                self._matrix = None
            return False
        with self._lock:
            self._entries[p] = entry
            self._unresolved.pop(p, None)
            self._matrix = None
        return True

    def _open(self, p: bytes, rec: Mapping[str, Any]) -> WatchEntry:
        wrapped = base64.b64decode(rec["wrapped_key"]) if rec.get("wrapped_key") else None
        if wrapped is None:
            raise privacy.KeyErased("wrapped key not available on this node")
        kek = self._keks.get(privacy.wrapped_kek_id(wrapped))
        if kek is None:
            raise KeyError("kek not in keyring")
        record = privacy.open_record(base64.b64decode(rec["nonce"]), base64.b64decode(rec["ciphertext"]), wrapped,
                                     self.chain_id, p, int(rec["version"]), kek)
        temps = np.array(record.template_arrays(), dtype=np.float32).reshape(-1, privacy.TEMPLATE_DIM)
        norms = np.linalg.norm(temps, axis=1, keepdims=True)
        temps = temps / np.where(norms == 0, 1.0, norms)
        return WatchEntry(p, temps, record.risk, record.suspect, int(rec["version"]), int(rec["height"]))

    def match(self, embedding: np.ndarray, threshold: float) -> Optional[Match]:
        """Best subject whose closest template has cosine >= ``threshold`` (None: unknown face)."""
        with self._lock:
            if self._matrix is None:
                owners, rows = [], []
                for e in self._entries.values():
                    for t in e.templates:
                        owners.append(e)
                        rows.append(t)
                self._owners = owners
                self._matrix = np.array(rows, np.float32).reshape(-1, privacy.TEMPLATE_DIM)
            matrix, owners = self._matrix, self._owners
        if not owners:
            return None
        v = np.asarray(embedding, np.float32).reshape(-1)
        n = float(np.linalg.norm(v))
        if n == 0.0 or not np.isfinite(n):
            return None
        sims = matrix @ (v / n)
        i = int(np.argmax(sims))
        return Match(owners[i], float(sims[i])) if sims[i] >= threshold else None


class WatchlistSync:
    """Keeps a :class:`Watchlist` current from the ledger (any reachable node, failing over)."""

    def __init__(self, clients: Sequence[Any], watchlist: Watchlist) -> None:
        if not clients:
            raise ValueError("at least one ledger client is needed")
        self.clients = list(clients)
        self.watchlist = watchlist
        self.last_sync = 0.0

    def _call(self, fn) -> Any:
        from ledger.client import Unavailable

        last: Optional[Exception] = None
        for c in self.clients:
            try:
                return fn(c)
            except Unavailable as exc:
                last = exc
        raise last or RuntimeError("no client")

    def sync(self) -> int:
        """Pull every change since the last synced height; returns the number of records applied."""
        applied = 0
        since = self.watchlist.height
        while True:
            page = self._call(lambda c: c.request("GET", "/v1/registry/watchlist", query={"since": since}))
            for rec in page["records"]:
                self.watchlist.apply_record(rec)
                applied += 1
            since = int(page["next_since"])
            if page["complete"]:
                break
        self.watchlist.height = max(self.watchlist.height, since)
        applied += self._retry_unresolved()
        self.last_sync = time.time()
        return applied

    def _retry_unresolved(self) -> int:
        """Ask every node for subjects we could not open (a node may have missed a key upload)."""
        from ledger.client import ApiError, Unavailable

        fixed = 0
        for p in list(self.watchlist.unresolved):
            for c in self.clients:
                try:
                    rec = c.request("GET", f"/v1/registry/subjects/{p.hex()}")
                except (ApiError, Unavailable):
                    continue
                if self.watchlist.apply_record(rec):
                    fixed += 1
                    break
        return fixed


def from_cluster(addresses: Iterable[str], seed: bytes, keks: Mapping[bytes, bytes], chain_id: str,
                 timeout_s: float = 10.0) -> WatchlistSync:
    """A sync over signed clients of the given node API addresses (pipeline key)."""
    from ledger.client import LedgerClient

    return WatchlistSync([LedgerClient(a, seed, timeout_s) for a in addresses], Watchlist(keks, chain_id))
