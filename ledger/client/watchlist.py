"""In-memory watchlist for the pipeline role: registered subjects decrypted from the ledger, synced incrementally.

The pipeline holds the key-encryption keys (never the pseudonymisation key: it never computes a pseudonym).
:class:`WatchlistSync` pulls ``GET /v1/registry/watchlist?since=h`` — subject records changed after height
``h``, still encrypted, each with its wrapped data key — unwraps and decrypts them locally, and keeps
``(pseudonym, templates, risk, suspect)`` per live subject in memory. Erased subjects disappear on the next
sync. A record that cannot be opened (its key not yet on that node, or a failed authentication) is left out
and retried on the next sync: an unknown face is masked at full strength, so failing closed is safe.

Freshness comes from the chain, not from the clock. Each sync first asks nodes for their certified tip
(``GET /v1/tip``: the latest header and its commit certificate) until ``f + 1`` distinct nodes answered with a
certificate that verifies against the genesis validator keys (2f+1 valid precommits): a node cannot forge a
higher height, and the highest of ``f + 1`` tips is at least the tip of one honest node. The watchlist is
then read from a node whose served height reaches that certified height (and every certified height seen
before); a node that serves an older height is lagging or lying, is recorded in ``stale_nodes`` and asked
last from then on. When no reachable node serves the certified height, :class:`WatchlistStale` is raised: the
pipeline then treats its watchlist as stale at once (the strongest mask for every face), rather than trusting
an old copy until a clock runs out. Queries are spread over the nodes (a rotating first node).

Content is confirmed by f + 1 nodes, not believed from one. The pipeline keeps, beside the decrypted
entries, the registry state the watchlist stands for (per pseudonym the version, status, height, transaction
hash and a hash of the sealed record: :mod:`ledger.registry.digest`). A sync builds the state that would
result from the records a node served (all changes since the last confirmed height, so incremental syncs are
covered like full ones), computes its digest, and applies the records only when f + 1 distinct nodes report
that digest at the height served: the serving node with the ``digest`` of its page, the others through
``GET /v1/registry/digest?height=H`` (a node not yet at ``H`` is waited for up to ``catch_up_s``). One of
f + 1 nodes is honest, so a node that leaves a record out (a risk downgrade, an erasure) cannot get its
watchlist applied alone. A node whose digest differs from the confirmed one at the same height, or whose page
does not match the digest it reports, is recorded in ``disputed_nodes`` and asked last, like a lagging one.
When no served watchlist reaches f + 1 agreement, :class:`WatchlistStale` is raised (strongest mask);
before that, a sync whose incremental read nobody confirms reads the whole watchlist again, since the state
it holds may be the one that is wrong. Two different digests at one height, each reported by f + 1 nodes,
prove more than f faulty nodes: the sync raises :class:`WatchlistStale` rather than pick one.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ledger.client import privacy
from ledger.client.api_client import ApiError, LedgerClient, Unavailable
from ledger.errors import LedgerError
from ledger.registry.digest import entry_of_record, state_digest
from ledger.types.block import BlockHeader, CommitCertificate, verify_commit

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


class WatchlistStale(Exception):
    """No reachable node serves the watchlist at the certified tip (or only nodes behind a certified height
    already seen answer): the watchlist can no longer be shown current and must be treated as stale."""

    def __init__(self, reason: str, certified: int, served: Mapping[str, int],
                 unconfirmed: Optional[Mapping[str, int]] = None) -> None:
        super().__init__(reason)
        self.certified = certified
        self.served = dict(served)  # address -> height, of nodes behind the certified height
        self.unconfirmed = dict(unconfirmed or {})  # address -> height, of watchlists f + 1 nodes did not confirm


class TipUnavailable(Exception):
    """Fewer than the required number of nodes answered with a certified tip (and none of them lagged)."""


class Watchlist:
    """Decrypted subjects by pseudonym; thread-safe reads while a sync applies changes."""

    def __init__(self, keks: Mapping[bytes, bytes], chain_id: str) -> None:
        self._keks = dict(keks)
        self.chain_id = chain_id
        self._entries: dict[bytes, WatchEntry] = {}
        self._unresolved: dict[bytes, int] = {}  # pseudonym -> version we could not open yet
        # pseudonym -> highest version applied, erased or wanted: an older record (a lagging or lying node)
        # never brings back an erased subject or an earlier risk
        self._versions: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self.height = 0
        # the confirmed registry state this watchlist stands for: pseudonym -> (version, digest entry)
        self._state: dict[bytes, tuple[int, bytes]] = {}

    def state_after(self, records: Iterable[Mapping[str, Any]],
                    base: Optional[Mapping[bytes, tuple[int, bytes]]] = None) -> dict[bytes, tuple[int, bytes]]:
        """The registry state that applying ``records`` (served changes) to the confirmed state (or ``base``)
        would give; raises ``ledger.registry.digest.DigestError`` (a ValueError) on a malformed record."""
        state = dict(self._state if base is None else base)
        for rec in records:
            p, version, e = entry_of_record(rec)
            cur = state.get(p)
            if cur is None or version >= cur[0]:
                state[p] = (version, e)
        return state

    @staticmethod
    def digest_of(state: Mapping[bytes, tuple[int, bytes]]) -> bytes:
        return state_digest(e for _, e in state.values())

    def state_digest(self) -> bytes:
        """The digest of the confirmed registry state (what f + 1 nodes reported at ``height``)."""
        return self.digest_of(self._state)

    def commit(self, state: dict[bytes, tuple[int, bytes]], records: Iterable[Mapping[str, Any]],
               height: int) -> int:
        """Apply confirmed records and make ``state`` (from :meth:`state_after`) the confirmed state at
        ``height``; returns the number of records."""
        n = 0
        for rec in records:
            self.apply_record(rec)
            n += 1
        self._state = state
        self.height = max(self.height, height)
        return n

    def reset(self) -> None:
        """Forget every entry and the confirmed state (before a confirmed full read replaces them)."""
        with self._lock:
            self._entries.clear()
            self._unresolved.clear()
            self._versions.clear()
            self._state = {}
            self.height = 0

    def wanted_version(self, pseudonym: bytes) -> Optional[int]:
        """The version of a subject the watchlist could not open yet, None if it is not unresolved."""
        return self._unresolved.get(pseudonym)

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
        version = int(rec["version"])
        known = self._versions.get(p, 0)
        if version < known:  # older than what this watchlist already knows: ignored
            return p not in self._unresolved
        if rec["status"] != "live":
            with self._lock:
                self._entries.pop(p, None)
                self._unresolved.pop(p, None)
                self._versions[p] = version
            return True
        current = self._entries.get(p)
        if current is not None and current.version >= version:
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
                self._unresolved[p] = version
                self._versions[p] = version
            return False
        with self._lock:
            self._entries[p] = entry
            self._unresolved.pop(p, None)
            self._versions[p] = version
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


def verify_tip(doc: Mapping[str, Any], chain_id: str, public_keys: Sequence[bytes]) -> int:
    """The height of a ``GET /v1/tip`` answer whose commit certificate verifies (raises ValueError if not)."""
    try:
        header = BlockHeader.decode(base64.b64decode(doc["header"], validate=True))
        cert = CommitCertificate.decode(base64.b64decode(doc["cert"], validate=True))
        if header.chain_id != chain_id:
            raise ValueError(f"tip of chain {header.chain_id!r}, not {chain_id!r}")
        verify_commit(cert, chain_id, public_keys, header.hash(), header.height)
    except (LedgerError, KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"tip does not verify: {type(exc).__name__}: {exc}") from None
    return int(header.height)


class WatchlistSync:
    """Keeps a :class:`Watchlist` current from the ledger, at a height certified by the chain.

    ``public_keys``: the genesis validator keys the tips' commit certificates are verified with;
    ``tip_sources``: distinct nodes whose certified tip must be known before a sync counts as current
    (default ``f + 1``); ``catch_up_s``: how long a node just behind the certified tip (a block committed but
    not yet applied to its registry) is waited for before it counts as lagging; ``recheck_s``: how long a
    node caught lagging is asked last before it takes its normal turn again.
    """

    def __init__(self, clients: Sequence[Any], watchlist: Watchlist, public_keys: Sequence[bytes],
                 tip_sources: Optional[int] = None, catch_up_s: float = 1.0, recheck_s: float = 60.0) -> None:
        if not clients:
            raise ValueError("at least one ledger client is needed")
        if not public_keys:
            raise ValueError("the genesis validator keys are needed to verify the chain tip")
        self.clients = list(clients)
        self.watchlist = watchlist
        self.public_keys = list(public_keys)
        faulty = (len(self.public_keys) - 1) // 3
        self.tip_sources = min(faulty + 1, len(self.clients)) if tip_sources is None else int(tip_sources)
        if not 1 <= self.tip_sources <= len(self.clients):
            raise ValueError(f"tip_sources must be 1..{len(self.clients)}")
        self.catch_up_s = catch_up_s
        self.recheck_s = recheck_s
        self.last_sync = 0.0
        self.seen_height = 0        # highest certified height seen from any node
        self.confirmed_height = -1  # certified height the last successful sync reached
        self.stale_nodes: dict[str, tuple[int, int]] = {}  # address -> (served height, certified height)
        # address -> (height, digest hex it reported there) for nodes contradicting f + 1 others
        self.disputed_nodes: dict[str, tuple[int, str]] = {}
        self._flagged_at: dict[str, float] = {}
        self._turn = 0

    def _order(self) -> list[Any]:
        """Every client once, starting at a rotating one; nodes caught lagging go last."""
        k = self._turn % len(self.clients)
        self._turn += 1
        rotated = self.clients[k:] + self.clients[:k]
        now = time.monotonic()
        last = {a for a, t in self._flagged_at.items() if now - t < self.recheck_s}
        return [c for c in rotated if c.address not in last] + [c for c in rotated if c.address in last]

    def _lagging(self, client: Any, served: int, certified: int, level: int = logging.WARNING) -> None:
        if client.address not in self.stale_nodes:
            logger.log(level, "ledger node %s serves height %d, behind the certified height %d: treated as stale",
                       client.address, served, certified)
        self.stale_nodes[client.address] = (served, certified)
        self._flagged_at[client.address] = time.monotonic()

    def certified_tip(self, order: Sequence[Any]) -> int:
        """The highest certified height among ``tip_sources`` distinct nodes (and every height seen before)."""
        got: dict[str, int] = {}
        behind: dict[str, int] = {}
        for c in order:
            if len(got) >= self.tip_sources:
                break
            try:
                doc = c.request("GET", "/v1/tip")
                h = verify_tip(doc, self.watchlist.chain_id, self.public_keys)
            except (Unavailable, ApiError) as exc:
                logger.info("no tip from ledger node %s: %s", c.address, exc)
                continue
            except ValueError as exc:
                logger.warning("ledger node %s served a tip that does not verify: %s", c.address, exc)
                continue
            got[c.address] = h
            if h < self.seen_height:
                behind[c.address] = h
                self._lagging(c, h, self.seen_height)
            self.seen_height = max(self.seen_height, h)
        if len(got) < self.tip_sources:
            if behind:
                raise WatchlistStale(f"only {len(got)} node(s) answered with a certified tip, and "
                                     f"{len(behind)} of them serve a height older than {self.seen_height}",
                                     self.seen_height, behind)
            raise TipUnavailable(f"{len(got)} of the {self.tip_sources} certified tips needed")
        return self.seen_height

    def _fetch(self, client: Any, certified: int, since: int) -> tuple[list[dict], int, Optional[str]]:
        """Every change after height ``since`` from ``client``: (records, the height served, the state digest
        the node reports at that height). Stops early, with no records, when it serves a height below
        ``certified``."""
        records: list[dict] = []
        while True:
            page = client.request("GET", "/v1/registry/watchlist", query={"since": since})
            served = int(page["height"])
            if served < certified:
                if records:
                    logger.warning("ledger node %s went back to height %d during a sync", client.address, served)
                return [], served, None
            records.extend(page["records"])
            since = int(page["next_since"])
            if page["complete"]:
                break
        claimed = page.get("digest")
        return records, served, claimed if isinstance(claimed, str) else None

    def _dispute(self, client: Any, height: int, digest: str, why: str) -> None:
        if client.address not in self.disputed_nodes:
            logger.warning("ledger node %s %s at height %d: its watchlist is not used", client.address, why, height)
        self.disputed_nodes[client.address] = (height, digest)
        self._flagged_at[client.address] = time.monotonic()

    def _confirm(self, source: Any, height: int, digest: str, claimed: Optional[str], order: Sequence[Any],
                 claims: dict[str, tuple[int, str]]) -> bool:
        """Whether ``tip_sources`` distinct nodes report ``digest`` at ``height`` (the source by its page's
        ``claimed`` digest); answers are kept in ``claims`` (address -> (height, digest)) for this sync."""
        agree = {source.address} if claimed == digest else set()
        pending = [c for c in order if c is not source]
        deadline = time.monotonic() + self.catch_up_s
        while True:
            waiting = []
            for c in pending:
                if len(agree) >= self.tip_sources:
                    return True
                known = claims.get(c.address)
                if known is None or known[0] != height:
                    try:
                        doc = c.request("GET", "/v1/registry/digest", query={"height": height})
                        got = doc["digest"]
                        if not isinstance(got, str):
                            raise TypeError("digest is not a string")
                    except ApiError as exc:
                        if exc.status == 409:  # not at that height yet
                            waiting.append(c)
                        continue
                    except Unavailable:
                        continue
                    except (KeyError, TypeError) as exc:
                        logger.warning("ledger node %s served a malformed digest: %s", c.address, type(exc).__name__)
                        continue
                    known = claims[c.address] = (height, got)
                if known[1] == digest:
                    agree.add(c.address)
            if len(agree) >= self.tip_sources:
                return True
            if not waiting or time.monotonic() >= deadline:
                logger.info("the watchlist of ledger node %s at height %d: %d of %d nodes report its digest",
                            source.address, height, len(agree), self.tip_sources)
                return False
            pending = waiting
            time.sleep(0.1)

    def sync(self) -> int:
        """Pull every change since the last synced height from a node at the certified tip, and apply it once
        f + 1 nodes confirm the digest of the resulting state; returns the number of records applied. When no
        incremental read is confirmed, the whole watchlist is read again (the held state may itself be what
        f + 1 nodes contradict). Raises :class:`WatchlistStale` when only nodes behind the certified tip answer
        or no served watchlist is confirmed, :class:`TipUnavailable` or ``ledger.client.api_client.Unavailable`` when too
        few nodes answer at all."""
        order = self._order()
        certified = self.certified_tip(order)
        claims: dict[str, tuple[int, str]] = {}  # address -> (height, digest) reported during this sync
        try:
            return self._read(order, certified, self.watchlist.height == 0, claims)
        except WatchlistStale as exc:
            if not exc.unconfirmed or self.watchlist.height == 0:
                raise
            logger.warning("no incremental watchlist read was confirmed by f + 1 nodes at height %d: reading the "
                           "whole watchlist again", certified)
            return self._read(order, certified, True, claims)

    def _read(self, order: Sequence[Any], certified: int, full: bool, claims: dict[str, tuple[int, str]]) -> int:
        """One pass of :meth:`sync`: the changes since the confirmed height (``full``: every record, on an
        empty state), from the first node whose result f + 1 nodes confirm."""
        deadline = time.monotonic() + self.catch_up_s
        behind: dict[str, int] = {}
        unconfirmed: dict[str, int] = {}
        last: Optional[Exception] = None
        base: Optional[dict] = {} if full else None
        candidates = order
        while True:
            retry = []
            for c in candidates:
                try:
                    records, served, claimed = self._fetch(c, certified, 0 if full else self.watchlist.height)
                    if served >= certified:
                        state = self.watchlist.state_after(records, base)
                except (Unavailable, ApiError) as exc:
                    last = exc
                    continue
                except (KeyError, TypeError, ValueError) as exc:  # a malformed page: this node is not used
                    logger.warning("ledger node %s served a malformed watchlist page: %s", c.address,
                                   type(exc).__name__)
                    last = exc
                    continue
                if served < certified:
                    retry.append(c)
                    behind[c.address] = served
                    continue
                digest = self.watchlist.digest_of(state).hex()
                if claimed is not None:
                    claims[c.address] = (served, claimed)
                    if claimed != digest:
                        unconfirmed[c.address] = served
                        if full:  # its page is not the state it vouches for (on an incremental read the
                            # state held may be what differs)
                            self._dispute(c, served, claimed, "served a watchlist that does not match its digest")
                        continue
                if not self._confirm(c, served, digest, claimed, order, claims):
                    unconfirmed[c.address] = served
                    continue
                at = [d for h, d in claims.values() if h == served]
                rival = [d for d in set(at) if d != digest and at.count(d) >= self.tip_sources]
                if rival:  # two states each vouched for by f + 1 nodes: more than f nodes are faulty
                    logger.error("ledger nodes report %d different registry state digests at height %d, each from "
                                 "f + 1 nodes: more than f nodes are faulty; the watchlist is stale", 1 + len(rival),
                                 served)
                    raise WatchlistStale(f"conflicting registry state digests at height {served}, each reported by "
                                         f"f + 1 nodes", certified, behind)
                for other in order:  # contradicted f + 1 nodes, one of them honest
                    seen = claims.get(other.address)
                    if seen is not None and seen[0] == served and seen[1] != digest:
                        self._dispute(other, served, seen[1], "reports a registry state digest f + 1 nodes contradict")
                if full:
                    self.watchlist.reset()
                applied = self.watchlist.commit(state, records, served)
                self.stale_nodes.pop(c.address, None)
                self.disputed_nodes.pop(c.address, None)
                self._flagged_at.pop(c.address, None)
                for other in retry:  # passed over this time (often one block behind): asked last for a while
                    self._lagging(other, behind[other.address], certified, logging.INFO)
                self.confirmed_height = certified
                applied += self._retry_unresolved()
                self.last_sync = time.time()
                return applied
            if retry and time.monotonic() < deadline:
                candidates = retry
                time.sleep(0.1)
                continue
            for c in retry:
                self._lagging(c, behind[c.address], certified)
            if retry or unconfirmed:
                what = (f"{len(unconfirmed)} served watchlist(s) without f + 1 nodes reporting its digest"
                        if unconfirmed else "none at it")
                raise WatchlistStale(f"no reachable ledger node serves a confirmed watchlist at the certified "
                                     f"height {certified} ({what})", certified, behind, unconfirmed)
            break
        raise last if last is not None else Unavailable("no ledger node reachable")

    def _retry_unresolved(self) -> int:
        """Ask every node for subjects we could not open (a node may have missed a key upload); nodes caught
        lagging are asked last, and only the version the confirmed state names is applied."""
        fixed = 0
        bad = set(self.stale_nodes) | set(self.disputed_nodes)
        order = [c for c in self.clients if c.address not in bad] + [c for c in self.clients if c.address in bad]
        for p in list(self.watchlist.unresolved):
            for c in order:
                try:
                    rec = c.request("GET", f"/v1/registry/subjects/{p.hex()}")
                except (ApiError, Unavailable):
                    continue
                try:  # only the version the confirmed state names: never an older or a newer one
                    usable = rec["status"] == "live" and int(rec["version"]) == self.watchlist.wanted_version(p)
                except (KeyError, TypeError, ValueError):
                    usable = False
                if usable and self.watchlist.apply_record(rec):
                    fixed += 1
                    break
        return fixed


def from_cluster(addresses: Iterable[str], seed: bytes, keks: Mapping[bytes, bytes], chain_id: str,
                 public_keys: Sequence[bytes], timeout_s: float = 10.0,
                 node_ids: Optional[Sequence[str]] = None) -> WatchlistSync:
    """A sync over signed clients of the given node API addresses (pipeline key); tips are verified against
    the genesis validator ``public_keys``. ``node_ids`` (one per address, from genesis) pins the node each
    client signs for instead of asking the node."""
    addresses = list(addresses)
    ids: Sequence[Optional[str]] = list(node_ids) if node_ids is not None else [None] * len(addresses)
    if len(ids) != len(addresses):
        raise ValueError("node_ids must name one node per address")
    return WatchlistSync([LedgerClient(a, seed, timeout_s, node_id=i) for a, i in zip(addresses, ids)],
                         Watchlist(keks, chain_id), public_keys)
