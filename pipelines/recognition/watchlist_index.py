"""In-memory, matchable form of the watchlist: template matrix, subject table, ledger height and sync time.

The ledger client (``ledger.client.watchlist``) syncs encrypted subject records with the pipeline role and decrypts
them on the client; this module turns the decrypted records into arrays the matcher can use in one matrix
product, and applies incremental syncs (upserts and erasures since a height) by rebuilding the arrays. It is
pure (no I/O) so that the matcher and the risk stage are testable without a ledger.

From :data:`FAST_SCAN_MIN_TEMPLATES` templates on, every build (so every sync that changed anything) also
builds an int8 copy of the matrix (:class:`pipelines.recognition.matching_int8.Int8Scan`) and matching scans that copy,
with the same decisions as the float32 path; smaller watchlists use the float32 path, which is as fast there.
If the int8 copy cannot be built (onnxruntime refuses the model), the index logs it and stays on float32.

Templates are personal data: an index never logs them, and its ``repr`` shows only counts and the height.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from pipelines.recognition.matching import (MatchConfig, MatchingError, MatchResult, group_offsets, l2_normalise, match,
                                            owners_of)
from pipelines.recognition.matching_int8 import Int8Scan

logger = logging.getLogger(__name__)

TEMPLATE_DIM = 128
SUBJECT_REF_BYTES = 8
# Measured (bench/matching_bench.py, 1 thread): one query costs about the same on both paths at 5,000-10,000
# templates (~0.3 ms); from there float32 grows with the 512 bytes per template it streams (20,000: 0.9 ms,
# 100,000: 5-11 ms) while the int8 scan stays under ~0.5 ms up to 20,000. Below, the int8 copy would only add
# build time and memory.
FAST_SCAN_MIN_TEMPLATES = 10_000


# Same shape as pipelines/tracking/tracks.py:TrackingError, Box: each module's own error and record.
class WatchlistError(ValueError):
    """An index that cannot be built from the given records."""


@dataclass(frozen=True)
class Subject:
    """What the masking policy needs about one registered subject (the pseudonym never leaves unkeyed)."""

    pseudonym: bytes
    risk: int
    suspect: bool

    def __repr__(self) -> str:  # a pseudonym is personal data under GDPR: keep it out of logs
        return f"Subject(risk={self.risk}, suspect={self.suspect})"


@dataclass(frozen=True, eq=False)
class WatchlistIndex:
    """Subject-contiguous templates (N, D) float32, ``offsets`` (S + 1), one :class:`Subject` per row group.

    ``height`` is the ledger height the records were read at (-1: never synced); ``synced_at`` the wall time
    (seconds since the epoch) of the last successful sync, which drives the staleness rule.
    """

    templates: np.ndarray
    offsets: np.ndarray
    subjects: tuple[Subject, ...]
    height: int = -1
    synced_at: float = 0.0
    _by_pseudonym: Mapping[bytes, int] = field(default_factory=dict, repr=False, compare=False)
    _owners: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    _scan: Optional[Int8Scan] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._owners is None:
            owners = owners_of(self.offsets)
            owners.setflags(write=False)
            object.__setattr__(self, "_owners", owners)
        if self._scan is None and self.templates.shape[0] >= FAST_SCAN_MIN_TEMPLATES:
            try:
                object.__setattr__(self, "_scan", Int8Scan(self.templates, self.offsets, self._owners))
            except Exception as exc:  # onnxruntime raises its own types; float32 stays correct, only slower
                logger.warning("int8 watchlist scan unavailable, matching in float32: %s", exc)

    def __repr__(self) -> str:
        return (f"WatchlistIndex(subjects={len(self.subjects)}, templates={self.templates.shape[0]}, "
                f"height={self.height})")

    @classmethod
    def empty(cls, height: int = -1, synced_at: float = 0.0, dim: int = TEMPLATE_DIM) -> "WatchlistIndex":
        return cls(np.zeros((0, dim), np.float32), np.zeros(1, np.int64), (), height, synced_at, {})

    @classmethod
    def build(cls, entries: Iterable[tuple[Subject, Sequence[np.ndarray]]], height: int, synced_at: float,
              dim: int = TEMPLATE_DIM) -> "WatchlistIndex":
        """Index ``(subject, templates)`` pairs. Subjects without templates cannot match and are left out."""
        subjects: list[Subject] = []
        blocks: list[np.ndarray] = []
        seen: dict[bytes, int] = {}
        for subject, templates in entries:
            _check_subject(subject)
            if subject.pseudonym in seen:
                raise WatchlistError("duplicate subject in watchlist entries")
            arr = _as_rows(templates, dim)
            if arr.shape[0] == 0:
                continue
            seen[subject.pseudonym] = len(subjects)
            subjects.append(subject)
            blocks.append(arr)
        if not subjects:
            return cls.empty(height, synced_at, dim)
        # One concatenation, one finiteness check and one normalisation for all subjects (per-subject numpy
        # calls cost ~2 s at 100,000 templates).
        raw = np.concatenate(blocks, axis=0)
        if not np.all(np.isfinite(raw)):
            raise WatchlistError("a template has non-finite values")
        mat = np.ascontiguousarray(l2_normalise(raw), dtype=np.float32)
        mat.setflags(write=False)
        offsets = group_offsets([b.shape[0] for b in blocks])
        offsets.setflags(write=False)
        return cls(mat, offsets, tuple(subjects), int(height), float(synced_at), seen)

    def entries(self) -> list[tuple[Subject, np.ndarray]]:
        """The ``(subject, templates)`` pairs this index was built from."""
        return [(s, self.templates[self.offsets[i]:self.offsets[i + 1]]) for i, s in enumerate(self.subjects)]

    def with_updates(self, upserts: Iterable[tuple[Subject, Sequence[np.ndarray]]], erased: Iterable[bytes],
                     height: int, synced_at: float) -> "WatchlistIndex":
        """A new index with subjects replaced/added by ``upserts`` and removed by ``erased`` pseudonyms."""
        if height < self.height:
            raise WatchlistError(f"sync went backwards: height {height} < {self.height}")
        current: dict[bytes, tuple[Subject, Sequence[np.ndarray]]] = {s.pseudonym: (s, t) for s, t in self.entries()}
        for p in erased:
            current.pop(bytes(p), None)
        for subject, templates in upserts:
            current[subject.pseudonym] = (subject, templates)
        return WatchlistIndex.build(current.values(), height, synced_at, self.templates.shape[1])

    def touched(self, synced_at: float) -> "WatchlistIndex":
        """The same content, confirmed current at ``synced_at`` (a sync that found nothing new)."""
        return WatchlistIndex(self.templates, self.offsets, self.subjects, self.height, float(synced_at),
                              self._by_pseudonym, self._owners, self._scan)

    def __len__(self) -> int:
        return len(self.subjects)

    def age_s(self, now: float) -> float:
        """Seconds since the last successful sync (infinite when never synced)."""
        if self.height < 0 or self.synced_at <= 0:
            return math.inf
        return max(0.0, now - self.synced_at)

    def is_stale(self, now: float, max_age_s: float) -> bool:
        return self.age_s(now) > max_age_s

    @property
    def scan(self) -> Optional[Int8Scan]:
        """The int8 copy matching uses, or None (small watchlist, or it could not be built): float32 path."""
        return self._scan

    def match(self, queries: np.ndarray, config: MatchConfig = MatchConfig()) -> list[MatchResult]:
        """Match (M, D) embeddings; see :func:`pipelines.recognition.matching.match` (same decisions on either path)."""
        if self._scan is not None:
            return self._scan.match(queries, config)
        return match(queries, self.templates, self.offsets, config, self._owners)

    def index_of(self, pseudonym: bytes) -> Optional[int]:
        return self._by_pseudonym.get(bytes(pseudonym))


def _as_rows(templates: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """(k, dim) float32 rows of one subject's templates (an array already in that shape is not copied)."""
    if isinstance(templates, np.ndarray) and templates.ndim == 2 and templates.dtype == np.float32:
        if templates.shape[1] != dim and templates.shape[0]:
            raise WatchlistError(f"templates must have {dim} values, got {templates.shape[1]}")
        return templates
    if len(templates) == 0:
        return np.zeros((0, dim), np.float32)
    try:
        return np.asarray(list(templates), dtype=np.float32).reshape(-1, dim)
    except ValueError:
        raise WatchlistError(f"templates must have {dim} values each") from None


def subject_ref(key: bytes, pseudonym: bytes) -> str:
    """Short keyed reference for a *disclosed* high-risk subject: HMAC-SHA256(key, pseudonym), 8 bytes hex.

    Without the key it cannot be linked to the pseudonym on the ledger; with it an operator can.
    """
    if not key:
        raise WatchlistError("subject reference key is empty")
    return hmac.new(key, b"riskmask.subject_ref.v1\x00" + pseudonym, hashlib.sha256).digest()[:SUBJECT_REF_BYTES].hex()


def _check_subject(subject: Subject) -> None:
    if not isinstance(subject.pseudonym, bytes) or not subject.pseudonym:
        raise WatchlistError("subject pseudonym must be non-empty bytes")
    if isinstance(subject.risk, bool) or not isinstance(subject.risk, int) or not 0 <= subject.risk <= 100:
        raise WatchlistError("subject risk must be an integer 0..100")
    if not isinstance(subject.suspect, bool):
        raise WatchlistError("subject suspect flag must be a boolean")


def subject_from_record(pseudonym: bytes, record: Any) -> tuple[Subject, list[np.ndarray]]:
    """Adapter for a decrypted ledger record (``ledger.client.privacy.SubjectRecord`` or alike: ``risk``,
    ``suspect`` and ``template_arrays()`` or ``templates`` as float32 arrays / little-endian bytes)."""
    if hasattr(record, "template_arrays"):
        templates = list(record.template_arrays())
    else:
        templates = [np.frombuffer(t, dtype="<f4").astype(np.float32) if isinstance(t, (bytes, bytearray))
                     else np.asarray(t, dtype=np.float32) for t in getattr(record, "templates", ())]
    return Subject(bytes(pseudonym), int(record.risk), bool(record.suspect)), templates


def index_from_watchlist(watchlist: Any, synced_at: float) -> WatchlistIndex:
    """Index a decrypted ``ledger.client.watchlist.Watchlist`` (entries with pseudonym, templates, risk, suspect)."""
    entries = [(Subject(bytes(e.pseudonym), int(e.risk), bool(e.suspect)), list(np.asarray(e.templates)))
               for e in watchlist.entries()]
    return WatchlistIndex.build(entries, int(watchlist.height), synced_at)


__all__ = ["Subject", "WatchlistIndex", "WatchlistError", "MatchingError", "subject_ref", "subject_from_record",
           "index_from_watchlist", "TEMPLATE_DIM", "FAST_SCAN_MIN_TEMPLATES"]
