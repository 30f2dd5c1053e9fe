"""The embedded broker with real processes: `riskmask broker start|stop|status` and the EmbeddedBroker class."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import broker as embedded
from riskmask import procs

CLI_TIMEOUT_S = 90


def _riskmask(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop(embedded.STATE_ENV, None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "riskmask", "-q", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=CLI_TIMEOUT_S)


def _one_error_line(stderr: str) -> str:
    """The single ``riskmask: error:`` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("riskmask: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not procs.pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def state_dir(tmp_path: Path):
    path = tmp_path / "state"
    yield path
    embedded.EmbeddedBroker(state_dir=path).stop()  # whatever a failed test left running


def test_cli_lifecycle_start_status_second_start_stop(state_dir: Path) -> None:
    res = _riskmask("broker", "start", "--state-dir", str(state_dir), "--partitions", "3")
    assert res.returncode == 0, res.stderr
    bootstrap = res.stdout.strip().splitlines()[-1]
    host, _, port = bootstrap.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    pid = int((state_dir / "broker.pid").read_text())
    assert os.getsid(pid) == pid, "the broker must run detached in its own session"
    assert (state_dir / "broker.log").stat().st_size > 0

    # it outlived the CLI process and answers real Kafka clients, with the product's topics and partitions
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        for topic in embedded.DEFAULT_TOPICS:
            assert consumer.partitions_for_topic(topic) == {0, 1, 2}
    finally:
        consumer.close()

    status = _riskmask("broker", "status", "--state-dir", str(state_dir))
    assert status.returncode == 0, status.stderr
    assert bootstrap in status.stdout and "frames.raw" in status.stdout

    again = _riskmask("broker", "start", "--state-dir", str(state_dir))
    assert again.returncode == 2
    assert "already running" in _one_error_line(again.stderr)
    assert int((state_dir / "broker.pid").read_text()) == pid, "a refused start must not touch the running broker"

    stop = _riskmask("broker", "stop", "--state-dir", str(state_dir))
    assert stop.returncode == 0, stop.stderr
    assert _gone(pid)
    assert not (state_dir / "broker.pid").exists()
    after = _riskmask("broker", "status", "--state-dir", str(state_dir))
    assert after.returncode == 1 and "not running" in after.stdout


def test_state_dir_from_env_and_custom_topics(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {embedded.STATE_ENV: str(home)}
    try:
        res = _riskmask("broker", "start", "--topics", "cams.in,cams.out", env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert (home / "broker.pid").exists() and not (tmp_path / ".riskmask").exists()
        bootstrap = res.stdout.strip().splitlines()[-1]
        assert set(embedded.list_topics(bootstrap)) >= {"cams.in", "cams.out"}
        assert "frames.raw" not in embedded.list_topics(bootstrap)
    finally:
        stop = _riskmask("broker", "stop", env=env, cwd=tmp_path)
    assert stop.returncode == 0 and "stopped" in stop.stdout


def test_default_state_dir_is_dot_riskmask_in_cwd(tmp_path: Path) -> None:
    try:
        res = _riskmask("broker", "start", "--topics", "", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert (tmp_path / ".riskmask" / "broker.pid").exists()
    finally:
        _riskmask("broker", "stop", cwd=tmp_path)
    assert not (tmp_path / ".riskmask" / "broker.pid").exists()


def test_busy_port_is_one_line_and_starts_nothing(state_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _riskmask("broker", "start", "--state-dir", str(state_dir), "--port", str(port))
    assert res.returncode == 2
    line = _one_error_line(res.stderr)
    assert f"port {port}" in line and "in use" in line
    assert not (state_dir / "broker.pid").exists()


def test_missing_binary_is_one_line(state_dir: Path) -> None:
    res = _riskmask("broker", "start", "--state-dir", str(state_dir),
                    env={embedded.TANSU_ENV: str(state_dir / "no-such-tansu")})
    assert res.returncode == 2
    assert "binary is missing" in _one_error_line(res.stderr)


def test_bad_partitions_is_one_line(state_dir: Path) -> None:
    res = _riskmask("broker", "start", "--state-dir", str(state_dir), "--partitions", "0")
    assert res.returncode == 2 and "partitions" in _one_error_line(res.stderr)


def test_failed_start_kills_the_child(tmp_path: Path) -> None:
    """A binary that never answers: start times out, the child is killed, no state is left behind."""
    pid_out = tmp_path / "child.pid"
    fake = tmp_path / "tansu"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_out}\nexec sleep 120\n")
    fake.chmod(0o755)
    brk = embedded.EmbeddedBroker(state_dir=tmp_path / "state", tansu=fake)
    with pytest.raises(embedded.BrokerServiceError, match="did not answer"):
        brk.start(timeout_s=2.0)
    child = int(pid_out.read_text())
    assert _gone(child), "the child of a failed start must not survive"
    assert not brk.pid_file.exists() and brk.info() is None


def test_broker_that_exits_at_once_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'cannot bind' >&2\nexit 7\n")
    fake.chmod(0o755)
    brk = embedded.EmbeddedBroker(state_dir=tmp_path / "state", tansu=fake)
    with pytest.raises(embedded.BrokerServiceError, match="exited with code 7"):
        brk.start(timeout_s=20.0)
    assert "cannot bind" in brk.log_file.read_text()
    assert not brk.pid_file.exists()


def test_stale_pid_file_is_cleaned(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = tmp_path / "state"
    state.mkdir()
    (state / embedded.PID_FILE).write_text(f"{dead.pid}\n")
    (state / embedded.INFO_FILE).write_text('{"host": "127.0.0.1", "port": 1, "log_file": "x", "started": 0}')
    brk = embedded.EmbeddedBroker(state_dir=state)
    assert brk.status() == {"running": False, "state_dir": str(state)}
    assert not (state / embedded.PID_FILE).exists()
    assert brk.stop() is None


def test_stop_never_signals_a_foreign_process(tmp_path: Path) -> None:
    """A pid file pointing at a process that is not a tansu broker (pid reuse) is stale, not a target."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        state = tmp_path / "state"
        state.mkdir()
        (state / embedded.PID_FILE).write_text(f"{other.pid}\n")
        (state / embedded.INFO_FILE).write_text('{"host": "127.0.0.1", "port": 1, "log_file": "x", "started": 0}')
        assert embedded.EmbeddedBroker(state_dir=state).stop() is None
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_library_start_stop_in_process(tmp_path: Path) -> None:
    brk = embedded.EmbeddedBroker(state_dir=tmp_path / "state")
    info = brk.start(topics=["a", "b"], partitions=2)
    try:
        assert brk.info() == info
        st = brk.status()
        assert st["running"] and st["answering"] and {"a", "b"} <= set(st["topics"])
        assert embedded.create_topics(info.bootstrap, ["a", "c"], partitions=2) == ["c"]
    finally:
        assert brk.stop() == info
    assert _gone(info.pid)
    with pytest.raises(embedded.BrokerServiceError):
        embedded.wait_ready(info.bootstrap, timeout_s=1.0)


def test_port_taken_after_the_check_is_reported_as_busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process can grab the port between the check and the spawn: Tansu then exits; say why."""
    monkeypatch.setattr(embedded, "port_is_free", lambda host, port: True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        brk = embedded.EmbeddedBroker(state_dir=tmp_path / "state")
        with pytest.raises(embedded.BrokerUsageError, match=f"port {port} .* in use"):
            brk.start(port=port, timeout_s=20.0)
    assert not brk.pid_file.exists()
