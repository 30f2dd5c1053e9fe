"""Run a stage's per-frame work on worker threads, a few frames ahead, and emit results in arrival order.

The runner drives one fused chain per bundle on one thread. OpenCV and onnxruntime release the GIL, so a stage
whose work is mostly theirs (detection, JPEG encoding) can hand frame k to a worker and let the runner thread
go on with frame k+1 through the other stages: the second core is used. A DoFn owns one :class:`Lookahead`:

* :meth:`submit` queues one element's work and returns the results that leave now (the oldest while more than
  ``depth`` are in flight or while it is already done), each as a ``WindowedValue`` with the element's own
  timestamp and window, or a ``TaggedOutput`` wrapping one;
* :meth:`drain` (from ``finish_bundle``) returns every result still in flight, so a bundle's outputs are all
  emitted before the runner commits its offsets, exactly as without workers;
* work with the same ``lane`` runs on the same worker, in submission order (per-camera state stays ordered);
  a new lane goes to the least loaded worker.

``depth`` 0 runs the work on the calling thread (no workers).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Deque, Iterator

from apache_beam import pvalue
from apache_beam.utils.windowed_value import WindowedValue

logger = logging.getLogger(__name__)

MAX_LANES = 1024  # lanes remembered; the least recently used is forgotten beyond it


class Lookahead:
    """Worker threads for one DoFn instance; create in ``setup``, :meth:`close` in ``teardown``."""

    def __init__(self, depth: int, workers: int = 1, name: str = "riskmask-worker",
                 finish: Callable[[Any], Any] = lambda result: result) -> None:
        self.depth = max(0, int(depth))
        self._finish = finish  # applied to each result on the runner's thread (Beam metrics are per thread)
        self._pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-{i}")
                       for i in range(max(1, int(workers)))] if self.depth else []
        self._lanes: "OrderedDict[str, int]" = OrderedDict()
        self._pending: Deque[tuple[Future, Any, Any]] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _pool(self, lane: str) -> ThreadPoolExecutor:
        """The lane's worker: fixed once chosen (its work stays in order), the least loaded for a new lane."""
        index = self._lanes.get(lane)
        if index is None:
            load = [0] * len(self._pools)
            for i in self._lanes.values():
                load[i] += 1
            index = self._lanes[lane] = load.index(min(load))
            while len(self._lanes) > MAX_LANES:
                self._lanes.popitem(last=False)
        self._lanes.move_to_end(lane)
        return self._pools[index]

    def submit(self, work: Callable[[], Any], timestamp: Any, window: Any, lane: str = "") -> Iterator[Any]:
        """Queue ``work()`` (its result: an output value or a TaggedOutput); yield the results due now."""
        if not self._pools:
            yield self._finish(work())
            return
        self._pending.append((self._pool(lane).submit(work), timestamp, window))
        # The oldest leaves when too many are in flight, or as soon as it is done (latency at low rates).
        while self._pending and (len(self._pending) > self.depth or self._pending[0][0].done()):
            yield self._emit()

    def drain(self) -> Iterator[Any]:
        """Every result still in flight, oldest first."""
        while self._pending:
            yield self._emit()

    def _emit(self) -> Any:
        future, timestamp, window = self._pending.popleft()
        result = self._finish(future.result())
        if isinstance(result, pvalue.TaggedOutput):
            return pvalue.TaggedOutput(result.tag, WindowedValue(result.value, timestamp, (window,)))
        return WindowedValue(result, timestamp, (window,))

    def reset(self) -> None:
        """Forget results of an aborted bundle (their work may still finish; nothing is emitted)."""
        self._pending = deque()

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools = []
