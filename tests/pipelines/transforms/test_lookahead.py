"""Lookahead: results in arrival order with their own timestamps and windows, at most `depth` in flight, lanes
pinned to one worker, tagged outputs kept tagged, a full drain."""

from __future__ import annotations

import threading
import time

from apache_beam import pvalue
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.transforms.lookahead import Lookahead


def _slow(value, seen, delay):
    def work():
        time.sleep(delay)
        seen.append((threading.get_ident(), value))
        return pvalue.TaggedOutput("odd", value) if value % 2 else value
    return work


def test_order_timestamps_windows_depth_and_drain():
    seen: list = []
    ahead = Lookahead(depth=3, workers=2, finish=lambda r: r)
    out = []
    try:
        for i in range(8):
            # Later items are faster: without ordering they would come back first.
            out.extend(ahead.submit(_slow(i, seen, 0.02 * (8 - i) / 8), Timestamp(i), GlobalWindow(),
                                    lane=f"cam-{i % 2}"))
            assert ahead.in_flight <= 3
        out.extend(ahead.drain())
        assert ahead.in_flight == 0
    finally:
        ahead.close()
    values = [o.value.value if isinstance(o, pvalue.TaggedOutput) else o.value for o in out]
    assert values == list(range(8))
    assert [isinstance(o, pvalue.TaggedOutput) for o in out] == [bool(i % 2) for i in range(8)]
    wvs = [o.value if isinstance(o, pvalue.TaggedOutput) else o for o in out]
    assert all(isinstance(w, WindowedValue) for w in wvs)
    assert [w.timestamp for w in wvs] == [Timestamp(i) for i in range(8)]
    lanes: dict = {}
    for thread, value in seen:
        lanes.setdefault(value % 2, set()).add(thread)
    assert all(len(t) == 1 for t in lanes.values()) and lanes[0] != lanes[1]
    assert threading.get_ident() not in lanes[0] | lanes[1]


def test_depth_zero_runs_inline_and_finish_runs_on_the_callers_thread():
    finished = []
    ahead = Lookahead(depth=0, finish=lambda r: finished.append(threading.get_ident()) or r * 10)
    assert list(ahead.submit(lambda: 4, None, None)) == [40]
    assert finished == [threading.get_ident()]
