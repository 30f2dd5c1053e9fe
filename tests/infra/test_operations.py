"""Acceptance: metrics and health of the long-running processes, on real processes and real sockets.

One module-scoped environment: an embedded broker of its own (this module stops it), a real 4-node ledger
(three nodes started by the cluster, the fourth with ``riskmask ledger node --metrics-port``) and a privacy
keyring. Then:

* ``riskmask ledger export --metrics-port`` serves /metrics and turns ready;
* ``riskmask run --config FILE`` with recognition and anchoring on serves /metrics: counters move while real
  frames flow (scraped with a real HTTP client), /readyz is 200, and turns 503 once the broker is stopped;
* a ledger node's /metrics carries height, peers and commit latency; /readyz turns 503 and
  ``riskmask ledger status`` exits non-zero when too few nodes are up for a quorum.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import requests

from tests.pipeline_support import camera_frame, scenes, send_raw

EXE = str(Path(sys.executable).with_name("riskmask"))


def _free_port() -> int:
    from infra.broker import free_port

    return free_port()


def _spawn(args: list[str], log: Path, env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    fh = open(log, "ab")
    try:
        return subprocess.Popen([EXE, *args], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    finally:
        fh.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _wait(cond: Callable[[], bool], timeout_s: float, what: str, alive: Optional[Callable[[], bool]] = None,
          log: Optional[Path] = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if alive is not None and not alive():
            raise AssertionError(f"process died while waiting for {what}: "
                                 f"{log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}: "
                                 f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.3)


def _get(port: int, path: str) -> Optional[requests.Response]:
    try:
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=3)
    except requests.RequestException:
        return None


def _status(port: int, path: str) -> int:
    r = _get(port, path)
    return -1 if r is None else r.status_code


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics as ``{'name{labels}': value}`` (labels in the order served)."""
    r = _get(port, "/metrics")
    assert r is not None and r.status_code == 200, "no /metrics"
    assert r.headers["Content-Type"].startswith("text/plain")
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    out = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            out += value
    return out


@pytest.fixture(scope="module")
def ops_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from infra import broker as embedded
    from ledger.client import keys as keyring
    from tests.ledger_util import make_cluster

    base = tmp_path_factory.mktemp("ops")
    brk = embedded.EmbeddedBroker(state_dir=base / "broker")
    info = brk.start(port=0, timeout_s=30.0, die_with_parent=True)
    cluster = make_cluster(base / "ledger")
    node3: Optional[subprocess.Popen] = None
    try:
        cluster.up(wait_height=1, timeout_s=120, nodes=[0, 1, 2])
        node_port = _free_port()
        node3 = _spawn(["ledger", "node", "--config", str(cluster.config_path(3)), "--metrics-port",
                        str(node_port), "--metrics-host", "127.0.0.1"], base / "node3.log")
        keyring.save_keyring(keyring.Keyring.generate(), base / "keys")
        yield {"base": base, "broker": brk, "bootstrap": info.bootstrap, "cluster": cluster, "node3": node3,
               "node_port": node_port}
    finally:
        if node3 is not None:
            _stop(node3)
        cluster.down()
        brk.stop()


def test_exporter_serves_metrics_and_turns_ready(ops_env: dict[str, Any]) -> None:
    from infra import broker as embedded

    topic = f"ledger-{uuid.uuid4().hex[:8]}"
    embedded.create_topics(ops_env["bootstrap"], [topic])
    port = _free_port()
    log = ops_env["base"] / "exporter.log"
    proc = _spawn(["ledger", "export", "--bootstrap-servers", ops_env["bootstrap"], "--topic", topic,
                   "--ledger-dir", str(ops_env["cluster"].dir), "--metrics-port", str(port),
                   "--metrics-host", "127.0.0.1"], log)
    try:
        alive = lambda: proc.poll() is None  # noqa: E731
        _wait(lambda: _status(port, "/readyz") == 200, 60, "exporter /readyz 200", alive, log)
        assert _status(port, "/healthz") == 200
        _wait(lambda: total(scrape(port), "riskmask_exporter_next_height") >= 2, 60,
              "the exporter to export block 1", alive, log)
        assert total(scrape(port), "riskmask_exporter_exported_blocks") >= 1
        assert _status(port, "/nope") == 404
    finally:
        _stop(proc)


CONFIG = """\
# riskmask run, acceptance test config
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
connect_timeout_s = 5

[topics]
raw = "{raw}"
redacted = "{redacted}"
dlq = "{dlq}"
audit = "{audit}"

[detector]
name = "yunet"
threads = 1

[ledger]
dir = "{ledger}"
keys_dir = "{keys}"
anchor_audit_blocks = true

[metrics]
port = {port}
host = "127.0.0.1"

[runner]
progress_interval_s = 0

[[camera]]
match = "ops-*"
zones = [{{action = "mask", polygon = [[0, 0], [64, 0], [64, 64], [0, 64]]}}]
"""


def test_run_from_config_file_serves_moving_metrics_and_readiness_follows_the_broker(
        ops_env: dict[str, Any]) -> None:
    from infra import broker as embedded

    tag = uuid.uuid4().hex[:8]
    topics = {k: f"{k}-{tag}" for k in ("raw", "redacted", "dlq", "audit")}
    bootstrap = ops_env["bootstrap"]
    embedded.create_topics(bootstrap, list(topics.values()))
    port = _free_port()
    cfg = ops_env["base"] / "pipeline.toml"
    cfg.write_text(CONFIG.format(bootstrap=bootstrap, group=f"g-{tag}", ledger=ops_env["cluster"].dir,
                                 keys=ops_env["base"] / "keys", port=port, **topics), encoding="utf-8")
    log = ops_env["base"] / "run.log"
    proc = _spawn(["run", "--config", str(cfg)], log)
    alive = lambda: proc.poll() is None  # noqa: E731
    frames = [camera_frame(s.image, seq=i, camera_id="ops-cam", epoch=7)
              for i, s in enumerate(scenes(8, faces_per_frame=2, min_width=60, max_width=200, seed=300))]
    try:
        _wait(lambda: _status(port, "/readyz") == 200, 120, "pipeline /readyz 200", alive, log)
        assert _status(port, "/healthz") == 200
        before = scrape(port)
        assert total(before, "riskmask_broker_up") == 1 and total(before, "riskmask_pipeline_running") == 1
        send_raw(bootstrap, topics["raw"], [(b"ops-cam", f.to_bytes()) for f in frames[:4]])
        _wait(lambda: total(scrape(port), "riskmask_frames_out_total") >= 4, 150, "4 frames out", alive, log)
        mid = scrape(port)
        send_raw(bootstrap, topics["raw"], [(b"ops-cam", f.to_bytes()) for f in frames[4:]])
        _wait(lambda: total(scrape(port), "riskmask_frames_out_total") >= 8, 150, "8 frames out", alive, log)
        after = scrape(port)
        for name in ("riskmask_frames_in_total", "riskmask_frames_out_total"):
            assert total(before, name) < total(mid, name) < total(after, name), name
        assert total(after, "riskmask_frames_in_total", topic=topics["raw"]) == 8
        assert total(after, "riskmask_records_written_total", output="redacted") >= 8
        for stage in ("decode", "detect_faces", "recognition", "mask_faces", "encode"):
            assert total(after, "riskmask_stage_seconds_count", stage=stage) >= 8, stage
        assert total(after, "riskmask_capture_to_output_seconds_count") >= 8
        assert total(after, "riskmask_faces_total") >= 8  # 2 faces a frame, each masked at some level
        assert total(after, "riskmask_faces_total", level="group1") >= 8  # unknown faces: the strongest
        assert total(after, "riskmask_watchlist_height") >= 1  # recognition is on: a synced watchlist
        assert 0 <= total(after, "riskmask_watchlist_age_seconds") < 60
        assert f'riskmask_consumer_lag{{partition="0",topic="{topics["raw"]}"}}' in after
        assert total(after, "riskmask_consumer_lag", topic=topics["raw"]) == 0
        text = _get(port, "/metrics").text
        assert "ops-cam" not in text  # no camera, track or subject in any label
        # The broker goes away: the pipeline is no longer ready (and says why).
        ops_env["broker"].stop()
        _wait(lambda: _status(port, "/readyz") == 503, 20, "/readyz 503 after the broker stopped", alive, log)
        r = _get(port, "/readyz")
        assert r is not None and "no Kafka broker answers" in r.text
        assert total(scrape(port), "riskmask_broker_up") == 0
    finally:
        _stop(proc)


def test_ledger_node_metrics_and_quorum_health(ops_env: dict[str, Any]) -> None:
    port, cluster = ops_env["node_port"], ops_env["cluster"]
    alive = lambda: ops_env["node3"].poll() is None  # noqa: E731
    _wait(lambda: _status(port, "/readyz") == 200, 60, "node /readyz 200", alive, ops_env["base"] / "node3.log")
    s = scrape(port)
    assert total(s, "riskmask_ledger_height") >= 1 and total(s, "riskmask_ledger_peers") == 3
    assert total(s, "riskmask_ledger_validators") == 4 and "riskmask_ledger_round" in s
    assert "riskmask_ledger_mempool_txs" in s
    # The previous test anchored audit blocks: blocks were committed while node 3 ran.
    assert total(s, "riskmask_ledger_commits_total") >= 1
    assert total(s, "riskmask_ledger_commit_seconds_count") >= 1
    ok = subprocess.run([EXE, "ledger", "status", "--dir", str(cluster.dir)], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    cluster.kill_node(0, signal.SIGTERM)
    cluster.kill_node(1, signal.SIGTERM)
    _wait(lambda: _status(port, "/readyz") == 503, 30, "node /readyz 503 without a quorum of peers")
    assert "a quorum needs 2" in _get(port, "/readyz").text
    assert _status(port, "/healthz") == 200  # alive, just not ready
    bad = subprocess.run([EXE, "ledger", "status", "--dir", str(cluster.dir)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 3, bad.stdout + bad.stderr
    # Node 3 runs outside the cluster's pid files, so `ledger status` counts it as down: node 2 answers alone.
    err = bad.stderr.strip().splitlines()
    assert err == ["riskmask: error: only 1 of 4 ledger nodes answer; a quorum needs 3"], err
