"""Beam's portable execution path on one machine: a job service and an SDK worker pool as separate processes.

On Flink, ``riskmask run --runner PortableRunner`` sends the pipeline proto to the Flink job server, and Flink's
task managers hand the Python stages to an SDK worker pool sidecar (an EXTERNAL environment). Locally the same
path, minus Flink, is:

* Beam's Python job service (``apache_beam.runners.portability.local_job_service_main``): receives the pipeline
  proto and the staged artifacts, runs the graph with Beam's FnApiRunner and sends every bundle to an SDK
  worker over gRPC. It binds ``localhost``.
* An SDK worker pool (``python -m infra.portable worker-pool``): Beam's own
  ``BeamFnExternalWorkerPoolServicer`` in process mode, the same servicer the ``--worker_pool`` sidecar runs,
  but bound to 127.0.0.1 (Beam's ``worker_pool_main`` binds every interface, and whoever reaches the pool can
  make it start a worker that runs code from any control endpoint). It starts each SDK worker as
  ``python -c ...`` with the ``python`` found on ``PATH``, so this module puts the running interpreter's
  directory (the virtual environment's ``bin``) first on ``PATH``, and it logs every worker's pid.

``PortableServices`` starts both detached (own session, output to log files in the state directory), each on
a port the child process picked itself (no race between choosing and binding), waits until both accept a gRPC
connection, and records pids, ports and logs in ``portable.json`` so another process can find and stop them.
``stop()`` sends SIGTERM to each service (the job service cleans up its staging folder, the pool stops its
workers), then kills whatever is left of each process group: nothing outlives it.

Developers: ``python -m infra.portable up`` prints the ``riskmask run`` flags, ``python -m infra.portable down``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from riskmask import procs
from riskmask.errors import ServiceError, UserError

logger = logging.getLogger(__name__)

JOB_SERVICE_MODULE = "apache_beam.runners.portability.local_job_service_main"
POOL_MODULE = "infra.portable"
STATE_FILE = "portable.json"
JOB_LOG = "job-service.log"
POOL_LOG = "worker-pool.log"
LOOPBACK = "127.0.0.1"
WORKER_STARTED = "sdk worker started"  # log marker: "<marker>: id=<worker id> pid=<pid>"


class PortableError(Exception):
    """Base class of every failure of the local portable services."""


class PortableUsageError(PortableError, UserError):
    """Something the user can fix: services already running, an interpreter the pool cannot use."""


class PortableServiceError(PortableError, ServiceError):
    """A service did not start or did not answer in time."""


@dataclasses.dataclass(frozen=True)
class ServiceInfo:
    """One running service: its pid (also its process group id), gRPC port and log file."""

    pid: int
    port: int
    log_file: str

    @property
    def endpoint(self) -> str:
        return f"localhost:{self.port}"


@dataclasses.dataclass(frozen=True)
class PortableInfo:
    """The job service and the worker pool that together make one local portable runner."""

    job: ServiceInfo
    pool: ServiceInfo
    started: float

    def pipeline_args(self) -> list[str]:
        """Beam flags that submit a pipeline to these services (``PipelineOptions`` spelling)."""
        return ["--runner=PortableRunner", f"--job_endpoint={self.job.endpoint}", "--environment_type=EXTERNAL",
                f"--environment_config={self.pool.endpoint}"]

    def riskmask_args(self) -> list[str]:
        """The same as ``riskmask run`` arguments."""
        return ["--runner", "PortableRunner", "--job-endpoint", self.job.endpoint, "--environment-type",
                "EXTERNAL", "--environment-config", self.pool.endpoint]


def default_state_dir() -> Path:
    """``$RISKMASK_HOME/portable`` if set, else ``.riskmask/portable`` in the current directory."""
    return Path(os.environ.get("RISKMASK_HOME") or ".riskmask") / "portable"


def child_env(python: str) -> dict[str, str]:
    """The environment for both services: ``python``'s directory first on PATH (the pool's workers run the
    ``python`` found there, which must be the interpreter that has this project and Beam installed)."""
    bin_dir = Path(python).parent
    on_path = bin_dir / "python"
    if not on_path.exists() or on_path.resolve() != Path(python).resolve():
        raise PortableUsageError(f"{bin_dir} has no `python` that is {python}; the worker pool starts workers "
                                 f"with `python` from PATH, so run this from a virtual environment")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir)] + [p for p in env.get("PATH", "").split(os.pathsep)
                                                    if p and Path(p) != bin_dir])
    env.pop("PYTHONHOME", None)
    return env


def _live_processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/<pid>/stat after the command name) of every live (non-zombie) process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields and fields[0] != "Z":
            yield int(entry.name), fields


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid`` (Linux /proc)."""
    return sorted(pid for pid, fields in _live_processes() if int(fields[2]) == pgid)


def children_of(pid: int) -> list[int]:
    """Pids of the live direct children of ``pid`` (Linux /proc)."""
    return sorted(child for child, fields in _live_processes() if int(fields[1]) == pid)


def _runs_module(pid: int, module: str) -> bool:
    """Guard against pid reuse: only signal a process whose command line runs ``module``."""
    return module.encode() in (procs.cmdline(pid) or [])


def wait_grpc_ready(endpoint: str, timeout_s: float) -> bool:
    """True once a gRPC channel to ``endpoint`` connects (HTTP/2 handshake done) within ``timeout_s``."""
    import grpc

    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=max(0.1, timeout_s))
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


class PortableServices:
    """Start, stop and find the local job service + worker pool whose state lives in ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, python: Optional[str] = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.python = python or sys.executable
        self._procs: dict[int, subprocess.Popen] = {}

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def info(self) -> Optional[PortableInfo]:
        """The recorded services if both processes still run (else None: ``stop()`` cleans up)."""
        info = self._read_state()
        if info is None or not (_runs_module(info.job.pid, JOB_SERVICE_MODULE)
                                and _runs_module(info.pool.pid, POOL_MODULE)):
            return None
        return info

    def start(self, timeout_s: float = 60.0, die_with_parent: bool = False) -> PortableInfo:
        """Start both services and wait until both accept gRPC connections; returns where they listen.

        ``die_with_parent`` ties their life to this process (tests). On any failure both are stopped.
        """
        running = self.info()
        if running is not None:
            raise PortableUsageError(f"portable services already run (job service {running.job.endpoint}, "
                                     f"worker pool {running.pool.endpoint}); stop them first")
        self.stop()  # a half-dead earlier pair: stop the survivor, forget the record
        env = child_env(self.python)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        started: list[tuple[subprocess.Popen, Path, Path]] = []
        try:
            for log_name, cmd in (
                    (JOB_LOG, [self.python, "-m", JOB_SERVICE_MODULE, "--port", "0", "--port_file"]),
                    (POOL_LOG, [self.python, "-m", POOL_MODULE, "worker-pool", "--port-file"])):
                port_file = self.state_dir / (log_name.rpartition(".")[0] + ".port")
                port_file.unlink(missing_ok=True)
                started.append((self._spawn(cmd + [str(port_file)], self.state_dir / log_name, env,
                                            die_with_parent), port_file, self.state_dir / log_name))
            services = [self._await(proc, port_file, log, deadline) for proc, port_file, log in started]
        except BaseException:
            for proc, _, _ in started:
                self._terminate(proc.pid, proc, 5.0)
            raise
        info = PortableInfo(job=services[0], pool=services[1], started=time.time())
        self._write_state(info)
        logger.info("portable services: job service %s (pid %s), worker pool %s (pid %s)", info.job.endpoint,
                    info.job.pid, info.pool.endpoint, info.pool.pid)
        return info

    def stop(self, timeout_s: float = 15.0) -> Optional[PortableInfo]:
        """Stop the recorded services and everything they started; returns what was stopped."""
        info = self._read_state()
        if info is None:
            self._clear_state()
            return None
        for svc, module in ((info.job, JOB_SERVICE_MODULE), (info.pool, POOL_MODULE)):
            proc = self._procs.get(svc.pid)
            if proc is not None or _runs_module(svc.pid, module):  # never signal a reused pid
                self._terminate(svc.pid, proc, timeout_s)
        self._clear_state()
        return info

    def _read_state(self) -> Optional[PortableInfo]:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            return PortableInfo(job=ServiceInfo(**data["job"]), pool=ServiceInfo(**data["pool"]),
                                started=float(data["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def worker_pids(self, info: PortableInfo) -> list[int]:
        """Pids of every SDK worker this pool has started so far (from its log)."""
        pids = []
        try:
            text = Path(info.pool.log_file).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        text = text[text.rfind("\n--- ") + 1:]  # the log is appended to: only this start's part
        for line in text.splitlines():
            if WORKER_STARTED in line and " pid=" in line:
                pids.append(int(line.rpartition(" pid=")[2].split()[0]))
        return pids

    def __enter__(self) -> "PortableServices":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, cmd: list[str], log_path: Path, env: dict[str, str], die_with_parent: bool) -> subprocess.Popen:
        with open(log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=env, cwd=str(self.state_dir), start_new_session=True,
                                        close_fds=True,
                                        preexec_fn=procs.die_with_parent() if die_with_parent else None)
            except OSError as exc:
                raise PortableUsageError(f"cannot run {cmd[0]}: {exc}") from None
        self._procs[proc.pid] = proc
        return proc

    @staticmethod
    def _await(proc: subprocess.Popen, port_file: Path, log: Path, deadline: float) -> ServiceInfo:
        """Wait for the child to write its port, then for a gRPC connection to succeed."""
        while True:
            if proc.poll() is not None:
                raise PortableServiceError(f"{log.stem} exited with code {proc.returncode} during start-up; "
                                           f"see {log}")
            if port_file.exists():
                port = int(port_file.read_text().strip())
                break
            if time.monotonic() >= deadline:
                raise PortableServiceError(f"{log.stem} did not report its port in time; see {log}")
            time.sleep(0.1)
        info = ServiceInfo(pid=proc.pid, port=port, log_file=str(log))
        if not wait_grpc_ready(info.endpoint, deadline - time.monotonic()):
            raise PortableServiceError(f"{log.stem} at {info.endpoint} did not accept a gRPC connection in "
                                       f"time; see {log}")
        return info

    def _terminate(self, pid: int, proc: Optional[subprocess.Popen], timeout_s: float) -> None:
        """SIGTERM the service, give it ``timeout_s`` to clean up, then SIGKILL its whole process group."""
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if proc is not None:
                if proc.poll() is not None:  # our child: reaped, leaves no zombie
                    break
            elif not group_members(pid):
                break
            time.sleep(0.05)
        try:  # whatever is left of the group (a worker that ignored SIGTERM, a hung service)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.warning("service pid %s did not exit after SIGKILL", pid)
            self._procs.pop(pid, None)
        end = time.monotonic() + 5
        while group_members(pid) and time.monotonic() < end:
            time.sleep(0.05)

    def _write_state(self, info: PortableInfo) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(info), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_file)

    def _clear_state(self) -> None:
        for name in (STATE_FILE, JOB_LOG.replace(".log", ".port"), POOL_LOG.replace(".log", ".port")):
            (self.state_dir / name).unlink(missing_ok=True)


def serve_worker_pool(port_file: Path, host: str = LOOPBACK) -> None:
    """Run Beam's worker pool servicer (process mode) on ``host``; blocks until SIGTERM/SIGINT."""
    import threading

    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import (BeamFnExternalWorkerPoolServicer,
                                                             kill_process_gracefully)
    from apache_beam.utils import thread_pool_executor

    class LoggingPool(BeamFnExternalWorkerPoolServicer):
        def StartWorker(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
            response = super().StartWorker(request, context)
            proc = self._worker_processes.get(request.worker_id)
            if proc is not None:
                logger.info("%s: id=%s pid=%s", WORKER_STARTED, request.worker_id, proc.pid)
            return response

    pool = LoggingPool(use_process=True)
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)])
    port = server.add_insecure_port(f"{host}:0")
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, port_file)
    logger.info("worker pool listening on %s:%s (workers run %s)", host, port, sys.executable)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    server.stop(1)
    for proc in list(pool._worker_processes.values()):
        kill_process_gracefully(proc, timeout=5)
    logger.info("worker pool stopped")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m infra.portable up|down|status`` (and ``worker-pool``, what ``up`` runs)."""
    parser = argparse.ArgumentParser(prog="python -m infra.portable",
                                     description="Beam job service + SDK worker pool on loopback, detached.")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (("up", "start both services"), ("down", "stop both services"),
                       ("status", "show the running services")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--state-dir", default=None, help="pid/port/log files (default: .riskmask/portable)")
    sub.choices["up"].add_argument("--timeout", type=float, default=90.0, help="start-up timeout in seconds")
    pool = sub.add_parser("worker-pool", help="run the SDK worker pool in the foreground")
    pool.add_argument("--port-file", required=True, help="where to write the port it listens on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.action == "worker-pool":
        serve_worker_pool(Path(args.port_file))
        return 0
    services = PortableServices(args.state_dir)
    try:
        if args.action == "up":
            info = services.start(timeout_s=args.timeout)
            print(f"job service {info.job.endpoint} (pid {info.job.pid}), worker pool {info.pool.endpoint} "
                  f"(pid {info.pool.pid}); logs in {services.state_dir}")
            print("riskmask run " + " ".join(info.riskmask_args()) + " ...")
        elif args.action == "down":
            stopped = services.stop()
            print("stopped" if stopped is not None else "not running")
        else:
            info = services.info()
            print(json.dumps(dataclasses.asdict(info) if info else {"running": False}, indent=1))
    except (UserError, ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
