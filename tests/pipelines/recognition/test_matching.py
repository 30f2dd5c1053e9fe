"""Matcher and watchlist index: threshold, margin, multi-template subjects, incremental sync, staleness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.recognition.matching import (AMBIGUOUS, MATCHED, UNKNOWN, MatchConfig, MatchingError, group_offsets,
                                            l2_normalise, match)
from pipelines.recognition.watchlist_index import (Subject, WatchlistError, WatchlistIndex, subject_from_record,
                                                   subject_ref)


def _unit(rng: np.random.Generator, n: int, d: int = 128) -> np.ndarray:
    return l2_normalise(rng.standard_normal((n, d)).astype(np.float32))


def _at_cosine(base: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine with unit ``base`` is exactly ``cos``."""
    r = rng.standard_normal(base.shape).astype(np.float64)
    r -= (r @ base) * base
    r /= np.linalg.norm(r)
    return (cos * base + math.sqrt(1 - cos * cos) * r).astype(np.float32)


def _subjects(n: int) -> list[Subject]:
    return [Subject(bytes([i + 1]) * 32, risk=10 * (i % 10), suspect=bool(i % 2)) for i in range(n)]


def test_exact_template_matches_its_subject() -> None:
    rng = np.random.default_rng(1)
    t = _unit(rng, 20)
    res = match(t[7], t, group_offsets([1] * 20))
    assert res[0].identity == MATCHED and res[0].subject == 7
    assert res[0].best == pytest.approx(1.0, abs=1e-5)


def test_threshold_edges_default_config() -> None:
    rng = np.random.default_rng(2)
    t = _unit(rng, 5)
    cfg = MatchConfig()
    just_under = _at_cosine(t[0].astype(np.float64), cfg.threshold - 0.01, rng)
    just_over = _at_cosine(t[0].astype(np.float64), cfg.threshold + 0.12, rng)
    assert match(just_under, t, group_offsets([1] * 5), cfg)[0].identity == UNKNOWN
    r = match(just_over, t, group_offsets([1] * 5), cfg)[0]
    assert r.identity == MATCHED and r.subject == 0


def test_opencv_threshold_is_not_enough_for_a_match() -> None:
    """A face at SFace's 0.363 (a plausible impostor score on hard pairs) must not count as a match."""
    rng = np.random.default_rng(3)
    t = _unit(rng, 3)
    q = _at_cosine(t[1].astype(np.float64), 0.40, rng)
    assert match(q, t, group_offsets([1] * 3))[0].identity == UNKNOWN


def test_ambiguous_between_two_subjects() -> None:
    rng = np.random.default_rng(4)
    a = _unit(rng, 1)[0].astype(np.float64)
    b = _at_cosine(a, 0.9, rng).astype(np.float64)  # two similar-looking subjects
    q = l2_normalise((a + b)[None, :]).astype(np.float32)  # equally close to both: ~0.97 each
    t = np.stack([a, b]).astype(np.float32)
    r = match(q, t, group_offsets([1, 1]))[0]
    assert r.best > 0.9 and r.identity == AMBIGUOUS and r.subject == -1
    # The same query against a watchlist holding only one of them is a match.
    r1 = match(q, t[:1], group_offsets([1]))[0]
    assert r1.identity == MATCHED and r1.subject == 0


def test_margin_counts_subjects_not_templates() -> None:
    """Two templates of the same subject both close to the query are not an ambiguity."""
    rng = np.random.default_rng(5)
    a = _unit(rng, 1)[0].astype(np.float64)
    t = np.stack([a, _at_cosine(a, 0.95, rng), _unit(rng, 1)[0]]).astype(np.float32)
    r = match(a.astype(np.float32), t, group_offsets([2, 1]))[0]
    assert r.identity == MATCHED and r.subject == 0 and r.second < 0.5


def test_many_queries_vectorised_agree_with_single() -> None:
    rng = np.random.default_rng(6)
    t = _unit(rng, 300)
    offsets = group_offsets([3] * 100)
    q = np.stack([_at_cosine(t[3 * i].astype(np.float64), 0.8, rng) for i in range(0, 100, 7)])
    batch = match(q, t, offsets)
    for i, row in enumerate(q):
        one = match(row, t, offsets)[0]
        assert (one.identity, one.subject) == (batch[i].identity, batch[i].subject)
        assert one.best == pytest.approx(batch[i].best, abs=1e-5)
    assert [r.subject for r in batch] == list(range(0, 100, 7))


def test_empty_watchlist_and_empty_queries() -> None:
    empty = WatchlistIndex.empty()
    assert empty.match(_unit(np.random.default_rng(7), 2))[0].identity == UNKNOWN
    assert match(np.zeros((0, 128), np.float32), _unit(np.random.default_rng(7), 2), group_offsets([1, 1])) == []


@pytest.mark.parametrize("bad", [np.full(128, np.nan, np.float32), np.ones((2, 2, 128), np.float32)])
def test_bad_queries_raise(bad: np.ndarray) -> None:
    t = _unit(np.random.default_rng(8), 2)
    with pytest.raises(MatchingError):
        match(bad, t, group_offsets([1, 1]))


def test_bad_tables_and_configs_raise() -> None:
    t = _unit(np.random.default_rng(9), 2)
    with pytest.raises(MatchingError):
        match(t[0], t, np.array([0, 1]))
    with pytest.raises(MatchingError):
        match(t[0], t, np.array([0, 0, 2]))
    with pytest.raises(MatchingError):
        match(t[0][:64], t, group_offsets([1, 1]))
    with pytest.raises(MatchingError):
        MatchConfig(threshold=1.5)
    with pytest.raises(MatchingError):
        MatchConfig(margin=-0.1)


def test_index_build_skips_subjects_without_templates_and_normalises() -> None:
    rng = np.random.default_rng(10)
    subs = _subjects(3)
    raw = rng.standard_normal((2, 128)).astype(np.float32) * 7
    idx = WatchlistIndex.build([(subs[0], [raw[0]]), (subs[1], []), (subs[2], [raw[1]])], 12, 100.0)
    assert len(idx) == 2 and idx.height == 12
    assert np.allclose(np.linalg.norm(idx.templates, axis=1), 1.0, atol=1e-5)
    r = idx.match(raw[1] * 3)[0]
    assert r.matched and idx.subjects[r.subject] == subs[2]
    assert idx.index_of(subs[1].pseudonym) is None
    assert "risk" not in repr(idx) and subs[0].pseudonym.hex() not in repr(idx.subjects)


def test_index_rejects_bad_subjects() -> None:
    good = np.ones(128, np.float32)
    with pytest.raises(WatchlistError):
        WatchlistIndex.build([(Subject(b"p" * 32, 101, False), [good])], 1, 1.0)
    with pytest.raises(WatchlistError):
        WatchlistIndex.build([(Subject(b"p" * 32, 50, False), [good]), (Subject(b"p" * 32, 60, True), [good])],
                             1, 1.0)
    with pytest.raises(WatchlistError):
        WatchlistIndex.build([(Subject(b"q" * 32, 50, False), [np.full(128, np.inf, np.float32)])], 1, 1.0)


def test_incremental_sync_upsert_erase_and_monotonic_height() -> None:
    rng = np.random.default_rng(11)
    subs = _subjects(3)
    tmpl = _unit(rng, 4)
    idx = WatchlistIndex.build([(subs[0], [tmpl[0]]), (subs[1], [tmpl[1]])], 5, 10.0)
    raised = Subject(subs[1].pseudonym, risk=95, suspect=True)
    idx2 = idx.with_updates([(raised, [tmpl[1], tmpl[3]]), (subs[2], [tmpl[2]])], [subs[0].pseudonym], 9, 20.0)
    assert idx2.height == 9 and len(idx2) == 2 and idx2.templates.shape[0] == 3
    assert idx2.match(tmpl[0])[0].identity == UNKNOWN  # erased subject no longer matches
    r = idx2.match(tmpl[3])[0]
    assert r.matched and idx2.subjects[r.subject].risk == 95
    assert idx.height == 5 and len(idx) == 2  # the old index is untouched
    with pytest.raises(WatchlistError):
        idx2.with_updates([], [], 8, 30.0)


def test_staleness() -> None:
    idx = WatchlistIndex.build([(_subjects(1)[0], [np.ones(128, np.float32)])], 3, 1000.0)
    assert not idx.is_stale(1030.0, 60.0)
    assert idx.is_stale(1061.0, 60.0)
    assert idx.touched(1060.0).is_stale(1100.0, 60.0) is False
    assert WatchlistIndex.empty().age_s(5.0) == math.inf


def test_subject_ref_is_keyed_and_short() -> None:
    p = b"\x01" * 32
    a, b = subject_ref(b"k1" * 16, p), subject_ref(b"k2" * 16, p)
    assert len(a) == 16 and a != b and p.hex()[:16] not in (a, b)
    with pytest.raises(WatchlistError):
        subject_ref(b"", p)


def test_adapter_from_ledger_subject_record() -> None:
    from ledger.client.privacy import SubjectRecord

    t = l2_normalise(np.random.default_rng(12).standard_normal((2, 128)))
    rec = SubjectRecord.make(risk=80, suspect=True, templates=list(t))
    subject, templates = subject_from_record(b"\x05" * 32, rec)
    assert subject.risk == 80 and subject.suspect and len(templates) == 2
    assert np.allclose(templates[1], t[1], atol=1e-6)


def test_top2_agrees_with_a_per_subject_brute_force() -> None:
    rng = np.random.default_rng(13)
    counts = rng.integers(1, 5, size=60)
    t = _unit(rng, int(counts.sum()))
    offsets = group_offsets(counts)
    q = l2_normalise(t[rng.integers(0, t.shape[0], 25)] + rng.standard_normal((25, 128)).astype(np.float32) * 0.05)
    for row, res in zip(q, match(q, t, offsets, MatchConfig(threshold=-1.0, margin=0.0))):
        per_subject = np.array([max(float(row @ t[j]) for j in range(offsets[s], offsets[s + 1]))
                                for s in range(len(counts))])
        order = np.argsort(-per_subject)
        assert res.subject == order[0]
        assert res.best == pytest.approx(per_subject[order[0]], abs=1e-5)
        assert res.second == pytest.approx(per_subject[order[1]], abs=1e-5)
