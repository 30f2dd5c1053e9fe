"""Vectorised nearest-subject matching of face embeddings against a watchlist (pure numpy).

A query matches a subject only when (a) its best cosine similarity over that subject's templates reaches
``threshold`` and (b) it beats the best similarity of every *other* subject by at least ``margin``. Anything
else is ``unknown`` (nothing close) or ``ambiguous`` (close, but to more than one subject), and both are
masked like a stranger downstream: a false match can disclose a bystander's face, a missed match only masks
a suspect, so every doubt resolves to "no match". Why the defaults are 0.50 and 0.08 is in docs/recognition.md.

Cost: one float32 matrix product (queries x templates) and two argmax passes (best template, then best
template of any other subject). One query alone is memory-bound (it streams the whole template matrix);
the faces of a frame are matched in one call. This is the reference path; large watchlists are matched by
:class:`pipelines.recognition.matching_int8.Int8Scan` (an int8 copy scanned first, float32 rescoring of everything that
could change a decision), which makes the same decisions at a quarter of the memory traffic.
Measurements: bench/matching_bench.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

# OpenCV's published SFace cosine match threshold (face_recognizer_sface demo); kept for reference only.
SFACE_OPENCV_THRESHOLD = 0.363
DEFAULT_THRESHOLD = 0.50
DEFAULT_MARGIN = 0.08

MATCHED = "matched"
AMBIGUOUS = "ambiguous"
UNKNOWN = "unknown"
STALE = "stale"


class MatchingError(ValueError):
    """Bad matcher input: wrong shapes, non-finite values, inconsistent subject table."""


@dataclass(frozen=True)
class MatchConfig:
    """Decision rule of the matcher: minimum cosine for a match, and the lead over the runner-up subject."""

    threshold: float = DEFAULT_THRESHOLD
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        if not (-1.0 <= self.threshold <= 1.0) or not np.isfinite(self.threshold):
            raise MatchingError(f"threshold must be a cosine in [-1, 1], got {self.threshold!r}")
        if not (0.0 <= self.margin <= 2.0) or not np.isfinite(self.margin):
            raise MatchingError(f"margin must be in [0, 2], got {self.margin!r}")


# Same shape as ledger/registry/payloads.py:SubjectTx, ledger/types/votes.py:Vote: unrelated records, own errors.
@dataclass(frozen=True)
class MatchResult:
    """Outcome for one query. ``subject`` is a row of the watchlist's subject table, -1 unless matched."""

    identity: str
    subject: int
    best: float
    second: float

    @property
    def matched(self) -> bool:
        return self.identity == MATCHED


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero so they match nothing."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def owners_of(offsets: np.ndarray) -> np.ndarray:
    """(N,) subject row of every template row, from the offsets table."""
    counts = np.diff(np.asarray(offsets, dtype=np.int64))
    return np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)


def top2_subjects(queries: np.ndarray, templates: np.ndarray, offsets: np.ndarray,
                  owners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: best subject, its score (max over its templates) and the best score of any other subject.

    Two passes of argmax over one (M, N) similarity matrix: the global best template gives the best subject;
    its subject's rows are then set to -inf and the next argmax is the runner-up subject. Exact, and O(N)
    per query after the matrix product (no per-subject reduction over all N templates).
    """
    sims = queries @ templates.T  # (M, N) float32
    rows = np.arange(sims.shape[0])
    i1 = sims.argmax(axis=1)
    best = sims[rows, i1].copy()
    subj = owners[i1]
    for r, sub in enumerate(subj):
        sims[r, offsets[sub]:offsets[sub + 1]] = -np.inf
    i2 = sims.argmax(axis=1)
    second = sims[rows, i2]
    second = np.where(np.isfinite(second), second, -1.0).astype(np.float32)
    return subj, best, second


def match(queries: np.ndarray, templates: np.ndarray, offsets: np.ndarray,
          config: MatchConfig = MatchConfig(), owners: np.ndarray | None = None) -> list[MatchResult]:
    """Match each row of ``queries`` (M, D) against subject-contiguous ``templates`` (N, D).

    Both are expected L2-normalised float32 (see :func:`l2_normalise`). ``offsets`` has S + 1 increasing
    entries from 0 to N; ``owners`` (from :func:`owners_of`) may be passed to save recomputing it. Returns
    one :class:`MatchResult` per query, in order.
    """
    q = check_queries(queries)
    if q.shape[0] == 0:
        return []
    n_subjects = _check_table(templates, offsets, q.shape[1])
    if n_subjects == 0:
        return [MatchResult(UNKNOWN, -1, -1.0, -1.0) for _ in range(q.shape[0])]
    if owners is None:
        owners = owners_of(offsets)
    subj, best, second = top2_subjects(q, templates, offsets, owners)
    return decide(subj, best, second, config)


def decide(subjects: np.ndarray, best: np.ndarray, second: np.ndarray, config: MatchConfig) -> list[MatchResult]:
    """Apply threshold and margin to per-query best subject, best score and runner-up score."""
    out: list[MatchResult] = []
    for i in range(best.shape[0]):
        b, sec = float(best[i]), float(second[i])
        if not np.isfinite(b) or b < config.threshold:
            out.append(MatchResult(UNKNOWN, -1, b, sec))
        elif b - sec < config.margin:
            out.append(MatchResult(AMBIGUOUS, -1, b, sec))
        else:
            out.append(MatchResult(MATCHED, int(subjects[i]), b, sec))
    return out


def check_queries(queries: np.ndarray) -> np.ndarray:
    """Queries as a finite float32 (M, D) matrix (one (D,) vector becomes one row); :class:`MatchingError` else."""
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2:
        raise MatchingError(f"queries must be (M, D), got shape {q.shape}")
    if q.dtype != np.float32:
        q = q.astype(np.float32)
    if not np.all(np.isfinite(q)):
        raise MatchingError("queries contain non-finite values")
    return q


def _check_table(templates: np.ndarray, offsets: np.ndarray, dim: int) -> int:
    if templates.ndim != 2 or (templates.shape[0] and templates.shape[1] != dim):
        raise MatchingError(f"templates must be (N, {dim}), got shape {templates.shape}")
    if templates.dtype != np.float32:
        raise MatchingError("templates must be float32")
    if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != templates.shape[0]:
        raise MatchingError("offsets must run from 0 to the number of templates")
    if offsets.shape[0] > 1 and np.any(np.diff(offsets) <= 0):
        raise MatchingError("every subject needs at least one template")
    return int(offsets.shape[0] - 1)


def group_offsets(counts: Sequence[int]) -> np.ndarray:
    """Offsets table for subjects owning ``counts[s]`` consecutive template rows."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=out[1:])
    return out
