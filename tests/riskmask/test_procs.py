"""riskmask.procs: liveness (zombies are not alive), command lines, and the parent-death signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from riskmask import procs


def test_pid_alive_running_exited_and_zombie() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert procs.pid_alive(child.pid)
        assert procs.cmdline(child.pid)[:2] == [sys.executable.encode(), b"-c"]
    finally:
        child.kill()
    deadline = time.monotonic() + 10
    while procs.pid_alive(child.pid) and time.monotonic() < deadline:  # a zombie until reaped
        time.sleep(0.05)
    assert not procs.pid_alive(child.pid)
    child.wait()
    assert not procs.pid_alive(child.pid) and not procs.pid_alive(0) and not procs.pid_alive(-5)
    assert procs.cmdline(child.pid) is None


def test_child_dies_with_its_parent() -> None:
    # A middle process starts a sleeper with die_with_parent, prints its pid and exits: the sleeper must go.
    code = ("import subprocess, sys, signal; from riskmask import procs; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
            "preexec_fn=procs.die_with_parent(signal.SIGKILL)); print(p.pid, flush=True)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 10
    while procs.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = procs.pid_alive(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive


def test_python_module_ignores_lookalike_folders_in_the_working_directory(tmp_path) -> None:
    # A state folder holding `ledger/keys` (as RISKMASK_HOME does) must not shadow the installed packages.
    (tmp_path / "ledger" / "keys").mkdir(parents=True)
    out = subprocess.run(procs.python_module("riskmask", "keys", "--help"), capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert "usage:" in out.stdout
