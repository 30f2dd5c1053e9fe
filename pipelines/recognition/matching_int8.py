"""Exact-decision watchlist scan over an int8 copy of the templates (onnxruntime ``MatMulInteger``).

One query against 100,000 templates is memory-bound in float32: it streams a 51 MB matrix. This scan streams
an int8 copy instead (12.8 MB, small enough to stay in a 32 MB L3 cache), then rescores in float32 only the
few templates that could change a decision, so every match decision is the one the float32 path makes.

Why decisions cannot change. Let ``cut = threshold - margin``. A decision only reads scores >= ``cut``: the
best score is compared with ``threshold`` (>= cut), and a runner-up below ``cut`` is more than ``margin``
under any best that reaches ``threshold``, so it cannot make the result ambiguous. Each approximate score
``a_j`` (int8 query x int8 template, exact int32 sum, rescaled) comes with a rigorous bound ``eps`` on its
distance to the float32 score ``f_j`` the reference path computes::

    |q.x - q^.x^| <= ||q - q^|| * ||x|| + ||q^|| * ||x - x^||      (Cauchy-Schwarz, real arithmetic)
    |fl32(q.x) - q.x| <= 1e-5 * ||q|| * ||x||                        (K u = 128 * 2^-24 < 7.7e-6, any order)

Every template with ``a_j >= cut - eps`` is rescored in float32; every other one has ``f_j < cut`` and
``a_j < cut``. So the merged scores (float32 where rescored, approximate elsewhere) agree with the float32
scores on everything at or above ``cut`` and stay below ``cut`` everywhere else, and the top-2-subject rule
of :func:`pipelines.recognition.matching.top2_subjects` (ties to the lowest template row) gives the same decision.

Reported scores: ``best`` and ``second`` are the float32 values when their template was rescored, which is
always the case for scores at or above ``cut``; below that (an ``unknown`` best, a far runner-up) they are
the approximate value, within ``eps`` (about 0.02 for unit vectors) of the float32 score. The rescored
float32 values come from a product over the candidate rows only, so they can differ from the full-matrix
product in the last bit (about 1e-7), as the float32 path already does between batch sizes.

Quantisation: templates share one scale (``max |x| / 127``, int8 in [-127, 127]); each query has its own
scale with 7 bits (``[-63, 63]``, stored as uint8 with zero point 64). The split keeps every pair of
products under 2 * 127 * 127 = 32,258, so the AVX2 kernel's int16 pair sums (``vpmaddubsw``) cannot
saturate; with 8-bit queries they do, and the int32 result is silently wrong.

When the candidates of a query exceed ``1/16`` of the templates (a very low threshold), that query is scored
by the float32 path instead: rescoring that many rows would cost more than the plain scan.

The ONNX model (one ``MatMulInteger`` node, the int8 templates as its initializer) is written directly in
protobuf wire format, with the helpers of :mod:`pipelines.models.onnx_shapes`; the ``onnx`` package is not
needed. Building it is the per-sync cost: about 0.1-0.3 s at 100,000 templates, and about 30 MB resident
(onnxruntime keeps the initializer and its prepacked copy) next to the 51 MB float32 matrix.

Threads: the scan runs on ``DEFAULT_SCAN_THREADS`` (two, or one on a one-core machine). Matching runs in
the pipeline's fused stage between two detections, when the other core has only Kafka I/O to do, and one
query is memory-bound: measured side by side at 100,000 templates (one query, 1,000 calls), 1 thread 1.85 ms
median / 2.75 ms p95, 2 threads 0.80 / 1.70 ms. onnxruntime's worker spins briefly after a call (2 threads
without spinning: 1.30 / 2.18 ms); since a track is matched once and then every 25 frames, that tail is
kept.

Not chosen (measured at 100,000, one thread): 4-bit weights with ``MatMulNBits`` stream half the bytes, but
its float32-accurate kernel is compute-bound and slower than this scan, its int8-accurate kernel re-quantises
the queries inside the kernel (a bound would rest on undocumented internals), and 4-bit templates widen
``eps`` to about 0.2, so the rescored share would depend on how crowded real embeddings are around 0.2.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Any

import numpy as np

from pipelines.models.onnx_shapes import length_delimited, varint
from pipelines.recognition.matching import MatchConfig, MatchingError, MatchResult, check_queries, decide, top2_subjects

logger = logging.getLogger(__name__)

TEMPLATE_LEVELS = 127  # int8 templates in [-127, 127]
QUERY_LEVELS = 63  # 7-bit queries in [-63, 63]: no int16 saturation in the u8 x s8 kernels
QUERY_ZERO_POINT = 64
# K u for K = 128 and float32 (u = 2^-24) is 7.63e-6: the float32 dot product is within this share of
# ||q|| ||x|| of the real one whatever the summation order; rounded up.
FLOAT32_DOT_SLACK = 1e-5
# Decision edges move by this much so that float64 rounding of threshold - margin cannot matter.
CUT_SLACK = 1e-6
MAX_CANDIDATE_SHARE = 1 / 16  # beyond this share of rescored templates, the float32 path is cheaper
QUERY_BLOCK = 16  # queries per onnxruntime call: bounds the (M, N) int32 output buffer (6.4 MB at 100,000)
_INT32_MIN, _INT32_MAX = -2**31, 2**31 - 1
DEFAULT_SCAN_THREADS = min(2, os.cpu_count() or 1)  # see "Threads" in the module docstring

# ONNX wire-format field numbers (onnx.proto3) and element types.
_M_IR_VERSION, _M_GRAPH, _M_OPSET = 1, 7, 8
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2
_G_NODE, _G_NAME, _G_INIT, _G_INPUT, _G_OUTPUT = 1, 2, 5, 11, 12
_N_INPUT, _N_OUTPUT, _N_NAME, _N_OP = 1, 2, 3, 4
_T_DIMS, _T_TYPE, _T_NAME, _T_RAW = 1, 2, 8, 9
_VI_NAME, _VI_TYPE, _TYPE_TENSOR, _TT_ELEM, _TT_SHAPE, _SHAPE_DIM, _DIM_VALUE, _DIM_PARAM = 1, 2, 1, 1, 2, 1, 1, 2
UINT8, INT8, INT32 = 2, 3, 6
IR_VERSION, OPSET = 8, 13
INPUT_NAME, OUTPUT_NAME = "queries", "scores"


def _int_field(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(int(value))


def _str_field(num: int, text: str) -> bytes:
    return length_delimited(num, text.encode("utf-8"))


def _tensor(name: str, elem: int, dims: tuple[int, ...], raw: bytes) -> bytes:
    return b"".join(_int_field(_T_DIMS, d) for d in dims) + _int_field(_T_TYPE, elem) + _str_field(_T_NAME, name) \
        + length_delimited(_T_RAW, raw)


def _value_info(name: str, elem: int, dims: tuple[int | str, ...]) -> bytes:
    shape = b"".join(length_delimited(_SHAPE_DIM, _str_field(_DIM_PARAM, d) if isinstance(d, str)
                                      else _int_field(_DIM_VALUE, d)) for d in dims)
    tensor_type = _int_field(_TT_ELEM, elem) + length_delimited(_TT_SHAPE, shape)
    return _str_field(_VI_NAME, name) + length_delimited(_VI_TYPE, length_delimited(_TYPE_TENSOR, tensor_type))


def _ld_head(num: int, length: int) -> bytes:
    """Key and length of a length-delimited field whose payload follows separately (avoids copying it)."""
    return varint((num << 3) | 2) + varint(length)


def matmul_integer_model(weights_kn: np.ndarray, a_zero_point: int = QUERY_ZERO_POINT) -> bytes:
    """Serialized ONNX model ``scores (M, N) int32 = MatMulInteger(queries (M, K) uint8, weights (K, N) int8)``.

    ``queries`` has a symbolic batch dimension ``m``; ``a_zero_point`` is subtracted from every query byte.
    The weights are copied once, into the returned bytes.
    """
    w = np.ascontiguousarray(weights_kn)
    if w.dtype != np.int8 or w.ndim != 2:
        raise ValueError(f"weights must be (K, N) int8, got {w.dtype} {w.shape}")
    if not 0 <= int(a_zero_point) <= 255:
        raise ValueError("a_zero_point must be a uint8")
    k, n = (int(d) for d in w.shape)
    node = (_str_field(_N_INPUT, INPUT_NAME) + _str_field(_N_INPUT, "weights") + _str_field(_N_INPUT, "a_zero_point")
            + _str_field(_N_OUTPUT, OUTPUT_NAME) + _str_field(_N_NAME, "scan") + _str_field(_N_OP, "MatMulInteger"))
    weights_head = (_int_field(_T_DIMS, k) + _int_field(_T_DIMS, n) + _int_field(_T_TYPE, INT8)
                    + _str_field(_T_NAME, "weights") + _ld_head(_T_RAW, w.nbytes))
    weights_len = len(weights_head) + w.nbytes
    graph_head = length_delimited(_G_NODE, node) + _str_field(_G_NAME, "int8_scan") + _ld_head(_G_INIT, weights_len)
    graph_tail = (length_delimited(_G_INIT, _tensor("a_zero_point", UINT8, (), bytes([int(a_zero_point)])))
                  + length_delimited(_G_INPUT, _value_info(INPUT_NAME, UINT8, ("m", k)))
                  + length_delimited(_G_OUTPUT, _value_info(OUTPUT_NAME, INT32, ("m", n))))
    graph_len = len(graph_head) + len(weights_head) + w.nbytes + len(graph_tail)
    opset = _str_field(_OPSET_DOMAIN, "") + _int_field(_OPSET_VERSION, OPSET)
    head = _int_field(_M_IR_VERSION, IR_VERSION) + length_delimited(_M_OPSET, opset) + _ld_head(_M_GRAPH, graph_len)
    return b"".join([head, graph_head, weights_head, memoryview(w).cast("B"), graph_tail])


def quantise_templates(templates: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """int8 copy with one shared scale, transposed for the model: ``(codes (D, N) int8, scale, max ||x||,
    max ||x - scale * code||)``, the two norms rounded up to cover float32 rounding in their computation.

    Works in float32 blocks of rows (float64 would triple the per-sync cost for no gain: the norms feed only
    the error bound, which absorbs their relative error of ~D * 2^-24 through the 1e-4 allowance).
    """
    t = np.asarray(templates, dtype=np.float32)
    amax = float(np.abs(t).max()) if t.size else 0.0
    scale = amax / TEMPLATE_LEVELS if amax > 0 else 1.0
    codes_t = np.empty((t.shape[1], t.shape[0]), dtype=np.int8)
    x_norm_max = dx_norm_max = 0.0
    for start in range(0, t.shape[0], 8192):
        block = t[start:start + 8192]
        c = np.clip(np.rint(block * np.float32(1.0 / scale)), -TEMPLATE_LEVELS, TEMPLATE_LEVELS)
        codes_t[:, start:start + block.shape[0]] = c.T
        d = block - c * np.float32(scale)
        x_norm_max = max(x_norm_max, float(np.einsum("ij,ij->i", block, block).max()))
        dx_norm_max = max(dx_norm_max, float(np.einsum("ij,ij->i", d, d).max()))
    # float32 sums of squares: relative error <= D * 2^-24 (< 1e-5); fl(scale * c) is off by <= 2^-24 |x|.
    x_norm = math.sqrt(x_norm_max) * (1 + 1e-4)
    dx_norm = math.sqrt(dx_norm_max) * (1 + 1e-4) + 1e-6 * x_norm
    return codes_t, scale, x_norm, dx_norm


def quantise_queries(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """7-bit codes of float32 queries (M, D): ``(codes + zero point as uint8, scale, ||q - q^||, ||q^||, ||q||)``.

    Scales and norms are float64 per query; an all-zero query gets scale 1 and zero codes.
    """
    q = queries.astype(np.float64)
    amax = np.abs(q).max(axis=1)
    scale = np.where(amax > 0, amax / QUERY_LEVELS, 1.0)
    codes = np.rint(q / scale[:, None])  # |q| / scale <= 63 up to float64 rounding: rint stays within [-63, 63]
    q_hat = codes * scale[:, None]
    d = q - q_hat
    dq = np.sqrt(np.einsum("ij,ij->i", d, d))
    qh = np.sqrt(np.einsum("ij,ij->i", q_hat, q_hat))
    qn = np.sqrt(np.einsum("ij,ij->i", q, q))
    codes += QUERY_ZERO_POINT
    return codes.astype(np.uint8), scale, dq, qh, qn


class Int8Scan:
    """Exact-decision matcher over subject-contiguous float32 ``templates`` (N, D), built once per sync.

    Holds the onnxruntime session (the int8 copy, prepacked by onnxruntime), the float32 templates (for the
    rescoring; not copied) and the error-bound constants. Pickles as its inputs and rebuilds on load.
    """

    def __init__(self, templates: np.ndarray, offsets: np.ndarray, owners: np.ndarray,
                 threads: int = DEFAULT_SCAN_THREADS) -> None:
        from pipelines.models.detector import make_session  # deferred: loads cv2, which only this path needs

        t = np.asarray(templates)
        if t.ndim != 2 or t.dtype != np.float32 or t.shape[0] == 0:
            raise MatchingError(f"templates must be a non-empty (N, D) float32 matrix, got {t.dtype} {t.shape}")
        self.templates, self.offsets, self.owners, self.threads = t, np.asarray(offsets), np.asarray(owners), threads
        codes_t, self.scale, self.x_norm_max, self.dx_norm_max = quantise_templates(t)
        self._session: Any = make_session(matmul_integer_model(codes_t), threads=threads)
        self.code_bytes = int(codes_t.nbytes)
        # Per thread: an output buffer onnxruntime writes into (no 400 kB allocation and copy per query at
        # 100,000 templates) and its binding; threads calling one scan never share a buffer.
        self._local = threading.local()

    def __reduce__(self) -> tuple[Any, ...]:
        return (Int8Scan, (self.templates, self.offsets, self.owners, self.threads))

    def __repr__(self) -> str:
        return f"Int8Scan(templates={self.templates.shape[0]}, code_mb={self.code_bytes / 1e6:.1f})"

    def int_scores(self, codes: np.ndarray) -> np.ndarray:
        """Raw int32 products (M, N) of query codes (uint8, zero point 64) with the template codes.

        The result is this thread's reusable buffer: valid until the thread's next call.
        """
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        m, n = codes.shape[0], self.templates.shape[0]
        local = self._local
        buf = getattr(local, "buf", None)
        if buf is None or buf.shape[0] < m:
            local.buf = buf = np.empty((m, n), np.int32)
            local.binding = self._session.io_binding()
        out = buf[:m]
        binding = local.binding
        binding.bind_cpu_input(INPUT_NAME, codes)
        binding.bind_output(OUTPUT_NAME, "cpu", 0, np.int32, [m, n], out.ctypes.data)
        self._session.run_with_iobinding(binding)
        return out

    def bound(self, dq: np.ndarray, qh: np.ndarray, q_norm: np.ndarray) -> np.ndarray:
        """Per query: the most any approximate score can differ from the float32 score of the same pair."""
        real = dq * self.x_norm_max + qh * self.dx_norm_max
        return (real + FLOAT32_DOT_SLACK * q_norm * self.x_norm_max) * (1 + 1e-9) + 1e-12

    def top2(self, queries: np.ndarray, cut: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Same contract as :func:`pipelines.recognition.matching.top2_subjects`, exact at and above ``cut`` (see module)."""
        m = queries.shape[0]
        subj = np.empty(m, np.int64)
        best = np.empty(m, np.float32)
        second = np.empty(m, np.float32)
        for start in range(0, m, QUERY_BLOCK):
            q = queries[start:start + QUERY_BLOCK]
            codes, q_scale, dq, qh, qn = quantise_queries(q)
            eps = self.bound(dq, qh, qn).tolist()
            units = (q_scale * self.scale).tolist()
            ys = self.int_scores(codes)
            for r in range(q.shape[0]):
                s, b, sec = self._top2_one(q[r], ys[r], units[r], eps[r], cut)
                subj[start + r], best[start + r], second[start + r] = s, b, sec
        return subj, best, second

    def _top2_one(self, q: np.ndarray, y: np.ndarray, unit: float, eps: float, cut: float) -> tuple[int, float, float]:
        """Top-2 subjects of one query from its int32 scores ``y`` (approximate score = ``unit * y``)."""
        # a_j >= cut - eps  <=>  y_j >= (cut - eps) / unit; one below the floor absorbs the division's rounding.
        limit = min(max(math.floor((cut - eps) / unit) - 1, _INT32_MIN + 1), _INT32_MAX)
        floor = _INT32_MIN  # below any product (|y| <= 128 * 127 * 127)
        if not y.flags.writeable:
            y = y.copy()
        i1 = int(y.argmax())
        if y[i1] < limit:  # the common case (a stranger): nothing can reach the decision region
            cand = np.zeros(0, np.int64)
        else:
            cand = np.flatnonzero(y >= limit)
            if cand.shape[0] > y.shape[0] * MAX_CANDIDATE_SHARE:
                s, b, sec = top2_subjects(q[None, :], self.templates, self.offsets, self.owners)
                return int(s[0]), float(b[0]), float(sec[0])
            y[cand] = floor
            i1 = int(y.argmax())
        # Pool: every candidate with its float32 score, plus the best approximate template outside them and
        # the best one of any other subject, which is all the top-2-subject rule can pick from the rest. Few
        # entries, so plain Python beats small-array numpy here.
        pool = list(zip(cand.tolist(), (self.templates[cand] @ q).tolist())) if cand.shape[0] else []
        if y[i1] != floor:
            pool.append((i1, float(np.float32(unit * int(y[i1])))))
            o1 = int(self.owners[i1])
            y[self.offsets[o1]:self.offsets[o1 + 1]] = floor
            i2 = int(y.argmax())
            if y[i2] != floor:
                pool.append((i2, float(np.float32(unit * int(y[i2])))))
        pool.sort()  # by row: max() keeps the first of equal scores, so ties go to the lowest row as in float32
        row1, best = max(pool, key=lambda p: p[1])
        s1 = int(self.owners[row1])
        others = [v for r, v in pool if self.owners[r] != s1]
        return s1, best, max(others) if others else -1.0

    def match(self, queries: np.ndarray, config: MatchConfig = MatchConfig()) -> list[MatchResult]:
        """Decisions of :func:`pipelines.recognition.matching.match` for ``queries`` (M, D) against these templates."""
        q = check_queries(queries)
        if q.shape[0] == 0:
            return []
        if q.shape[1] != self.templates.shape[1]:
            raise MatchingError(f"queries must be (M, {self.templates.shape[1]}), got shape {q.shape}")
        subj, best, second = self.top2(q, config.threshold - config.margin - CUT_SLACK)
        return decide(subj, best, second, config)
