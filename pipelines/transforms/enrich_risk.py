"""EnrichRisk: match each tracked face's embedding against the watchlist and attach risk and suspect flag.

Sits between EmbedFaces and MaskFaces. The watchlist is an in-memory :class:`WatchlistIndex` kept current by
a :class:`WatchlistSource` (the ledger client syncs records since the last height with the pipeline role and
decrypts them on the client); the sync runs in a background thread of the DoFn so that a slow ledger never
stalls frames, and its age is checked on every frame. Freshness comes from the chain: each sync reads the
watchlist from a node that serves the height of a certified tip (a commit certificate verified against the
genesis, from f+1 nodes); when only nodes behind it answer (lagging, or lying with an old copy), the ledger
client raises ``WatchlistStale`` and the index is marked stale at once.

Fail closed: a face is ``matched`` (and gets its subject's risk) only when the best subject clears the
threshold and beats the runner-up by the margin; otherwise it is ``unknown`` or ``ambiguous``. When the
watchlist is older than ``max_staleness_s`` every face is ``stale``. Anything but ``matched`` has risk None,
and MaskFaces (:func:`pipelines.transforms.mask_faces.decide_face`) gives it the policy's strongest mask. The embedding is removed from every face
here, so no template travels further; a keyed ``subject_ref`` is attached only to matched subjects whose
risk is above ``ref_min_risk`` (candidates for disclosure) and only when a reference key is configured.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from ledger.client.registry_client import RegistryClient
from ledger.client.watchlist import WatchlistStale, from_cluster
from pipelines.config.defaults import value
from pipelines.frame import FrameContext
from pipelines.recognition.matching import AMBIGUOUS, MATCHED, STALE, UNKNOWN, MatchConfig, MatchResult
from pipelines.recognition.watchlist_index import WatchlistIndex, index_from_watchlist, subject_ref
from pipelines.tracking.tracks import TrackedFace, TrackerConfig
from pipelines.transforms.embed_faces import EmbedConfig, EmbedFaces, set_if_field

logger = logging.getLogger(__name__)

STAGE = "enrich_risk"
CACHE_SIZE = 4096


class WatchlistSource(Protocol):
    """Produces the next index from the current one (incremental sync); raises on any failure."""

    def sync(self, current: WatchlistIndex, now: float) -> WatchlistIndex: ...


@dataclass(frozen=True)
class RiskConfig:
    """Matching rule, staleness bound and sync cadence (reasons in docs/recognition.md)."""

    match: MatchConfig = field(default_factory=MatchConfig)
    max_staleness_s: float = 30.0
    sync_interval_s: float = 5.0
    background_sync: bool = True
    subject_ref_key: Optional[bytes] = field(default=None, repr=False)
    ref_min_risk: int = 70

    def __post_init__(self) -> None:
        if self.max_staleness_s <= 0 or self.sync_interval_s <= 0:
            raise ValueError("max_staleness_s and sync_interval_s must be positive")
        if self.sync_interval_s >= self.max_staleness_s:
            raise ValueError("sync_interval_s must be shorter than max_staleness_s, or the watchlist goes stale")


class StaticWatchlistSource:
    """A fixed watchlist (offline runs, tests): every sync confirms the same content as current."""

    def __init__(self, index: WatchlistIndex) -> None:
        self._index = index

    def sync(self, current: WatchlistIndex, now: float) -> WatchlistIndex:
        return self._index.touched(now)


class LedgerWatchlistSource:
    """Adapter over ``ledger.client.watchlist.WatchlistSync``: ``sync_factory()`` builds the sync (signed clients with
    the pipeline key, the KEK keyring); each :meth:`sync` pulls the changes since the last height, which the
    ledger client decrypts into its ``Watchlist``, and re-indexes it when anything changed."""

    def __init__(self, sync_factory: Callable[[], Any]) -> None:
        self._factory = sync_factory
        self._sync: Any = None

    def sync(self, current: WatchlistIndex, now: float) -> WatchlistIndex:
        if self._sync is None:
            self._sync = self._factory()
        try:
            applied = self._sync.sync()
        except WatchlistStale as exc:
            # the chain has moved past what any reachable node serves: an erasure or a risk change may be
            # hidden, so the current index is stale now, not when the clock says so (strongest mask for all)
            logger.warning("watchlist is stale (%s); every face gets the strongest mask", exc)
            return current.touched(0.0)
        watchlist = self._sync.watchlist
        if applied == 0 and watchlist.height == current.height and current.synced_at > 0:
            return current.touched(now)
        return index_from_watchlist(watchlist, now)


class LedgerSyncFactory:
    """Picklable factory of ``ledger.client.watchlist.WatchlistSync`` for a ledger directory (genesis, client keys)
    and the privacy keyring: signed clients of every validator with the ``key_name`` (pipeline) key, and the
    keyring's key-encryption keys only (the pipeline never needs a pseudonymisation key)."""

    def __init__(self, ledger_dir: str, key_name: str = "pipeline", keys_dir: Optional[str] = None,
                 timeout_s: float = 10.0) -> None:
        self.ledger_dir, self.key_name, self.keys_dir, self.timeout_s = ledger_dir, key_name, keys_dir, timeout_s

    def __call__(self) -> Any:
        rc = RegistryClient.from_dir(Path(self.ledger_dir), key_name=self.key_name,
                                     keys_dir=Path(self.keys_dir) if self.keys_dir else None)
        try:
            addresses = [v.api_address for v in rc.genesis.validators]
            return from_cluster(addresses, rc.seed, dict(rc.ring.keks), rc.chain_id, rc.genesis.public_keys(),
                                self.timeout_s, node_ids=[v.public_key.hex() for v in rc.genesis.validators])
        finally:
            rc.close()


class WatchlistSourceFactory:
    """Picklable ``source_factory`` for :class:`EnrichRisk`: the ledger watchlist when ``ledger_dir`` is set,
    otherwise an empty watchlist that stays current (every face unknown: the strongest mask for all)."""

    def __init__(self, ledger_dir: Optional[str] = None, keys_dir: Optional[str] = None,
                 key_name: str = "pipeline") -> None:
        self.ledger_dir, self.keys_dir, self.key_name = ledger_dir, keys_dir, key_name

    def __call__(self) -> WatchlistSource:
        if not self.ledger_dir:
            return StaticWatchlistSource(WatchlistIndex.empty(height=0))
        return LedgerWatchlistSource(LedgerSyncFactory(self.ledger_dir, self.key_name, self.keys_dir))


def enrich_frame(frame: FrameContext, index: WatchlistIndex, now: float, config: RiskConfig,
                 cache: Optional["OrderedDict[bytes, MatchResult]"] = None) -> tuple[FrameContext, dict[str, int]]:
    """Attach identity/risk to every tracked face of ``frame`` and drop the embeddings. A frame without
    tracked faces (recognition did not run, or the frame is degraded) is left as it is: its detections are
    unknown faces, masked at the strongest level."""
    stats = {MATCHED: 0, AMBIGUOUS: 0, UNKNOWN: 0, STALE: 0, "match_failed": 0}
    if frame.tracked is None:
        stats[UNKNOWN] = len(frame.detections)
        return frame, stats
    faces = list(frame.tracked)
    stale = index.is_stale(now, config.max_staleness_s)
    need = [i for i, f in enumerate(faces) if f.embedding is not None]
    results: dict[int, MatchResult] = {}
    if need and not stale:
        misses = []
        for i in need:
            key = faces[i].embedding.tobytes()
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                results[i] = hit
            else:
                misses.append(i)
        matched: list[MatchResult] = []
        if misses:
            try:
                matched = index.match(np.stack([faces[i].embedding for i in misses]), config.match)
            except Exception as exc:  # noqa: BLE001 - bad template or index: these faces stay unknown
                logger.warning("matching failed on %s: %s", frame.dedupe_key, type(exc).__name__)
                stats["match_failed"] = len(misses)
            for i, r in zip(misses, matched):
                results[i] = r
                if cache is not None:
                    cache[faces[i].embedding.tobytes()] = r
                    if len(cache) > CACHE_SIZE:
                        cache.popitem(last=False)
    out: list[TrackedFace] = []
    for i, f in enumerate(faces):
        if f.embedding is not None and stale:
            out.append(f.replace(embedding=None, identity=STALE, risk=None, suspect=False, subject_ref=None))
            stats[STALE] += 1
            continue
        r = results.get(i)
        if r is None or not r.matched:
            ident = r.identity if r is not None else UNKNOWN
            out.append(f.replace(embedding=None, identity=ident, risk=None, suspect=False, subject_ref=None,
                                 match_score=r.best if r is not None else -1.0))
            stats[ident] += 1
            continue
        subject = index.subjects[r.subject]
        ref = None
        if config.subject_ref_key and (subject.risk > config.ref_min_risk):
            ref = subject_ref(config.subject_ref_key, subject.pseudonym)
        out.append(f.replace(embedding=None, identity=MATCHED, risk=subject.risk, suspect=subject.suspect,
                             subject_ref=ref, match_score=r.best))
        stats[MATCHED] += 1
    enriched = frame.replace(tracked=tuple(out))
    return set_if_field(enriched, watchlist_height=index.height), stats


class _Refresher:
    """Background incremental sync; the current index is swapped atomically (a single reference)."""

    def __init__(self, source: WatchlistSource, interval_s: float, clock: Callable[[], float]) -> None:
        self._source, self._interval, self._clock = source, interval_s, clock
        self.index = WatchlistIndex.empty()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_attempt = -float("inf")

    def sync_once(self) -> None:
        self._last_attempt = self._clock()
        try:
            self.index = self._source.sync(self.index, self._clock())
        except Exception as exc:  # noqa: BLE001 - keep the old index; staleness turns it off in time
            logger.warning("watchlist sync failed (%s); index stays at height %d", type(exc).__name__,
                           self.index.height)

    def maybe_sync(self) -> None:
        if self._clock() - self._last_attempt >= self._interval:
            self.sync_once()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watchlist-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sync_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


class _EnrichRiskFn(beam.DoFn):
    def __init__(self, source_factory: Callable[[], WatchlistSource], config: RiskConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self._source_factory = source_factory
        self._config = config
        self._clock = clock
        self._refresher: Optional[_Refresher] = None
        self._cache: "OrderedDict[bytes, MatchResult]" = OrderedDict()
        self._cache_index: Optional[WatchlistIndex] = None
        self._counters = {k: Metrics.counter(STAGE, f"faces_{k}")
                          for k in (MATCHED, AMBIGUOUS, UNKNOWN, STALE, "match_failed")}
        self._latency = Metrics.distribution(STAGE, "frame_us")

    def setup(self) -> None:
        self._refresher = _Refresher(self._source_factory(), self._config.sync_interval_s, self._clock)
        # The first sync runs here, so that a reachable ledger's watchlist is in place before the first frame
        # (until then every face would be "stale"); the following ones run in the background.
        self._refresher.sync_once()
        if self._config.background_sync:
            self._refresher.start()

    def teardown(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()

    def process(self, frame: Any) -> Iterator[Any]:
        assert self._refresher is not None
        start = time.perf_counter()
        if not self._config.background_sync:
            self._refresher.maybe_sync()
        index = self._refresher.index
        from pipelines.metrics import observe_watchlist  # /metrics of riskmask run: height and age

        observe_watchlist(index.height, index.synced_at)
        if self._cache_index is not index:
            self._cache.clear()  # results are only valid for the index they were computed on
        self._cache_index = index
        out, stats = enrich_frame(frame, index, self._clock(), self._config, self._cache)
        for k, n in stats.items():
            self._counters[k].inc(n)
        self._latency.update(int((time.perf_counter() - start) * 1e6))
        yield out


class EnrichRisk(beam.PTransform):
    """FrameContext (tracked faces with embeddings) -> FrameContext (identity, risk, suspect; no templates)."""

    def __init__(self, source_factory: Callable[[], WatchlistSource], config: RiskConfig = RiskConfig(),
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._fn = _EnrichRiskFn(source_factory, config, clock)

    def expand(self, frames: beam.PCollection) -> beam.PCollection:
        return frames | "MatchWatchlist" >> beam.ParDo(self._fn)



def recognition_from_options(opts: Any, recognizer_factory: Optional[Callable[[], Any]] = None,
                             source_factory: Optional[Callable[[], WatchlistSource]] = None) -> beam.PTransform:
    """``EmbedFaces | EnrichRisk`` configured from pipeline options (declared defaults for options not set):
    recognizer_threads, min_face_px, track_state, track_max_gap, reverify_every, match_threshold,
    match_margin, watchlist_max_staleness_s, watchlist_sync_interval_s, ledger_dir, keys_dir,
    subject_ref_key_file. Without ``ledger_dir`` the watchlist is empty: every face gets the strongest mask
    and no face is embedded (tracking and gap filling still run)."""
    embed = EmbedConfig(tracker=TrackerConfig(max_gap=int(value(opts, "track_max_gap")),
                                              reverify_every=int(value(opts, "reverify_every"))),
                        min_face_px=int(value(opts, "min_face_px")),
                        recognizer_threads=int(value(opts, "recognizer_threads")),
                        state=str(value(opts, "track_state")),
                        # Without a ledger nobody can be recognised: track and gap-fill, but skip SFace.
                        embed=value(opts, "ledger_dir") is not None or source_factory is not None)
    ref_key = None
    key_file = value(opts, "subject_ref_key_file")
    if key_file:
        with open(key_file, "rb") as fh:
            ref_key = fh.read().strip()
    risk = RiskConfig(match=MatchConfig(float(value(opts, "match_threshold")),
                                        float(value(opts, "match_margin"))),
                      max_staleness_s=float(value(opts, "watchlist_max_staleness_s")),
                      sync_interval_s=float(value(opts, "watchlist_sync_interval_s")),
                      subject_ref_key=ref_key or None)
    source = source_factory or WatchlistSourceFactory(value(opts, "ledger_dir"), value(opts, "keys_dir"))
    return EmbedFaces(embed, recognizer_factory) | EnrichRisk(source, risk)
