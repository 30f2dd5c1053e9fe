"""Int8 watchlist scan: the hand-written ONNX model, the error bound, and decisions equal to the float32 path."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from pipelines.models.detector import make_session
from pipelines.models.onnx_shapes import _fields
from pipelines.recognition.matching import (AMBIGUOUS, MATCHED, UNKNOWN, MatchConfig, MatchingError, group_offsets,
                                            l2_normalise, match, owners_of)
from pipelines.recognition.matching_int8 import (CUT_SLACK, INPUT_NAME, OUTPUT_NAME, QUERY_LEVELS, QUERY_ZERO_POINT,
                                                 TEMPLATE_LEVELS, Int8Scan, matmul_integer_model, quantise_queries,
                                                 quantise_templates)


def _unit(rng: np.random.Generator, n: int, d: int = 128) -> np.ndarray:
    return l2_normalise(rng.standard_normal((n, d)).astype(np.float32))


def _scan(templates: np.ndarray, counts: list[int] | np.ndarray) -> tuple[Int8Scan, np.ndarray, np.ndarray]:
    offsets = group_offsets(counts)
    owners = owners_of(offsets)
    return Int8Scan(templates, offsets, owners), offsets, owners


def _assert_same_decisions(scan: Int8Scan, queries: np.ndarray, templates: np.ndarray, offsets: np.ndarray,
                           config: MatchConfig) -> list:
    """Identity and subject equal the float32 path's; scores equal it in the decision region, within eps below."""
    ref = match(queries, templates, offsets, config)
    got = scan.match(queries, config)
    assert len(got) == len(ref)
    codes, q_scale, dq, qh, qn = quantise_queries(np.asarray(queries, np.float32).reshape(len(ref), -1))
    eps = scan.bound(dq, qh, qn)
    cut = config.threshold - config.margin - CUT_SLACK
    for i, (r, g) in enumerate(zip(ref, got)):
        assert (g.identity, g.subject) == (r.identity, r.subject), (i, r, g)
        for name in ("best", "second"):
            rv, gv = getattr(r, name), getattr(g, name)
            if rv >= cut:
                assert gv == pytest.approx(rv, abs=1e-6), (i, name, r, g)
            else:
                assert gv < cut and abs(gv - rv) <= eps[i] + 1e-6, (i, name, r, g)
    return ref


# --- the ONNX model -----------------------------------------------------------------------------------------

def test_model_is_one_matmulinteger_node_with_the_weights_as_initializer() -> None:
    w = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    model = matmul_integer_model(w)
    top = {num: payload for num, _, payload, _ in _fields(model)}
    graph = list(_fields(top[7]))
    nodes = [p for num, _, p, _ in graph if num == 1]
    assert len(nodes) == 1 and b"MatMulInteger" in nodes[0]
    inits = [p for num, _, p, _ in graph if num == 5]
    assert len(inits) == 2 and any(w.tobytes() in p for p in inits)
    with pytest.raises(ValueError):
        matmul_integer_model(w.astype(np.int16))
    with pytest.raises(ValueError):
        matmul_integer_model(w, a_zero_point=256)


def test_session_output_is_the_exact_integer_product_even_at_the_extremes() -> None:
    """7-bit queries x 8-bit templates at full scale: any int16 saturation would show here."""
    rng = np.random.default_rng(20)
    k, n = 128, 517
    w = rng.integers(-TEMPLATE_LEVELS, TEMPLATE_LEVELS + 1, size=(k, n)).astype(np.int8)
    w[:, 0], w[:, 1], w[:, 2] = TEMPLATE_LEVELS, -TEMPLATE_LEVELS, 0
    a = rng.integers(-QUERY_LEVELS, QUERY_LEVELS + 1, size=(7, k))
    a[0], a[1] = QUERY_LEVELS, -QUERY_LEVELS
    a[2, ::2], a[2, 1::2] = QUERY_LEVELS, -QUERY_LEVELS
    session = make_session(matmul_integer_model(w), threads=1)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: (a + QUERY_ZERO_POINT).astype(np.uint8)})[0]
    assert got.dtype == np.int32 and got.shape == (7, n)
    assert np.array_equal(got, a.astype(np.int64) @ w.astype(np.int64))
    assert got[0, 0] == 128 * QUERY_LEVELS * TEMPLATE_LEVELS and got[1, 0] == -got[0, 0]


# --- quantisation and the bound -------------------------------------------------------------------------------

def test_template_codes_and_norm_bounds() -> None:
    rng = np.random.default_rng(21)
    t = _unit(rng, 20000)
    t[5] = 0.0
    t[6] = l2_normalise(np.eye(1, 128, 3, dtype=np.float32))  # one spike sets the shared scale
    codes_t, scale, x_norm, dx_norm = quantise_templates(t)
    assert codes_t.shape == (128, 20000) and codes_t.dtype == np.int8
    assert np.abs(codes_t).max() == TEMPLATE_LEVELS and scale == pytest.approx(1.0 / TEMPLATE_LEVELS)
    deq = codes_t.T.astype(np.float64) * scale
    err = np.linalg.norm(t.astype(np.float64) - deq, axis=1)
    assert err.max() <= dx_norm and err.max() > 0.5 * dx_norm  # a bound, and not a vacuous one
    assert np.linalg.norm(t.astype(np.float64), axis=1).max() <= x_norm < 1.001
    assert np.all(err <= scale / 2 * math.sqrt(128) + 1e-9)


@pytest.mark.parametrize("kind", ["unit", "scaled", "spiky", "sparse"])
def test_bound_holds_on_every_pair(kind: str) -> None:
    """|approximate - float32 score| <= eps for every (query, template) pair, and eps is small for unit data."""
    rng = np.random.default_rng(22)
    t = _unit(rng, 4000)
    t[:50] = l2_normalise(t[:50] ** 3)  # heavy-tailed templates
    scan, _, _ = _scan(t, [1] * 4000)
    q = _unit(rng, 64)
    q[:32] = l2_normalise(t[rng.integers(0, 4000, 32)] + 0.05 * rng.standard_normal((32, 128)).astype(np.float32))
    if kind == "scaled":
        q = q * rng.uniform(1e-3, 40.0, size=(64, 1)).astype(np.float32)
    elif kind == "spiky":
        q[:, 7] += 3.0
    elif kind == "sparse":
        q[:, 16:] = 0.0
        q[0] = 0.0
    codes, q_scale, dq, qh, qn = quantise_queries(q)
    approx = scan.int_scores(codes).astype(np.float64) * (q_scale * scan.scale)[:, None]
    exact = q @ t.T  # what the float32 path computes
    eps = scan.bound(dq, qh, qn)
    gap = np.abs(approx - exact.astype(np.float64))
    assert np.all(gap <= eps[:, None]), float((gap - eps[:, None]).max())
    if kind in ("unit", "scaled"):  # a spike coarsens the other coordinates' codes; still a bound, looser
        norms = np.linalg.norm(q.astype(np.float64), axis=1)
        assert np.all(eps <= 0.05 * norms + 1e-9)  # about 0.025 for unit vectors: few rescored templates
    assert np.all(gap.max(axis=1) >= 0.05 * eps - 1e-9)  # the bound is within a small factor of real errors


def test_bound_is_attained_by_adversarial_pairs() -> None:
    """Each term of eps is reached (within 1%) by a constructed pair, so eps cannot be cut without breaking."""
    rng = np.random.default_rng(28)
    t = _unit(rng, 3000)
    scan, offsets, owners = _scan(t, [1] * 3000)
    codes_t, scale, _, _ = quantise_templates(t)

    def gap_and_eps(s: Int8Scan, q: np.ndarray, j: int) -> tuple[float, float]:
        codes, q_scale, dq, qh, qn = quantise_queries(q[None, :])
        approx = float(s.int_scores(codes)[0, j]) * float(q_scale[0]) * s.scale
        return abs(approx - float(q @ s.templates[j])), float(s.bound(dq, qh, qn)[0])

    # Template term: a query on its own grid (no query error) along the largest template error.
    dx = t.astype(np.float64) - codes_t.T * scale
    j = int(np.argmax(np.linalg.norm(dx, axis=1)))
    d = dx[j] / np.linalg.norm(dx[j])
    step = np.abs(d).max() / QUERY_LEVELS
    gap, eps = gap_and_eps(scan, (np.rint(d / step) * step).astype(np.float32), j)
    assert 0.99 * eps <= gap <= eps

    # Query term: templates on their grid (no template error), the query's rounding error along a template.
    grid = (codes_t.T * scale).astype(np.float32)
    on_grid = Int8Scan(grid, offsets, owners)
    assert on_grid.dx_norm_max < 1e-5
    x = grid[7].astype(np.float64)
    x[0] = 0.0
    base = rng.standard_normal(128)
    base[0] = 10.0  # sets the query's scale; x does not touch it
    step = 10.0 / QUERY_LEVELS
    q = (np.rint(base / step) * step + 0.45 * step * x / np.abs(x).max()).astype(np.float32)
    gap, eps = gap_and_eps(on_grid, q, 7)
    assert 0.98 * eps <= gap <= eps


# --- decisions ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [MatchConfig(), MatchConfig(0.3, 0.05), MatchConfig(0.6, 0.2),
                                    MatchConfig(0.363, 0.0), MatchConfig(-1.0, 0.0)])
def test_random_watchlists_decide_as_float32(config: MatchConfig) -> None:
    rng = np.random.default_rng(23)
    counts = rng.integers(1, 6, size=1500)
    t = _unit(rng, int(counts.sum()))
    scan, offsets, _ = _scan(t, counts)
    picks = rng.integers(0, t.shape[0], 150)
    q = l2_normalise(t[picks] + rng.standard_normal((150, 128)).astype(np.float32)
                     * rng.uniform(0.0, 0.15, (150, 1)).astype(np.float32))
    q[::4] = _unit(rng, q[::4].shape[0])  # strangers
    ref = _assert_same_decisions(scan, q, t, offsets, config)
    if config.threshold > 0:
        kinds = {r.identity for r in ref}
        assert MATCHED in kinds and UNKNOWN in kinds


def _orthonormal(rng: np.random.Generator, k: int) -> np.ndarray:
    basis, _ = np.linalg.qr(rng.standard_normal((128, k)))
    return basis.T  # (k, 128) float64


def _query_with(basis: np.ndarray, dots: list[float]) -> np.ndarray:
    """Unit query whose dot with basis[i] is dots[i] (in float64), the rest along basis[-1] (no template)."""
    q = sum(d * basis[i] for i, d in enumerate(dots)) + math.sqrt(1 - sum(d * d for d in dots)) * basis[-1]
    return q.astype(np.float32)


@pytest.mark.parametrize("delta", [-3e-4, -2e-5, 2e-5, 3e-4])
def test_edges_of_threshold_margin_and_cut(delta: float) -> None:
    """Best just around the threshold, runner-up just around best - margin and around the rescoring cut."""
    rng = np.random.default_rng(24)
    cfg = MatchConfig()
    basis = _orthonormal(rng, 4)
    t = _unit(rng, 3000) * np.float32(0.98)
    a, b, c = 900, 1700, 2500  # first templates of three subjects (two templates each)
    t[a], t[b], t[c] = basis[0], basis[1], basis[2]
    scan, offsets, _ = _scan(t, [2] * 1500)
    thr, m = cfg.threshold, cfg.margin
    cases = [
        [thr + delta, 0.1],  # best at the threshold
        [0.7, 0.7 - m - delta],  # runner-up at the margin
        [thr + 0.01, thr + 0.01 - m - delta],  # runner-up at the margin and at the cut
        [thr + m + 0.05, thr - m + delta],  # runner-up at the cut, clearly matched either way
        [0.66, 0.66 - delta, 0.2],  # near tie
        [thr - m + delta, thr - m - delta],  # both at the cut, unknown
        [0.75, thr - m - 0.03 + delta, thr - m - 0.02],  # runner-ups just below cut - eps: not rescored
    ]
    q = np.stack([_query_with(basis, d) for d in cases])
    ref = _assert_same_decisions(scan, q, t, offsets, cfg)
    assert ref[0].identity == (MATCHED if delta > 0 else UNKNOWN)
    assert ref[1].identity == (MATCHED if delta > 0 else AMBIGUOUS)
    assert ref[4].identity == AMBIGUOUS and ref[5].identity == UNKNOWN and ref[6].identity == MATCHED


def test_duplicates_one_subject_many_templates_and_odd_queries() -> None:
    rng = np.random.default_rng(25)
    t = _unit(rng, 2000)
    t[1000] = t[10]  # the same template enrolled for two subjects
    t[11] = t[10]  # and twice for one of them
    counts = [1] * 10 + [50] * 19 + [1] * 1040
    assert sum(counts) == 2000
    scan, offsets, _ = _scan(t, counts)
    q = np.stack([t[10], t[1000] * 3, t[500], t[500] * 0.01, np.zeros(128, np.float32),
                  l2_normalise(t[10:11] + t[500:501])[0], _unit(rng, 1)[0]])
    ref = _assert_same_decisions(scan, q, t, offsets, MatchConfig())
    assert ref[0].identity == AMBIGUOUS and ref[2].identity == MATCHED and ref[4].identity == UNKNOWN
    assert scan.match(np.zeros((0, 128), np.float32)) == []

    single, off1, _ = _scan(t[:300], [300])  # one subject: the runner-up score is -1
    res = _assert_same_decisions(single, q, t[:300], off1, MatchConfig())
    assert res[0].identity == MATCHED and res[0].second == -1.0


def test_low_threshold_rescores_through_the_float32_path() -> None:
    """Candidates beyond 1/16 of the templates: the query runs the float32 path, scores exact everywhere."""
    rng = np.random.default_rng(26)
    t = _unit(rng, 1200)
    scan, offsets, _ = _scan(t, [3] * 400)
    q = _unit(rng, 5)
    ref = match(q, t, offsets, MatchConfig(-1.0, 0.0))
    got = scan.match(q, MatchConfig(-1.0, 0.0))
    for r, g in zip(ref, got):  # one query at a time vs a batch: the float32 values may differ in the last bit
        assert (g.identity, g.subject) == (r.identity, r.subject)
        assert (g.best, g.second) == pytest.approx((r.best, r.second), abs=1e-6)


def test_pickles_as_its_inputs_and_rejects_bad_input() -> None:
    rng = np.random.default_rng(27)
    t = _unit(rng, 500)
    scan, offsets, _ = _scan(t, [1] * 500)
    clone = pickle.loads(pickle.dumps(scan))
    q = l2_normalise(t[:20] + 0.05 * rng.standard_normal((20, 128)).astype(np.float32))
    assert [(r.identity, r.subject) for r in clone.match(q)] == [(r.identity, r.subject) for r in scan.match(q)]
    assert "templates=500" in repr(scan)
    with pytest.raises(MatchingError):
        scan.match(t[0][:64])
    with pytest.raises(MatchingError):
        scan.match(np.full(128, np.nan, np.float32))
    with pytest.raises(MatchingError):
        Int8Scan(np.zeros((0, 128), np.float32), group_offsets([]), np.zeros(0, np.int64))


def test_threads_sharing_a_scan_get_their_own_results() -> None:
    """Each thread has its own output buffer: concurrent calls with different batch sizes do not mix."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(29)
    t = _unit(rng, 3000)
    scan, offsets, _ = _scan(t, [2] * 1500)
    batches = [l2_normalise(t[rng.integers(0, 3000, m)] + 0.05 * rng.standard_normal((m, 128)).astype(np.float32))
               for m in (1, 7, 20, 3, 16, 2) * 4]
    expected = [[(r.identity, r.subject) for r in match(b, t, offsets)] for b in batches]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(lambda b: [(r.identity, r.subject) for r in scan.match(b)], batches))
    assert got == expected
    assert sum(d[0] == MATCHED for batch in got for d in batch) > 100
