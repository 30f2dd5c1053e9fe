"""A known limit of the ledger threat model (docs/ledger.md), shown on real node processes.

A node that lost its data signs nothing through the highest certified height it heard + 2 (it cannot know
what it signed before the wipe). With n = 4 (f = 1) the chain then needs all three other validators: one
more silent validator (crashed, or Byzantine and refusing to vote) halts it. Nothing forks, and the chain goes
on as soon as the fourth validator votes again.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.ledger_util import assert_no_fork, heights, make_cluster, top_height, wait_for

pytestmark = pytest.mark.slow


def test_wiped_node_and_one_silent_validator_halt_until_it_returns(tmp_path) -> None:
    c = make_cluster(tmp_path / "c")
    try:
        c.up(wait_height=3, timeout_s=120)
        c.kill_node(3, signal.SIGKILL)
        c.wipe_node(3)
        c.kill_node(2, signal.SIGKILL)  # the one faulty validator: silent from now on
        time.sleep(2.0)  # a height already carrying a quorum of precommits may still finish
        c.start_node(3)
        frozen = top_height(c, [0, 1])
        wait_for(lambda: heights(c, [3]).get(3, -1) >= frozen, 90, "the wiped node to sync the chain")
        log = (c.dir / "logs" / "node3.log")
        wait_for(lambda: "not signing anything before height" in log.read_text(errors="replace"), 30,
                 "the wiped node's quiet period")
        m = re.search(r"while the chain is at height (\d+): not signing anything before height (\d+)",
                      log.read_text(errors="replace"))
        assert m and int(m.group(2)) == int(m.group(1)) + 3, m and m.group(0)
        time.sleep(10.0)
        now = heights(c, [0, 1, 3])
        print(f"with node 3 wiped and node 2 silent, heights stay {now} (frozen at {frozen})")
        assert max(now.values()) == frozen, f"a block was finalized while only two validators could sign: {now}"
        t0 = time.monotonic()
        c.start_node(2)
        wait_for(lambda: top_height(c, [0, 1]) >= frozen + 3, 60, "the chain to go on once node 2 votes again")
        print(f"3 new blocks {time.monotonic() - t0:.1f} s after node 2 returned")
        assert_no_fork(c, range(4))
    finally:
        c.down()
