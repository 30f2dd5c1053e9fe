"""The local stack with a ledger that serves its API over HTTPS only: real broker, real nodes, real exporter.

``Stack.up(ledger_api_tls=True)`` creates the cluster with ``--api-tls``; the stack's environment carries the
cluster CA (``$RISKMASK_LEDGER_CA``). With it, each real client of the ledger works over HTTPS: a manager
registers and searches a subject (``riskmask register``/``search``, separate processes), the pipeline's
watchlist sync verifies certified tips and pulls the watchlist, and ``riskmask ledger export`` (which builds its
clients from the genesis, as in the deployment) exports finalized blocks; without the CA the exporter fails
with one line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack import Stack
from ledger.ops.cluster import Cluster
from tests.ledger_util import anchor_txs, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _export(info_env: dict[str, str], ledger_dir: str, bootstrap: str, with_ca: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RISKMASK_LEDGER_CA"}
    env.update(info_env)
    if not with_ca:
        env.pop("RISKMASK_LEDGER_CA", None)
    return subprocess.run([sys.executable, "-m", "riskmask.cli", "ledger", "export", "--once", "--ledger-dir",
                           ledger_dir, "--bootstrap-servers", bootstrap, "--topic", "ledger.blocks"],
                          capture_output=True, text=True, timeout=120, cwd=str(ROOT), env=env)


def _cli(info_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RISKMASK_LEDGER_CA"}
    env.update(info_env)
    return subprocess.run([sys.executable, "-m", "riskmask.cli", *args], capture_output=True, text=True,
                          timeout=180, cwd=str(ROOT), env=env)


def test_stack_with_https_ledger_serves_manager_pipeline_and_exporter_with_the_ca_only(tmp_path):
    saved = os.environ.pop("RISKMASK_LEDGER_CA", None)
    stack = Stack(tmp_path / "state")
    try:
        info = stack.up(ledger_api_tls=True)
        ca = Path(info.ledger_dir) / "tls" / "ca.crt"
        assert info.ledger_ca == str(ca) and info.env()["RISKMASK_LEDGER_CA"] == str(ca)
        assert len(info.api_addresses) == 4 and all(a.startswith("https://127.0.0.1:") for a in info.api_addresses)
        # The stack's recorded state, as other commands read it, says the same.
        again = Stack(tmp_path / "state").info()
        assert again is not None and again.ledger_ca == str(ca)
        cluster = Cluster(Path(info.ledger_dir))
        with cluster.client(0, "pipeline", timeout_s=20) as cl:
            h = cl.submit(anchor_txs(cluster, 1)[0])
        with cluster.client(2, "auditor", timeout_s=20) as cl:
            wait_for(lambda: cl.tx(h).get("status") == "committed", 60, "the anchor committed over HTTPS")
        # A manager registers a suspect and finds it again, each a separate `riskmask` process over HTTPS.
        who = ["--name", "Ada Example", "--birth-date", "1980-03-12"]
        r = _cli(info.env(), "register", *who, "--risk", "80", "--suspect", "--no-photo")
        assert r.returncode == 0, r.stdout + r.stderr
        r = _cli(info.env(), "search", *who, "--json")
        assert r.returncode == 0 and '"risk": 80' in r.stdout.replace('"risk":80', '"risk": 80'), r.stdout + r.stderr
        # The pipeline's watchlist sync (pipeline key, certified tips from the genesis keys) over HTTPS.
        from ledger.client.keys import load_keyring
        from ledger.client.watchlist import from_cluster

        ring = load_keyring(Path(info.keys_dir))
        sync = from_cluster(info.api_addresses, cluster.key_seed("pipeline"), ring.keks, cluster.genesis.chain_id,
                            cluster.genesis.public_keys(),
                            node_ids=[v.public_key.hex() for v in cluster.genesis.validators])
        sync.sync()
        assert sync.watchlist.height >= 2 and sync.seen_height >= 2
        r = _export(info.env(), info.ledger_dir, info.bootstrap, with_ca=True)
        assert r.returncode == 0, r.stdout + r.stderr
        m = re.search(r"exported (\d+) block\(s\)", r.stdout)
        assert m and int(m.group(1)) >= 1, r.stdout + r.stderr
        # Without the CA the exporter cannot verify any node: it stops with an error, exports nothing.
        r = _export(info.env(), info.ledger_dir, info.bootstrap, with_ca=False)
        assert r.returncode != 0, r.stdout + r.stderr
        assert "certificate" in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr[-2000:]
    finally:
        stack.down()
        os.environ.pop("RISKMASK_LEDGER_CA", None)
        if saved is not None:
            os.environ["RISKMASK_LEDGER_CA"] = saved
