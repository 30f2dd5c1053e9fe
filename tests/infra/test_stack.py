"""The local stack (infra.stack): up/down/status under one state root, idempotence, no orphans on failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack import Stack, StackError, wait_gone

pytestmark = pytest.mark.timeout(300)


def _pids(root: Path) -> list[int]:
    """Every pid the stack recorded (broker and ledger nodes)."""
    files = [root / "broker" / "broker.pid", *sorted((root / "ledger" / "run").glob("*.pid"))]
    return [int(f.read_text().strip()) for f in files if f.exists()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # an exited, not yet reaped child is not running
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_up_status_down_keeps_chain_and_keys(tmp_path: Path) -> None:
    root = tmp_path / "state"
    stack = Stack(root)
    try:
        info = stack.up()
        assert set(info.started) == {"broker", "ledger"}
        assert (root / "broker" / "broker.pid").exists()
        assert (root / "ledger" / "genesis.json").exists()
        assert (root / "keys" / "keyring.json").exists()
        assert oct((root / "keys" / "keyring.json").stat().st_mode & 0o777) == oct(0o600)
        recorded = json.loads((root / "stack.json").read_text())
        assert recorded["bootstrap"] == info.bootstrap and recorded["owner"] == 0
        assert info.env()["RISKMASK_LEDGER_DIR"] == str(root.resolve() / "ledger")
        pids = _pids(root)
        assert len(pids) == 5 and all(_alive(p) for p in pids)
        st = stack.status()
        assert st["running"] and st["broker"]["answering"]
        assert "frames.raw" in st["broker"]["topics"]
        assert [n["height"] is not None and n["height"] >= 1 for n in st["ledger"]["nodes"]] == [True] * 4
        chain = json.loads((root / "ledger" / "genesis.json").read_text())["chain_id"]

        again = Stack(root).up()  # idempotent: nothing new is started, same broker
        assert again.started == [] and again.bootstrap == info.bootstrap

        assert set(stack.down()) == {"broker", "ledger"}
        assert wait_gone(pids, 15.0) == []
        assert not stack.status()["running"] and not (root / "stack.json").exists()
        assert stack.down() == []

        info2 = stack.up()  # the chain and the keyring survive a restart
        assert json.loads((root / "ledger" / "genesis.json").read_text())["chain_id"] == chain
        assert info2.started and stack.running()
    finally:
        stack.down()
    assert _pids(root) == []


def test_busy_ledger_port_is_one_readable_error_and_leaves_no_process(tmp_path: Path) -> None:
    root = tmp_path / "state"
    stack = Stack(root)
    from ledger.ops.cluster import init_cluster

    init_cluster(root / "ledger", 4)
    genesis = json.loads((root / "ledger" / "genesis.json").read_text())
    host, port = genesis["validators"][2]["api_address"].rsplit(":", 1)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind((host, int(port)))
    blocker.listen(1)
    try:
        with pytest.raises(StackError, match="in use"):
            stack.up()
        assert stack.broker.info() is None  # the broker this call started was stopped again
        assert _pids(root) == []
    finally:
        blocker.close()
        stack.down()


def test_cli_status_down_when_nothing_runs(tmp_path: Path) -> None:
    env = dict(os.environ, RISKMASK_HOME=str(tmp_path / "state"))
    st = subprocess.run([sys.executable, "-m", "riskmask", "status"], capture_output=True, text=True, env=env,
                        timeout=120)
    assert st.returncode == 1
    assert "not running" in st.stdout and "Traceback" not in st.stderr
    down = subprocess.run([sys.executable, "-m", "riskmask", "down"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert down.returncode == 0 and "not running" in down.stdout


def test_cli_up_and_down(tmp_path: Path) -> None:
    home = tmp_path / "state"
    cmd = [sys.executable, "-m", "riskmask"]
    try:
        up = subprocess.run([*cmd, "up", "--home", str(home)], capture_output=True, text=True, timeout=240)
        assert up.returncode == 0, up.stderr
        assert "export RISKMASK_BOOTSTRAP=127.0.0.1:" in up.stdout
        st = subprocess.run([*cmd, "status", "--home", str(home), "--json"], capture_output=True, text=True,
                            timeout=120)
        assert st.returncode == 0 and json.loads(st.stdout)["running"] is True
        pids = _pids(home)
        assert len(pids) == 5
    finally:
        down = subprocess.run([*cmd, "down", "--home", str(home)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stack stopped" in down.stdout
    assert wait_gone(pids, 15.0) == []
