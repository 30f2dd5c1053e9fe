"""`riskmask` subcommands owned by the infra package: ``broker start|stop|status``.

Each command group lives in its own ``_register_<group>`` function, called from ``register``; add new groups
(``up``, ``down``, ``demo`` ...) the same way.
"""

from __future__ import annotations

import argparse
import json
import logging

from infra import broker as embedded

def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this package's subcommands to the top-level parser."""
    _register_broker(sub)


def _quiet_kafka_logs(args: argparse.Namespace) -> None:
    """kafka-python logs every connection attempt; failures reach the user as one line from the command."""
    if not getattr(args, "debug", False):
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


def _state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=None,
                        help="where the pid file and broker.log live (default: $RISKMASK_HOME or ./.riskmask)")


def _register_broker(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("broker", help="the embedded Kafka-protocol broker (Tansu) for local runs",
                       description="Start, stop or query the embedded Tansu broker (memory storage, loopback).")
    bsub = p.add_subparsers(dest="broker_command", metavar="ACTION")
    bsub.required = True

    start = bsub.add_parser("start", help="start the broker detached and create the product's topics")
    _state_dir_option(start)
    start.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    start.add_argument("--partitions", type=int, default=1, help="partitions per topic (default 1)")
    start.add_argument("--topics", default=",".join(embedded.DEFAULT_TOPICS),
                       help="comma-separated topics to create (default: %(default)s)")
    start.add_argument("--timeout", type=float, default=30.0, help="seconds to wait until it answers")
    start.set_defaults(func=_broker_start)

    stop = bsub.add_parser("stop", help="stop the broker recorded in the state directory")
    _state_dir_option(stop)
    stop.set_defaults(func=_broker_stop)

    status = bsub.add_parser("status", help="is it running, where, which topics (exit 1 if not running)")
    _state_dir_option(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_broker_status)


def _broker_start(args: argparse.Namespace) -> int:
    _quiet_kafka_logs(args)
    topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    brk = embedded.EmbeddedBroker(state_dir=args.state_dir)
    info = brk.start(port=args.port, topics=topics, partitions=args.partitions, timeout_s=args.timeout)
    print(f"broker started: pid {info.pid}, {len(topics)} topics x {args.partitions} partitions, "
          f"log {info.log_file}")
    print(info.bootstrap)
    return 0


def _broker_stop(args: argparse.Namespace) -> int:
    _quiet_kafka_logs(args)
    info = embedded.EmbeddedBroker(state_dir=args.state_dir).stop()
    print("broker not running" if info is None else f"broker stopped (pid {info.pid}, {info.bootstrap})")
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    _quiet_kafka_logs(args)
    st = embedded.EmbeddedBroker(state_dir=args.state_dir).status()
    if args.json:
        print(json.dumps(st, indent=1))
    elif not st["running"]:
        print("broker not running")
    elif st.get("answering"):
        print(f"broker running: pid {st['pid']} at {st['bootstrap']}, topics: {', '.join(st['topics'])}")
    else:
        print(f"broker pid {st['pid']} at {st['bootstrap']} is not answering ({st.get('error')})")
    return 0 if st["running"] and st.get("answering") else 1
