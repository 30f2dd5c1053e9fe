"""The local stack: the embedded broker, a 4-node ledger cluster and the privacy keyring under one state root.

Layout of the state root (``$RISKMASK_HOME`` or ``./.riskmask``)::

    stack.json      what ``up`` started: bootstrap, ledger and key paths, owner pid (0 = persistent)
    broker/         broker.pid, broker.json, broker.log of the embedded Tansu broker (memory storage)
    ledger/         the ledger cluster directory (genesis, node configs, node keys, SQLite data, logs); with
                    API TLS (``Stack.up(ledger_api_tls=True)`` or a directory made by ``ledger init --api-tls``)
                    also tls/ca.crt, which :meth:`StackInfo.env` passes on as ``$RISKMASK_LEDGER_CA``
    keys/           the client-side privacy keyring (keyring.json, 0600); never read by a ledger node;
                    the auditor key pair (auditor.x25519 0600, auditor.x25519.pub) and the per-camera
                    raw-frame keys (frame_keys.json 0600, made by producers with encryption on)

``Stack.up`` is idempotent: it starts only what is not running and creates the ledger cluster and the keyring
only when they do not exist, so the chain and its registrations survive ``down``/``up``. Whatever one ``up``
call started is stopped again if that call fails or is interrupted, so a failed start leaves no process.
``owner`` records who may stop the stack: ``riskmask up`` starts a persistent stack (owner 0) that the demo
uses and leaves running; a stack the demo starts itself carries the demo's pid and is stopped by it (or
adopted by the next demo if that pid is gone).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from infra import broker as embedded
from ledger.client import keys as keyring
from ledger.ops.cluster import Cluster, ClusterError, init_cluster
from riskmask import procs
from riskmask.errors import ServiceError, UserError

logger = logging.getLogger(__name__)

STACK_FILE = "stack.json"
DEFAULT_VALIDATORS = 4
Progress = Callable[[str], None]


class StackError(UserError):
    """The stack cannot be started or used as asked; the message says what to do."""


class StackServiceError(ServiceError):
    """A stack component did not come up or does not answer."""


def stack_root(explicit: Optional[os.PathLike[str] | str] = None) -> Path:
    """The state root: ``explicit``, else ``$RISKMASK_HOME``, else ``./.riskmask``."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get(embedded.STATE_ENV) or ".riskmask").expanduser()


@dataclass(frozen=True)
class StackPaths:
    """Where each component of one stack keeps its state."""

    root: Path

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def stack_file(self) -> Path:
        return self.root / STACK_FILE


@dataclass
class StackInfo:
    """A running stack as other commands need it."""

    root: str
    bootstrap: str
    ledger_dir: str
    keys_dir: str
    api_addresses: list[str]
    owner: int = 0
    ledger_ca: str = ""  # the ledger cluster CA when its API is HTTPS only (addresses are https://)
    started: list[str] = field(default_factory=list)  # components this call started (not persisted)

    def env(self) -> dict[str, str]:
        """Environment variables that point the other ``riskmask`` commands at this stack."""
        env = {"RISKMASK_HOME": self.root, "RISKMASK_BOOTSTRAP": self.bootstrap,
               "RISKMASK_LEDGER_DIR": self.ledger_dir, "RISKMASK_KEYS_DIR": self.keys_dir}
        if self.ledger_ca:
            env["RISKMASK_LEDGER_CA"] = self.ledger_ca
        return env


def _ledger_ca(cluster: object) -> str:
    """The cluster CA of a ledger with HTTPS APIs; also made this process's default trust anchor for ledger
    clients (``$RISKMASK_LEDGER_CA``) unless one is set already, so in-process clients built from the stack's
    https:// addresses verify the nodes."""
    ca = getattr(cluster, "ca_file", None)
    if ca is None or not any(getattr(v, "api_tls", False) for v in cluster.genesis.validators):  # type: ignore[attr-defined]
        return ""
    os.environ.setdefault("RISKMASK_LEDGER_CA", str(ca))
    return str(ca)


def _noop(_: str) -> None:
    pass


class Stack:
    """Start, stop and query the local stack under one state root."""

    def __init__(self, root: Optional[os.PathLike[str] | str] = None, validators: int = DEFAULT_VALIDATORS) -> None:
        self.paths = StackPaths(stack_root(root).resolve())
        self.validators = validators
        self.broker = embedded.EmbeddedBroker(state_dir=self.paths.broker)
        self._cluster_obj = None  # one instance, so that it reaps the node processes it started

    # -- recorded state ------------------------------------------------------------------------------------
    def recorded(self) -> Optional[dict]:
        """The content of stack.json, or None."""
        try:
            return json.loads(self.paths.stack_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def owner(self) -> int:
        """Pid of the process that owns the running stack (0: persistent, started by ``riskmask up``)."""
        rec = self.recorded() or {}
        try:
            return int(rec.get("owner", 0))
        except (TypeError, ValueError):
            return 0

    def owner_alive(self) -> bool:
        owner = self.owner()
        return owner == 0 or procs.pid_alive(owner)

    def _write(self, info: StackInfo) -> None:
        data = asdict(info)
        data.pop("started", None)
        tmp = self.paths.stack_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.paths.stack_file)

    # -- components ----------------------------------------------------------------------------------------
    def _cluster(self):
        if self._cluster_obj is None:
            try:
                self._cluster_obj = Cluster(self.paths.ledger)
            except ClusterError as exc:
                raise StackError(f"{exc}; delete {self.paths.ledger} to start a fresh chain") from None
        return self._cluster_obj

    def running(self) -> bool:
        """True when the broker and every ledger node process are alive."""
        if self.broker.info() is None or not (self.paths.ledger / "genesis.json").exists():
            return False
        cluster = self._cluster()
        return all(cluster.pid(i) is not None for i in range(cluster.n))

    def info(self) -> Optional[StackInfo]:
        """The running stack, or None when any part of it is down."""
        binfo = self.broker.info()
        if binfo is None or not self.running():
            return None
        cluster = self._cluster()
        return StackInfo(root=str(self.paths.root), bootstrap=binfo.bootstrap, ledger_dir=str(self.paths.ledger),
                         keys_dir=str(self.paths.keys),
                         api_addresses=[cluster.api_address(i) for i in range(cluster.n)], owner=self.owner(),
                         ledger_ca=_ledger_ca(cluster))

    def up(self, owner: int = 0, progress: Progress = _noop, ledger_timeout_s: float = 120.0,
           ledger_api_tls: bool = False) -> StackInfo:
        """Start what is not running (broker, ledger nodes), create what is missing (cluster, keyring).

        ``ledger_api_tls``: a ledger cluster created by this call serves its API over HTTPS only (its CA goes
        to :meth:`StackInfo.env`); an existing cluster keeps what it was made with.

        Returns the stack with ``started`` naming what this call started; on any failure or interrupt, what
        this call started is stopped again.
        """
        try:
            self.paths.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StackError(f"cannot create the state directory {self.paths.root}: {exc.strerror}") from None
        started: list[str] = []
        try:
            binfo = self.broker.info()
            if binfo is None:
                progress("starting the embedded Kafka broker (Tansu)")
                binfo = self.broker.start(topics=embedded.DEFAULT_TOPICS)
                started.append("broker")
            if not (self.paths.ledger / "genesis.json").exists():
                progress(f"creating a {self.validators}-validator ledger cluster in {self.paths.ledger}")
                try:
                    init_cluster(self.paths.ledger, self.validators, api_tls=ledger_api_tls)
                except ClusterError as exc:
                    raise StackError(str(exc)) from None
            cluster = self._cluster()
            down = [i for i in range(cluster.n) if cluster.pid(i) is None]
            if down:
                progress(f"starting {len(down)} ledger node(s) and waiting for the first block")
                started.append("ledger")
                try:
                    cluster.up(wait_height=1, timeout_s=ledger_timeout_s, nodes=None)
                except ClusterError as exc:
                    text = str(exc)
                    if "in use" in text:
                        raise StackError(f"{text}; stop that process, or delete {self.paths.ledger} so that "
                                         "fresh ports are picked") from None
                    raise StackServiceError(text) from None
            if not keyring.keyring_path(self.paths.keys).exists():
                progress(f"creating the privacy keyring in {self.paths.keys}")
                keyring.init_keyring(self.paths.keys)
            if not keyring.auditor_public_path(self.paths.keys).exists():
                # Local convenience: the auditor's private half sits beside the pipeline's keys here; in
                # production it is made on the auditor's machine and only the .pub is given to the pipeline.
                progress(f"creating the auditor key pair (audit decisions are sealed to it) in {self.paths.keys}")
                keyring.init_auditor_key(self.paths.keys, force=True)
            info = StackInfo(root=str(self.paths.root), bootstrap=binfo.bootstrap,
                             ledger_dir=str(self.paths.ledger), keys_dir=str(self.paths.keys),
                             api_addresses=[cluster.api_address(i) for i in range(cluster.n)],
                             owner=owner, ledger_ca=_ledger_ca(cluster), started=started)
            self._write(info)
            return info
        except BaseException:
            self._undo(started)
            raise

    def _undo(self, started: list[str]) -> None:
        if "ledger" in started and (self.paths.ledger / "genesis.json").exists():
            try:
                self._cluster().down(timeout_s=5.0)
            except Exception:  # best effort: the broker below must still be stopped
                logger.warning("could not stop the ledger nodes", exc_info=True)
        if "broker" in started:
            self.broker.stop()

    def down(self, progress: Progress = _noop) -> list[str]:
        """Stop the ledger nodes and the broker (data and keys are kept); returns what was stopped."""
        stopped: list[str] = []
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave half a stack
        try:
            if (self.paths.ledger / "genesis.json").exists():
                nodes = self._cluster().down(timeout_s=10.0)
                if nodes:
                    progress(f"stopped {len(nodes)} ledger node(s)")
                    stopped.append("ledger")
            if self.broker.stop() is not None:
                progress("stopped the broker")
                stopped.append("broker")
            try:
                self.paths.stack_file.unlink()
            except FileNotFoundError:
                pass
        finally:
            signal.signal(signal.SIGINT, old)
        return stopped

    def status(self) -> dict:
        """Broker, ledger nodes and keyring state, as a JSON-ready dict."""
        out: dict = {"root": str(self.paths.root), "owner": self.owner()}
        out["broker"] = self.broker.status()
        nodes = []
        if (self.paths.ledger / "genesis.json").exists():
            cluster = self._cluster()
            for st in cluster.status():
                nodes.append({"node": st.index, "pid": st.pid, "running": st.running,
                              "height": None if st.status is None else int(st.status["height"]),
                              "error": st.error or None})
        out["ledger"] = {"dir": str(self.paths.ledger), "initialised": bool(nodes), "nodes": nodes}
        out["keys"] = {"dir": str(self.paths.keys), "keyring": keyring.keyring_path(self.paths.keys).exists()}
        out["running"] = bool(out["broker"].get("answering")) and bool(nodes) and all(
            n["height"] is not None for n in nodes)
        return out


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """Wait until the given pids have exited; returns those still alive after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if procs.pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if procs.pid_alive(p)]
    return alive
