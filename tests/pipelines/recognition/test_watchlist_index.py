"""Watchlist index and its int8 scan: cut-over, rebuild on every sync that changes content, same decisions."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipelines.recognition import watchlist_index
from pipelines.recognition.matching import MATCHED, UNKNOWN, MatchConfig, l2_normalise, match
from pipelines.recognition.watchlist_index import FAST_SCAN_MIN_TEMPLATES, Subject, WatchlistIndex


def _entries(rng: np.random.Generator, n_subjects: int, per_subject: int = 2) -> list[tuple[Subject, np.ndarray]]:
    t = l2_normalise(rng.standard_normal((n_subjects * per_subject, 128)).astype(np.float32))
    return [(Subject(i.to_bytes(4, "big") * 8, i % 101, bool(i % 2)), t[i * per_subject:(i + 1) * per_subject])
            for i in range(n_subjects)]


def _queries(rng: np.random.Generator, index: WatchlistIndex, n: int) -> np.ndarray:
    picks = rng.integers(0, index.templates.shape[0], n)
    q = l2_normalise(index.templates[picks] + 0.05 * rng.standard_normal((n, 128)).astype(np.float32))
    q[::3] = l2_normalise(rng.standard_normal((q[::3].shape[0], 128)).astype(np.float32))
    return q


def _decisions(results: list) -> list[tuple[str, int]]:
    return [(r.identity, r.subject) for r in results]


@pytest.fixture
def small_cutover(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchlist_index, "FAST_SCAN_MIN_TEMPLATES", 100)


def test_default_cutover_builds_the_scan_and_matches_as_float32() -> None:
    rng = np.random.default_rng(30)
    big = WatchlistIndex.build(_entries(rng, FAST_SCAN_MIN_TEMPLATES // 2), 1, 10.0)
    assert big.templates.shape[0] == FAST_SCAN_MIN_TEMPLATES and big.scan is not None
    small = WatchlistIndex.build(_entries(rng, FAST_SCAN_MIN_TEMPLATES // 2 - 1), 1, 10.0)
    assert small.scan is None
    q = _queries(rng, big, 40)
    ref = match(q, big.templates, big.offsets)
    assert _decisions(big.match(q)) == _decisions(ref)
    assert sum(r.identity == MATCHED for r in ref) >= 20


def test_scan_decisions_equal_float32_for_several_configs(small_cutover: None) -> None:
    rng = np.random.default_rng(31)
    index = WatchlistIndex.build(_entries(rng, 400, 3), 1, 10.0)
    assert index.scan is not None
    q = _queries(rng, index, 60)
    for cfg in (MatchConfig(), MatchConfig(0.4, 0.0), MatchConfig(0.7, 0.15)):
        assert _decisions(index.match(q, cfg)) == _decisions(match(q, index.templates, index.offsets, cfg))


def test_updates_and_erasures_rebuild_the_scan(small_cutover: None) -> None:
    rng = np.random.default_rng(32)
    entries = _entries(rng, 100)
    index = WatchlistIndex.build(entries, 5, 10.0)
    erased_subject, erased_templates = entries[3]
    assert index.match(erased_templates[0])[0].identity == MATCHED
    new_template = l2_normalise(rng.standard_normal((1, 128)).astype(np.float32))[0]
    newcomer = Subject(b"\xee" * 32, 90, True)
    assert index.match(new_template)[0].identity == UNKNOWN

    updated = index.with_updates([(newcomer, [new_template])], [erased_subject.pseudonym], 6, 20.0)
    assert updated.scan is not None and updated.scan is not index.scan
    assert updated.scan.templates is updated.templates and updated.templates.shape[0] == 199
    assert updated.match(erased_templates[0])[0].identity == UNKNOWN  # erased: gone from the int8 copy too
    hit = updated.match(new_template)[0]
    assert hit.matched and updated.subjects[hit.subject] == newcomer
    assert index.match(erased_templates[0])[0].identity == MATCHED  # the old index is untouched

    shrunk = updated.with_updates([], [s.pseudonym for s, _ in entries[:60]], 7, 30.0)
    assert shrunk.templates.shape[0] == 81 and shrunk.scan is None  # back under the cut-over: float32 path
    assert shrunk.match(entries[70][1][0])[0].matched


def test_touched_keeps_the_scan_and_pickling_rebuilds_it(small_cutover: None) -> None:
    rng = np.random.default_rng(33)
    index = WatchlistIndex.build(_entries(rng, 80), 5, 10.0)
    touched = index.touched(50.0)
    assert touched.scan is index.scan and touched.synced_at == 50.0
    clone = pickle.loads(pickle.dumps(index))
    assert clone.scan is not None and clone.scan is not index.scan
    q = _queries(rng, index, 30)
    assert _decisions(clone.match(q)) == _decisions(index.match(q))
    assert "templates=160" in repr(index.scan)
