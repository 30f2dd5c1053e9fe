"""Known limits of the ledger threat model (docs/ledger.md), shown on real processes and sockets.

These tests pin what the design does not yet stop, so that the threat model stays true; a change that closes
a limit makes its test fail, and the test and the docs are then updated together.

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


def test_node_omitting_a_record_at_the_certified_height_is_believed() -> None:
    """Known limit: the registry state has no root in the block header, so the freshness check proves only
    the height a node serves, not that it serves every record up to it. A node that certifies the real tip
    and serves the watchlist at that height, but leaves out a risk downgrade, is believed when it is asked
    first; and because later syncs ask only for changes after that height, the omission outlives the node's
    turn (until the subject changes again). Real sockets, real commit certificates (Ed25519)."""
    import os

    import numpy as np

    from pipelines.matching import MATCHED
    from pipelines.transforms.enrich_risk import LedgerWatchlistSource, RiskConfig, enrich_frame
    from pipelines.watchlist_index import WatchlistIndex
    from tests.test_watchlist_freshness import Chain, _frame, _nodes, _record, _sync

    chain = Chain()
    kek, kid = os.urandom(32), b"kid-0001"
    template = np.random.default_rng(7).standard_normal(128).astype(np.float32)
    p = os.urandom(32)
    old = [_record(p, 1, 5, 95, kek, kid, template)]   # suspect, risk 95: disclosed
    new = [_record(p, 2, 9, 20, kek, kid, template)]   # downgraded at height 9: must be masked
    # node 0 certifies the real tip 10 and serves height 10, without the downgrade; nodes 1-3 are honest
    nodes = _nodes(chain, [(10, 10, old), (10, 10, old + new), (10, 10, old + new), (10, 10, old + new)])
    with nodes[0], nodes[1], nodes[2], nodes[3]:
        sync = _sync(chain, nodes, {kid: kek}, catch_up_s=0.3)
        source = LedgerWatchlistSource(lambda: sync)
        idx = source.sync(WatchlistIndex.empty(), 1000.0)  # the rotation starts at node 0
        assert nodes[0].requests.count("/v1/registry/watchlist") == 1
        for t in range(4):  # every honest node takes its turn
            idx = source.sync(idx, 1001.0 + t)
        served = [n.requests.count("/v1/registry/watchlist") for n in nodes]
        fr, _ = enrich_frame(_frame(template), idx, 1005.0, RiskConfig())
        face = fr.tracked[0]
        print(f"watchlist reads per node {served}; stale nodes {sync.stale_nodes}; the face: {face.identity}, "
              f"risk {face.risk}")
        assert all(served[i] >= 1 for i in (1, 2, 3)) and not sync.stale_nodes
        assert not idx.is_stale(1005.0, 30.0)
        assert face.identity == MATCHED and face.risk == 95, "the omission was detected: update docs/ledger.md"
