"""Fast, clear failure and operator options of the long-running commands, as real processes:

* ``run``, ``audit verify`` and ``ledger export`` give up in under 10 s, with one line, when the broker is
  unreachable: a closed port, and a server that accepts TCP but never answers (the slow case);
* ``--log-format json`` prints one JSON event per line;
* ``--execution-provider`` refuses a provider this onnxruntime lacks in one line, and runs one it has;
* ``ledger status`` exits non-zero with every node down.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

EXE = str(Path(sys.executable).with_name("riskmask"))


@pytest.fixture(scope="module")
def silent_broker() -> Iterator[str]:
    """A TCP server that accepts connections and never says a word (a hung or firewalled broker)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.5)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(timeout=5)
    for c in held:
        c.close()
    srv.close()


@pytest.fixture(scope="module")
def closed_port() -> str:
    from infra.broker import free_port

    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def genesis_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lc") / "ledger"
    res = subprocess.run([EXE, "ledger", "init", "--out", str(d)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return d


def _timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    res = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60)
    return time.monotonic() - t0, res


@pytest.mark.parametrize("which", ["silent", "closed"])
@pytest.mark.parametrize("command", ["run", "audit verify", "ledger export"])
def test_unreachable_broker_fails_in_under_10_s_with_one_line(command: str, which: str, silent_broker: str,
                                                             closed_port: str, genesis_dir: Path) -> None:
    bootstrap = silent_broker if which == "silent" else closed_port
    args = {"run": ["run", "--bootstrap-servers", bootstrap],
            "audit verify": ["audit", "verify", "--genesis", str(genesis_dir / "genesis.json"),
                             "--bootstrap-servers", bootstrap],
            "ledger export": ["ledger", "export", "--ledger-dir", str(genesis_dir), "--bootstrap-servers",
                              bootstrap, "--once"]}[command]
    seconds, res = _timed(args)
    assert seconds < 10.0, f"{command}: {seconds:.1f} s"
    assert res.returncode == 3, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("riskmask: error:")]
    assert errors == [f"riskmask: error: no Kafka broker answers at {bootstrap} within 5 s"], res.stderr
    assert "Traceback" not in res.stderr


def test_connect_timeout_flag_sets_the_wait(silent_broker: str) -> None:
    seconds, res = _timed(["run", "--bootstrap-servers", silent_broker, "--connect-timeout", "2"])
    assert res.returncode == 3 and "within 2 s" in res.stderr
    assert seconds < 6.0, seconds


def test_json_logs_one_event_per_line(closed_port: str) -> None:
    res = subprocess.run([EXE, "run", "--log-format", "json", "--bootstrap-servers", closed_port,
                          "--connect-timeout", "1"], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    events = [json.loads(ln) for ln in lines if not ln.startswith("riskmask: error:")]
    assert events, res.stderr
    for ev in events:
        assert set(ev) >= {"ts", "level", "logger", "msg", "pid"} and ev["ts"].endswith("Z")
    assert any(ev["logger"] == "pipelines.runner" for ev in events)
    # the same before the subcommand
    res2 = subprocess.run([EXE, "--log-format", "json", "run", "--bootstrap-servers", closed_port,
                           "--connect-timeout", "1"], capture_output=True, text=True, timeout=60)
    assert all(json.loads(ln) for ln in res2.stderr.splitlines() if ln.strip() and not ln.startswith("riskmask:"))


def test_execution_provider_missing_is_one_line_and_present_runs() -> None:
    import onnxruntime as ort

    from pipelines.models.providers import DetectorFactory, RecognizerFactory

    have = ort.get_available_providers()
    from pipelines.models.providers import session_of

    det = DetectorFactory("yunet", 1, None, "cpu")()
    assert session_of(det).get_providers()[0] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in have:
        res = subprocess.run([EXE, "run", "--execution-provider", "cuda", "--bootstrap-servers", "127.0.0.1:1"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2
        assert res.stderr.strip().splitlines()[-1].startswith(
            "riskmask: error: execution provider cuda is not available in this onnxruntime"), res.stderr
    else:  # a GPU machine: the detector and recogniser really run on CUDA
        import numpy as np

        gpu = DetectorFactory("yunet", 1, None, "cuda")()
        assert session_of(gpu).get_providers()[0] == "CUDAExecutionProvider"
        from infra import sample_data

        faces = gpu.detect(np.ascontiguousarray(sample_data.astronaut()))
        assert len(faces) >= 1
        rec = RecognizerFactory(1, "cuda")()
        assert session_of(rec).get_providers()[0] == "CUDAExecutionProvider"


def test_ledger_status_with_every_node_down_exits_non_zero(genesis_dir: Path) -> None:
    res = subprocess.run([EXE, "ledger", "status", "--dir", str(genesis_dir)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 3
    assert res.stderr.strip() == "riskmask: error: only 0 of 4 ledger nodes answer; a quorum needs 3"
    assert "node0" in res.stdout


def test_help_texts_state_the_real_defaults() -> None:
    for args in (["keys", "init", "--help"], ["register", "--help"], ["run", "--help"], ["ledger", "status", "--help"]):
        res = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "~/.riskmask" not in res.stdout, args
