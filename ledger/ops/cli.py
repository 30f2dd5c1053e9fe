"""`riskmask` subcommands owned by the ledger package: ``riskmask ledger init|up|down|status|node``.

The registry commands (keys, register, search, erase, audit ...) live in :mod:`ledger.ops.manager_cli` and are
added to the top level from here.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Optional

from ledger.ops.cluster import Cluster, ClusterError, default_dir, init_cluster
from riskmask.errors import ServiceError, UserError
from riskmask.health import add_metrics_options

logger = logging.getLogger(__name__)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this package's subcommands to the top-level parser."""
    p = sub.add_parser("ledger", help="the proof-of-authority ledger cluster (init, up, status, down, node)",
                       description="Create and run a local cluster of ledger validator nodes.")
    lsub = p.add_subparsers(dest="ledger_command", metavar="ACTION")
    lsub.required = True

    def dir_opt(q: argparse.ArgumentParser) -> None:
        q.add_argument("--dir", type=Path, default=None,
                       help="cluster directory (default: $RISKMASK_LEDGER_DIR or ./.riskmask/ledger)")

    q = lsub.add_parser("init", help="create genesis, client keys and node configs")
    q.add_argument("--validators", type=int, default=4, help="number of validator nodes (default 4)")
    q.add_argument("--out", type=Path, default=None, help="cluster directory to create")
    q.add_argument("--chain-id", default=None, help="chain id (default: random)")
    q.add_argument("--force", action="store_true", help="replace an existing cluster directory's keys and data")
    q.add_argument("--hosts", default=None,
                   help="comma-separated address of each validator (deployments); default: free loopback ports")
    q.add_argument("--p2p-port", type=int, default=26656, help="p2p port with --hosts (default 26656)")
    q.add_argument("--api-port", type=int, default=26657, help="API port with --hosts (default 26657)")
    q.add_argument("--api-tls", action="store_true",
                   help="serve every node's API over HTTPS only: write a cluster CA and one certificate per node "
                        "(tls/, files 0600) and name https:// addresses in the genesis; clients trust "
                        "tls/ca.crt ($RISKMASK_LEDGER_CA)")
    q.set_defaults(func=_cmd_init)

    q = lsub.add_parser("up", help="start the node processes and wait for the first block")
    q.add_argument("--nodes", type=int, default=None, help="validators when the directory is new (default 4)")
    q.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for height 1 (default 90)")
    q.add_argument("--api-tls", action="store_true",
                   help="when the directory is new: create the cluster with HTTPS APIs (see `ledger init --api-tls`)")
    q.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="node N serves /metrics, /healthz and /readyz on 127.0.0.1:PORT+N (0: free ports; "
                        "default: off)")
    dir_opt(q)
    q.set_defaults(func=_cmd_up)

    q = lsub.add_parser("down", help="stop every node of the cluster")
    dir_opt(q)
    q.set_defaults(func=_cmd_down)

    q = lsub.add_parser("status", help="height, round, peers and last block time of every node",
                        description="Print every node's state. Exits 3 when fewer than 2f+1 nodes answer (no "
                                    "quorum: no block can be finalised), 0 otherwise.")
    dir_opt(q)
    q.set_defaults(func=_cmd_status)

    q = lsub.add_parser("node", help="run one node in the foreground")
    q.add_argument("--config", type=Path, required=True, help="node config file (nodeN.json)")
    add_metrics_options(q, what="this node (height, round, peers, mempool, commit latency)")
    q.set_defaults(func=_cmd_node)

    try:
        from ledger.ops import manager_cli  # deferred: the manager's privacy module loads only for `ledger init`
    except ImportError as exc:  # the registry commands are optional for running a cluster
        logger.debug("registry commands unavailable: %s", exc)
    else:
        manager_cli.register_commands(sub)
        _add_connect_timeout(sub)


def _add_connect_timeout(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """``--connect-timeout`` on ``audit verify`` and ``audit follow``: fail fast, in one line, when no Kafka
    broker answers (the clients would otherwise wait ~30 s per attempt)."""
    audit = sub.choices.get("audit")
    actions = [a for a in (audit._actions if audit else []) if isinstance(a, argparse._SubParsersAction)]
    for name in ("verify", "follow"):
        q = actions[0].choices.get(name) if actions else None
        if q is None:
            continue
        q.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="give up after this long when no Kafka broker answers (default 5)")
        q.set_defaults(func=_with_broker_check(q.get_default("func")))


def _with_broker_check(func):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        # deferred: kafka loads only for `ledger export`
        from ledger.ops.exporter import _check_broker, resolve_bootstrap

        _check_broker(resolve_bootstrap(getattr(args, "bootstrap", None)), args.connect_timeout)
        return func(args)

    return run


def _dir(args: argparse.Namespace) -> Path:
    return (args.dir or default_dir()).expanduser()


def _cluster(args: argparse.Namespace) -> Cluster:
    """The cluster in ``args.dir``; a missing or broken one is a user error."""
    try:
        return Cluster(_dir(args))
    except ClusterError as exc:
        raise UserError(str(exc)) from None


def _cmd_init(args: argparse.Namespace) -> int:
    out = (args.out or default_dir()).expanduser()
    try:
        hosts = [h.strip() for h in args.hosts.split(",") if h.strip()] if args.hosts else None
        init_cluster(out, args.validators, args.chain_id, force=args.force, hosts=hosts,
                     p2p_port=args.p2p_port, api_port=args.api_port, api_tls=args.api_tls)
    except ClusterError as exc:
        raise UserError(str(exc)) from None
    print(f"ledger cluster of {args.validators} validators created in {out}")
    print(f"client keys: {out / 'keys'} (manager.key, pipeline.key, auditor.key)")
    if args.api_tls:
        print(f"API TLS: CA {out / 'tls' / 'ca.crt'} (clients: export RISKMASK_LEDGER_CA=<that file>), "
              f"node certificates and keys in {out / 'tls'}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    d = _dir(args)
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UserError("--metrics-port must be 0..65535")
    try:
        if not (d / "genesis.json").exists():
            init_cluster(d, args.nodes or 4, api_tls=args.api_tls)
        cluster = Cluster(d)
        if args.nodes is not None and cluster.n != args.nodes:
            raise UserError(f"{d} holds a cluster of {cluster.n} validators, not {args.nodes}")
        if args.api_tls and not all(v.api_tls for v in cluster.genesis.validators):
            raise UserError(f"{d} holds a cluster created without --api-tls; create a new one with "
                            "'riskmask ledger init --api-tls --force'")
        t0 = time.monotonic()
        cluster.up(wait_height=1, timeout_s=args.timeout, metrics_port=args.metrics_port)
    except ClusterError as exc:
        raise ServiceError(str(exc)) from None
    print(f"{cluster.n} ledger nodes up in {time.monotonic() - t0:.1f} s (cluster directory {d})")
    for i in range(cluster.n):
        v = cluster.genesis.validators[i]
        url = v.api_address if "://" in v.api_address else f"http://{v.api_address}"
        mport = cluster.metrics_port(i)
        metrics = f"  metrics http://127.0.0.1:{mport}/metrics" if mport is not None else ""
        print(f"  node{i}: api {url}  pid {cluster.pid(i)}{metrics}")
    if cluster.ca_file is not None:
        print(f"clients trust the cluster CA: export RISKMASK_LEDGER_CA={cluster.ca_file}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    stopped = cluster.down()
    print(f"stopped {len(stopped)} node(s)" if stopped else "no node was running")
    return 0


def format_status(cluster: Cluster, states: Optional[list] = None) -> str:
    rows = [("node", "pid", "state", "height", "round", "peers", "last block")]
    now = time.time() * 1000
    for st in (cluster.status() if states is None else states):
        if st.status is None:
            rows.append((f"node{st.index}", str(st.pid or "-"), "down" if not st.running else "no answer",
                         "-", "-", "-", "-"))
            continue
        s = st.status
        last = s.get("last_block_time_ms") or 0
        age = f"{(now - last) / 1000:.1f} s ago" if last else "never"
        rows.append((f"node{st.index}", str(st.pid), "up", str(s["height"]), str(s["round"]),
                     ",".join(str(p) for p in s["peers"]) or "none", age))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    states = cluster.status()
    print(format_status(cluster, states))
    answering = sum(1 for st in states if st.status is not None)
    quorum = 2 * ((cluster.n - 1) // 3) + 1
    if answering < quorum:
        raise ServiceError(f"only {answering} of {cluster.n} ledger nodes answer; a quorum needs {quorum}")
    return 0


def _cmd_node(args: argparse.Namespace) -> int:
    from ledger.node.run import run_node  # deferred: the node (asyncio, consensus, store) loads only for `ledger node`

    return run_node(args.config, metrics_port=args.metrics_port, metrics_host=args.metrics_host)
