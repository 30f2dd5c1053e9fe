"""A real 4-node ledger cluster on loopback: crash faults, halting without quorum, resync, a Byzantine node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.ops.cluster import Cluster, ClusterError
from tests.ledger.byzantine_node import BANNER
from tests.ledger_util import (anchor_txs, assert_no_fork, committed_on, heights, low_height, make_cluster, submit,
                               top_height, wait_for)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def cluster(tmp_path):
    c = make_cluster(tmp_path / "c")
    try:
        yield c
    finally:
        c.down()


def _rising(cluster: Cluster, nodes: list[int], by: int = 3, timeout_s: float = 60) -> None:
    start = heights(cluster, nodes)
    assert set(start) == set(nodes), f"unreachable nodes: {set(nodes) - set(start)}"
    wait_for(lambda: all(h >= start[i] + by for i, h in heights(cluster, nodes).items())
             and len(heights(cluster, nodes)) == len(nodes), timeout_s, f"heights of {nodes} to rise by {by}")


def test_kill_any_one_node_progress_and_catch_up(cluster):
    cluster.up(wait_height=1, timeout_s=90)
    for victim in range(cluster.n):
        live = [i for i in range(cluster.n) if i != victim]
        cluster.kill_node(victim, signal.SIGKILL)
        _rising(cluster, live, by=3)
        hashes = submit(cluster, live[victim % 3], anchor_txs(cluster, 20))
        wait_for(lambda: all(committed_on(cluster, i, hashes) for i in live), 60,
                 f"txs committed with node {victim} down")
        cluster.start_node(victim)
        top = top_height(cluster, live)
        wait_for(lambda: heights(cluster, [victim]).get(victim, -1) >= top, 60, f"node {victim} to catch up")
        assert committed_on(cluster, victim, hashes)
    assert_no_fork(cluster, range(cluster.n))


def test_two_of_four_down_halts_without_fork_then_recovers(cluster):
    cluster.up(wait_height=2, timeout_s=90)
    cluster.kill_node(2, signal.SIGKILL)
    cluster.kill_node(3, signal.SIGKILL)
    time.sleep(2.0)  # a height already carrying a quorum of precommits may still finish
    frozen = heights(cluster, [0, 1])
    hashes = submit(cluster, 0, anchor_txs(cluster, 5))
    time.sleep(6.0)
    assert heights(cluster, [0, 1]) == frozen, "a block was finalized without a quorum"
    assert not committed_on(cluster, 0, hashes)
    assert_no_fork(cluster, [0, 1])
    t0 = time.monotonic()
    cluster.start_node(2)
    cluster.start_node(3)
    target = max(frozen.values()) + 1
    wait_for(lambda: top_height(cluster, [0, 1]) >= target, 20, "a new block after the restart")
    took = time.monotonic() - t0
    assert took <= 20.0
    wait_for(lambda: committed_on(cluster, 1, hashes), 30, "pending txs committed after recovery")
    wait_for(lambda: low_height(cluster, range(4)) >= target, 60, "all nodes past the halt")
    assert_no_fork(cluster, range(4))


def test_wiped_node_resyncs_from_genesis(cluster):
    cluster.up(wait_height=1, timeout_s=90)
    hashes = submit(cluster, 1, anchor_txs(cluster, 30))
    wait_for(lambda: committed_on(cluster, 1, hashes), 60, "txs committed")
    wait_for(lambda: low_height(cluster, range(4)) >= 8, 60, "height 8")
    cluster.kill_node(3, signal.SIGKILL)
    cluster.wipe_node(3)
    assert not (cluster.data_dir(3) / "ledger.db").exists()
    cluster.start_node(3)
    top = top_height(cluster, [0, 1, 2])
    wait_for(lambda: heights(cluster, [3]).get(3, -1) >= top, 90, "wiped node to resync")
    assert committed_on(cluster, 3, hashes)
    chains = assert_no_fork(cluster, range(4))
    assert len(chains[3]) >= top


def test_byzantine_validator_safety_liveness_evidence(tmp_path):
    """Validator 3 runs tests/ledger/byzantine_node.py (equivocation, forged signatures, wrong-parent proposals)."""
    c = make_cluster(tmp_path / "byz")
    honest = [0, 1, 2]
    byz_log = tmp_path / "byzantine.log"
    proc = None
    try:
        c.up(wait_height=1, timeout_s=120, nodes=honest)
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        with open(byz_log, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "tests.ledger.byzantine_node", "--config",
                                     str(c.config_path(3))], cwd=str(REPO), env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: BANNER in byz_log.read_text(errors="replace"), 60, "the Byzantine validator to start")
        hashes = submit(c, 0, anchor_txs(c, 30))
        _rising(c, honest, by=8, timeout_s=120)  # covers heights where node 3 proposes (every 4th)
        wait_for(lambda: all(committed_on(c, i, hashes) for i in honest), 60, "txs committed despite node 3")
        assert_no_fork(c, range(4))

        def has_evidence() -> bool:
            for i in honest:
                with c.client(i, "auditor") as cl:
                    if any(e["validator"] == 3 for e in cl.evidence()):
                        return True
            return False

        wait_for(has_evidence, 30, "equivocation evidence against validator 3")
        for i in honest:
            with c.client(i, "auditor") as cl:
                assert all(e["validator"] == 3 for e in cl.evidence()), "an honest validator was accused"
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        c.down()


def test_cli_init_up_status_down(tmp_path):
    d = tmp_path / "cli"
    run = lambda *a: subprocess.run([sys.executable, "-m", "riskmask.cli", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=180)
    r = run("ledger", "init", "--validators", "4", "--out", str(d))
    assert r.returncode == 0, r.stderr
    assert oct((d / "keys" / "node0.key").stat().st_mode & 0o777) == "0o600"
    r = run("ledger", "init", "--validators", "4", "--out", str(d))
    assert r.returncode == 2 and "already holds" in r.stderr and "Traceback" not in r.stderr
    r = run("ledger", "up", "--nodes", "4", "--dir", str(d))
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        r = run("ledger", "status", "--dir", str(d))
        assert r.returncode == 0
        lines = r.stdout.strip().splitlines()
        assert lines[0].split()[:6] == ["node", "pid", "state", "height", "round", "peers"]
        assert len(lines) == 5 and all(" up " in ln for ln in lines[1:]), r.stdout
        r = run("ledger", "up", "--nodes", "7", "--dir", str(d))
        assert r.returncode != 0 and "4 validators" in r.stderr
    finally:
        r = run("ledger", "down", "--dir", str(d))
    assert r.returncode == 0 and "stopped 4" in r.stdout
    cl = Cluster(d)
    assert all(cl.pid(i) is None for i in range(4))
    r = run("ledger", "status", "--dir", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no ledger cluster" in r.stderr


def test_busy_port_is_a_clear_error(tmp_path):
    import socket

    c = make_cluster(tmp_path / "busy")
    host, port = c.genesis.validators[1].api_hostport
    s = socket.socket()
    s.bind((host, port))
    s.listen(1)
    try:
        with pytest.raises(ClusterError, match="in use"):
            c.up(wait_height=1, timeout_s=30)
        assert all(c.pid(i) is None for i in range(4)), "a failed up left nodes running"
    finally:
        s.close()
        c.down()


def test_soak_few_kill_restart_cycles(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
    import ledger_soak

    result = ledger_soak.run(tmp_path / "soak", cycles=6, seed=3, log=lambda *_: None)
    assert result["prefix_ok"], result
    assert result["lost_acknowledged"] == 0 and result["duplicate_txs"] == 0, result
    assert result["double_sign_evidence"] == 0, result
    assert result["never_committed"] == 0 and result["bad_certificates"] == 0, result


def test_corrupt_store_fails_hard_with_clear_error(cluster):
    cluster.up(wait_height=2, timeout_s=90)
    cluster.kill_node(1, signal.SIGKILL)
    db = cluster.data_dir(1) / "ledger.db"
    for f in db.parent.glob("ledger.db*"):
        f.unlink()
    db.write_bytes(b"\x00garbage, not a database" * 512)
    cluster.start_node(1)
    wait_for(lambda: cluster.pid(1) is None, 30, "the node with a corrupt store to exit")
    log = cluster.log_path(1).read_text()
    assert "corrupt" in log and "Traceback" not in log.split("corrupt")[-1]
