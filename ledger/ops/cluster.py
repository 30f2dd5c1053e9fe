"""A local ledger cluster: N validator node processes on loopback, managed through a cluster directory.

Layout of a cluster directory (``riskmask ledger init`` writes it, ``up``/``down``/``status`` use it)::

    genesis.json            chain id + validators (public key, p2p and API address)
    clients.json            client registry: public key -> role
    keys/                   0700; every *.key file 0600
        node0.key ...       validator private keys (one per node)
        manager.key pipeline.key auditor.key
    tls/                    only with ``--api-tls`` (ledger.rpc.tls): 0700, every file 0600
        ca.crt ca.key       the cluster CA (clients trust ca.crt)
        api-node0.crt/.key  node 0's API server certificate and key ...
    node0.json ...          per-node config (data dir, listen addresses, timeouts, limits)
    data/node0/ledger.db    per-node SQLite store
    run/node0.pid           pid of a running node
    run/node0.metrics       its /metrics port, when started with one
    logs/node0.log          node log (appended across restarts)

Ports are picked free at init time (bind to port 0) and kept in genesis, so restarts reuse them. With
``--api-tls`` the genesis names every API as ``https://host:port`` and each node config names its certificate
and key (``api_tls_cert``/``api_tls_key``), so every client built from the genesis speaks HTTPS, trusting the
CA in ``tls/ca.crt`` (``$RISKMASK_LEDGER_CA``); plain HTTP to such a node gets no answer.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.client.api_client import ApiError, LedgerClient, Unavailable
from ledger.config import (ClientRegistry, ConfigError, Genesis, KeyFile, NodeConfig, ValidatorInfo, parse_address,
                           write_json)
from ledger.rpc.tls import TLS_DIR, cluster_ca, node_cert_name, node_key_name, write_api_tls
from riskmask import procs

logger = logging.getLogger(__name__)

CLIENT_ROLES = ("manager", "pipeline", "auditor")
ENV_LEDGER_DIR = "RISKMASK_LEDGER_DIR"
PORT_WAIT_S = 5.0


class ClusterError(Exception):
    """A cluster operation failed; the message is one readable line."""


def default_dir() -> Path:
    """``$RISKMASK_LEDGER_DIR``, else ``ledger/`` under the local stack's root (``$RISKMASK_HOME`` or ``./.riskmask``)."""
    env = os.environ.get(ENV_LEDGER_DIR)
    return Path(env) if env else Path(os.environ.get("RISKMASK_HOME") or ".riskmask") / "ledger"


def public_key_of(seed: bytes) -> bytes:
    """Ed25519 public key of a 32-byte seed."""
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free right now, preferably below the kernel's ephemeral range.

    Cluster ports must stay free while a node is down (restarts reuse them); a port from the ephemeral range
    can meanwhile be taken as the local port of any outgoing connection, so ports are drawn at random below
    that range and checked by binding them. Falls back to kernel-assigned ports (bind to 0).
    """
    lo, _ = _ephemeral_range()
    socks: list[socket.socket] = []
    ports: list[int] = []
    rng = random.SystemRandom()
    try:
        tries = 0
        while len(ports) < n and lo > 12000 and tries < 50 * n:
            tries += 1
            port = rng.randrange(10000, lo)
            if port in ports:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.append(port)
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def init_cluster(out: Path, validators: int = 4, chain_id: Optional[str] = None, force: bool = False,
                 host: str = "127.0.0.1", overrides: Optional[dict] = None,
                 hosts: Optional[Sequence[str]] = None, p2p_port: int = 26656, api_port: int = 26657,
                 api_tls: bool = False) -> Path:
    """Create a cluster directory: genesis, client registry, key files (0600) and node configs.

    Without ``hosts`` every node gets free loopback ports (a local cluster). With ``hosts`` (one address per
    validator, for compose or Kubernetes) each node listens on 0.0.0.0 at the fixed ``p2p_port``/``api_port``
    and genesis advertises ``host:port``. With ``api_tls`` a cluster CA and one API certificate per node are
    written to ``tls/`` (:mod:`ledger.rpc.tls`), the node configs name them and genesis advertises
    ``https://host:port``.
    """
    out = Path(out)
    if not 1 <= validators <= 64:
        raise ClusterError("--validators must be between 1 and 64")
    for h in hosts or ():  # refuse a bad host name before anything is written
        try:
            parse_address(f"{h}:{p2p_port}", "--hosts")
            parse_address(f"{h}:{api_port}", "--hosts")
        except ConfigError as exc:
            raise ClusterError(str(exc)) from None
    if (out / "genesis.json").exists() and not force:
        raise ClusterError(f"{out} already holds a ledger cluster (genesis.json); use --force to replace it")
    if force and (out / "run").exists() and any((out / "run").glob("*.pid")):
        raise ClusterError(f"{out} has running nodes; run 'riskmask ledger down' first")
    out.mkdir(parents=True, exist_ok=True)
    keys = out / "keys"
    if force and keys.exists():
        shutil.rmtree(keys)
    if force and (out / "data").exists():
        shutil.rmtree(out / "data")
    if force and (out / TLS_DIR).exists():
        shutil.rmtree(out / TLS_DIR)
    keys.mkdir(mode=0o700, exist_ok=True)
    os.chmod(keys, 0o700)
    if hosts is not None and len(hosts) != validators:
        raise ClusterError(f"--hosts names {len(hosts)} hosts for {validators} validators")
    ports = free_ports(2 * validators, host) if hosts is None else []
    chain_id = chain_id or f"riskmask-{uuid.uuid4().hex[:8]}"
    vals, api_listen, tls_names = [], [], []
    scheme = "https://" if api_tls else ""
    for i in range(validators):
        seed = os.urandom(32)
        KeyFile(seed, "validator", i, f"node{i}").save(keys / f"node{i}.key")
        if hosts is None:
            p2p, api = f"{host}:{ports[2 * i]}", f"{host}:{ports[2 * i + 1]}"
            tls_names.append([host] + (["localhost"] if host == "127.0.0.1" else []))
        else:
            p2p, api = f"{hosts[i]}:{p2p_port}", f"{hosts[i]}:{api_port}"
            tls_names.append([hosts[i]])
        api_listen.append(api)
        vals.append(ValidatorInfo(i, public_key_of(seed), p2p, scheme + api))
    if api_tls:
        write_api_tls(out, chain_id, tls_names)
    genesis = Genesis(chain_id, int(time.time() * 1000), tuple(vals))
    write_json(out / "genesis.json", genesis.to_dict())
    clients = []
    for role in CLIENT_ROLES:
        seed = os.urandom(32)
        KeyFile(seed, role, None, role).save(keys / f"{role}.key")
        clients.append({"public_key": public_key_of(seed).hex(), "role": role, "name": role})
    write_json(out / "clients.json", {"format": "riskmask-ledger-clients/1", "clients": clients})
    for v in vals:
        cfg = {"format": "riskmask-ledger-node/1", "index": v.index, "genesis_file": "genesis.json",
               "clients_file": "clients.json", "key_file": f"keys/node{v.index}.key",
               "data_dir": f"data/node{v.index}", "p2p_listen": v.p2p_address, "api_listen": api_listen[v.index]}
        if hosts is not None:
            cfg.update(p2p_listen=f"0.0.0.0:{p2p_port}", api_listen=f"0.0.0.0:{api_port}")
        if api_tls:
            cfg.update(api_tls_cert=f"{TLS_DIR}/{node_cert_name(v.index)}",
                       api_tls_key=f"{TLS_DIR}/{node_key_name(v.index)}")
        cfg.update(overrides or {})
        write_json(out / f"node{v.index}.json", cfg)
    # Validate what was written, exactly as a node will read it.
    Genesis.load(out / "genesis.json")
    ClientRegistry.load(out / "clients.json")
    for v in vals:
        NodeConfig.load(out / f"node{v.index}.json")
    return out


@dataclass
class NodeState:
    index: int
    pid: Optional[int]
    running: bool
    status: Optional[dict]
    error: str = ""


STARTING_GRACE_S = 5.0


def _is_our_node(pid: int, config: Path) -> bool:
    """True when ``pid`` runs ``ledger.node`` with this config (guards against recycled pids)."""
    cmd = procs.cmdline(pid)
    if cmd is None:
        return procs.pid_alive(pid)
    return b"ledger.node" in cmd and str(config).encode() in cmd


class Cluster:
    """Start, stop and inspect the node processes of one cluster directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory).resolve()
        if not (self.dir / "genesis.json").exists():
            raise ClusterError(f"no ledger cluster in {self.dir} (run 'riskmask ledger init' first)")
        try:
            self.genesis = Genesis.load(self.dir / "genesis.json")
        except ConfigError as exc:
            raise ClusterError(str(exc)) from None
        self._procs: dict[int, subprocess.Popen] = {}

    @property
    def n(self) -> int:
        return self.genesis.n

    def config_path(self, i: int) -> Path:
        return self.dir / f"node{i}.json"

    def pid_path(self, i: int) -> Path:
        return self.dir / "run" / f"node{i}.pid"

    def metrics_path(self, i: int) -> Path:
        return self.dir / "run" / f"node{i}.metrics"

    def metrics_port(self, i: int) -> Optional[int]:
        """The /metrics port node ``i`` was started with, while it runs; None without one."""
        if self.pid(i) is None:
            return None
        try:
            return int(self.metrics_path(i).read_text().strip())
        except (OSError, ValueError):
            return None

    def log_path(self, i: int) -> Path:
        return self.dir / "logs" / f"node{i}.log"

    def data_dir(self, i: int) -> Path:
        return NodeConfig.load(self.config_path(i)).data_dir

    def api_address(self, i: int) -> str:
        return self.genesis.validators[i].api_address

    def key_seed(self, name: str) -> bytes:
        return KeyFile.load(self.dir / "keys" / f"{name}.key").seed

    @property
    def ca_file(self) -> Optional[Path]:
        """The cluster CA certificate (``tls/ca.crt``) of a cluster made with ``--api-tls``, or None."""
        return cluster_ca(self.dir)

    def client(self, i: int, role: str = "auditor", timeout_s: float = 5.0) -> LedgerClient:
        """A client of node ``i`` signing for that node (id from genesis); HTTPS when the node serves TLS,
        trusting the cluster CA (``--api-tls``) or else the node's own (self-signed) certificate."""
        v = self.genesis.validators[i]
        if v.api_tls:
            ca = self.ca_file
            return LedgerClient(v.api_address, self.key_seed(role), timeout_s, node_id=v.public_key.hex(),
                                ca_file=str(ca) if ca else None)
        try:
            cert = json.loads(self.config_path(i).read_text()).get("api_tls_cert") or ""
        except (OSError, ValueError):
            cert = ""
        if not cert:
            return LedgerClient.for_validator(v, self.key_seed(role), timeout_s)
        if not Path(cert).is_absolute():
            cert = str(self.dir / cert)
        return LedgerClient(f"https://{v.api_address}", self.key_seed(role), timeout_s,
                            node_id=v.public_key.hex(), ca_file=cert)

    # -- processes -----------------------------------------------------------------------------------------
    def pid(self, i: int) -> Optional[int]:
        try:
            pid = int(self.pid_path(i).read_text().strip())
        except (OSError, ValueError):
            return None
        if not procs.pid_alive(pid):
            return None
        if _is_our_node(pid, self.config_path(i)):
            return pid
        # Between fork and exec a just-started child still shows its parent's command line (longer under
        # load: the pre-exec hook runs Python): a pid file written moments ago names a node still starting.
        try:
            young = time.time() - self.pid_path(i).stat().st_mtime < STARTING_GRACE_S
        except OSError:
            young = False
        return pid if young else None

    def start_node(self, i: int, extra_args: tuple[str, ...] = (), metrics_port: Optional[int] = None) -> int:
        """Start node ``i`` detached (own session, log file); returns its pid. No-op when already running.

        ``metrics_port``: the node serves /metrics, /healthz and /readyz on 127.0.0.1 at that port (recorded
        in ``run/nodeN.metrics``, see :meth:`metrics_port`).
        """
        if not 0 <= i < self.n:
            raise ClusterError(f"node index {i} out of range 0..{self.n - 1}")
        pid = self.pid(i)
        if pid is not None:
            return pid
        for port_addr in (self.genesis.validators[i].p2p_hostport, self.genesis.validators[i].api_hostport):
            deadline = time.monotonic() + PORT_WAIT_S  # an outgoing connection may hold it for a moment
            while not _port_free(*port_addr) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not _port_free(*port_addr):
                raise ClusterError(f"node {i} cannot start: {port_addr[0]}:{port_addr[1]} is in use "
                                   "by another process")
        (self.dir / "run").mkdir(exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        log = open(self.log_path(i), "ab")
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.metrics_path(i).unlink(missing_ok=True)
        if metrics_port is not None:
            if not _port_free("127.0.0.1", metrics_port):
                raise ClusterError(f"node {i} cannot start: metrics port 127.0.0.1:{metrics_port} is in use")
            extra_args = (*extra_args, "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1")
        proc = subprocess.Popen(
            procs.python_module("ledger.node", "--config", str(self.config_path(i)), *extra_args),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=str(self.dir), env=env)
        log.close()
        self._procs[i] = proc
        tmp = self.pid_path(i).with_suffix(".tmp")
        tmp.write_text(f"{proc.pid}\n")
        os.replace(tmp, self.pid_path(i))
        if metrics_port is not None:
            self.metrics_path(i).write_text(f"{metrics_port}\n")
        return proc.pid

    def kill_node(self, i: int, sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> bool:
        """Signal node ``i`` and wait for it to exit (SIGKILL after ``timeout_s``). False if not running."""
        pid = self.pid(i)
        if pid is None:
            self.pid_path(i).unlink(missing_ok=True)
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._reap(i)
            if not procs.pid_alive(pid):
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while procs.pid_alive(pid):
                self._reap(i)
                time.sleep(0.05)
        self._reap(i)
        self.pid_path(i).unlink(missing_ok=True)
        self.metrics_path(i).unlink(missing_ok=True)
        return True

    def _reap(self, i: int) -> None:
        proc = self._procs.get(i)
        if proc is not None and proc.poll() is not None:
            self._procs.pop(i, None)

    def wipe_node(self, i: int) -> None:
        """Delete node ``i``'s data directory (the node must be stopped)."""
        if self.pid(i) is not None:
            raise ClusterError(f"node {i} is running; stop it before wiping its data")
        shutil.rmtree(self.data_dir(i), ignore_errors=True)

    def up(self, wait_height: int = 1, timeout_s: float = 60.0, nodes: Optional[list[int]] = None,
           metrics_port: Optional[int] = None) -> None:
        """Start all (or the given) nodes and wait until each reports height >= ``wait_height``.

        ``metrics_port``: node ``i`` serves /metrics on ``metrics_port + i`` (0: a free port each).
        """
        started = []
        idx = list(range(self.n)) if nodes is None else nodes
        if metrics_port and not 1 <= metrics_port <= 65536 - self.n:
            raise ClusterError(f"metrics ports {metrics_port}..{metrics_port + self.n - 1} are not all valid ports")
        free = free_ports(self.n) if metrics_port == 0 else []
        try:
            for i in idx:
                if self.pid(i) is None:
                    port = None if metrics_port is None else (free[i] if free else metrics_port + i)
                    self.start_node(i, metrics_port=port)
                    started.append(i)
            self.wait_height(wait_height, timeout_s, nodes=idx)
        except BaseException:
            for i in started:  # no orphans: undo what this call started
                self.kill_node(i, signal.SIGTERM, 5.0)
            raise

    def down(self, timeout_s: float = 10.0) -> list[int]:
        """Stop every running node (SIGTERM, then SIGKILL); returns the indices stopped."""
        stopped = []
        for i in range(self.n):
            if self.kill_node(i, signal.SIGTERM, timeout_s):
                stopped.append(i)
        return stopped

    # -- inspection ----------------------------------------------------------------------------------------
    def node_status(self, i: int, timeout_s: float = 10.0) -> NodeState:
        pid = self.pid(i)
        if pid is None:
            return NodeState(i, None, False, None, "not running")
        try:
            with self.client(i, "auditor", timeout_s) as c:
                return NodeState(i, pid, True, c.status())
        except (Unavailable, ApiError) as exc:
            return NodeState(i, pid, True, None, str(exc))

    def status(self) -> list[NodeState]:
        return [self.node_status(i) for i in range(self.n)]

    def heights(self, nodes: Optional[list[int]] = None) -> dict[int, int]:
        """Height of every reachable node."""
        out = {}
        for i in (range(self.n) if nodes is None else nodes):
            st = self.node_status(i)
            if st.status is not None:
                out[i] = int(st.status["height"])
        return out

    def wait_height(self, height: int, timeout_s: float = 60.0, nodes: Optional[list[int]] = None) -> None:
        """Wait until every node in ``nodes`` (default all) reports at least ``height``."""
        idx = list(range(self.n)) if nodes is None else nodes
        deadline = time.monotonic() + timeout_s
        while True:
            for i in idx:
                if self.pid(i) is None:
                    raise ClusterError(f"node {i} exited during start-up; see {self.log_path(i)}"
                                       f"{_log_tail(self.log_path(i))}")
            hs = self.heights(idx)
            if all(hs.get(i, -1) >= height for i in idx):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes did not reach height {height} within {timeout_s:.0f} s "
                                   f"(heights: {hs or 'none reachable'}); see {self.dir / 'logs'}")
            time.sleep(0.2)


def _port_free(host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _log_tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f" (last log line: {lines[-1][-200:]})" if lines else ""
