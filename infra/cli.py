"""`riskmask` subcommands owned by the infra package: ``broker start|stop|status``, ``up``, ``down``, ``status``
and ``demo``.

Each command group lives in its own ``_register_<group>`` function, called from ``register``; add new groups
(``up``, ``down``, ``demo`` ...) the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from infra import broker as embedded
from infra.stack import Stack, StackError

def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this package's subcommands to the top-level parser."""
    _register_broker(sub)
    _register_up(sub)
    _register_down(sub)
    _register_status(sub)
    _register_demo(sub)


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

    # Same shape as ledger/client/keys.py:add_commands and infra/cli.py:_register_status: one argparse subcommand each.
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


def _root_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None, metavar="DIR",
                        help="state root of the stack (default: $RISKMASK_HOME or ./.riskmask)")


def _register_up(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("up", help="start the persistent local stack: broker, 4-node ledger, privacy keys",
                       description="Start (or complete) the local stack under one state root and leave it running; "
                                   "the demo and the other commands use it. Idempotent.")
    _root_option(p)
    p.add_argument("--json", action="store_true", help="print the stack as JSON")
    p.set_defaults(func=_up)


def _register_down(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("down", help="stop the local stack (its ledger data and keys are kept)")
    _root_option(p)
    p.set_defaults(func=_down)


def _register_status(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    # Same shape as infra/cli.py:_register_broker's status: the stack's status command, not the broker's.
    p = sub.add_parser("status", help="is the local stack running (exit 1 if not)")
    _root_option(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=_status)


def _up(args: argparse.Namespace) -> int:
    _quiet_kafka_logs(args)
    if not getattr(args, "debug", False):
        logging.getLogger("ledger").setLevel(logging.WARNING)  # the progress lines say what happens
    stack = Stack(args.home)
    owner = stack.owner()
    if stack.running() and owner != 0 and stack.owner_alive():
        raise StackError(f"a demo (pid {owner}) is running on the stack in {stack.paths.root}; wait for it to end")
    info = stack.up(owner=0, progress=lambda m: print(m, flush=True))
    if args.json:
        print(json.dumps({k: v for k, v in info.__dict__.items()}, indent=1))
        return 0
    print(f"stack up in {info.root}: broker {info.bootstrap}, {len(info.api_addresses)} ledger nodes, "
          f"keys {info.keys_dir}" + ("" if info.started else " (already running)"))
    print("other shells reach it with:")
    for k, v in info.env().items():
        print(f"  export {k}={v}")
    return 0


def _down(args: argparse.Namespace) -> int:
    _quiet_kafka_logs(args)
    stopped = Stack(args.home).down(progress=lambda m: print(m, flush=True))
    print("stack stopped" if stopped else "stack was not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    _quiet_kafka_logs(args)
    st = Stack(args.home).status()
    if args.json:
        print(json.dumps(st, indent=1))
        return 0 if st["running"] else 1
    b = st["broker"]
    print(f"state root: {st['root']}" + (f" (owned by demo pid {st['owner']})" if st["owner"] else ""))
    if not b["running"]:
        print("broker:     not running")
    else:
        print(f"broker:     pid {b['pid']} at {b['bootstrap']}" + ("" if b.get("answering") else " (not answering)"))
    led = st["ledger"]
    if not led["initialised"]:
        print(f"ledger:     no cluster in {led['dir']}")
    for n in led["nodes"]:
        state = f"height {n['height']}" if n["height"] is not None else (n["error"] or "down")
        print(f"ledger:     node{n['node']} pid {n['pid'] or '-'} {state}")
    print(f"keys:       {'keyring present' if st['keys']['keyring'] else 'no keyring'} in {st['keys']['dir']}")
    print("running" if st["running"] else "not running (start it with `riskmask up`)")
    return 0 if st["running"] else 1


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    try:
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 1280x720, got {text!r}") from None


def _register_demo(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("demo", help="the whole system end to end on the local stack, results in ./demo-out",
                       description="Start the local stack (or use the one `riskmask up` started), register two "
                                   "subjects with fictional roles, compose a real-face clip with a bystander, run "
                                   "the pipeline and the auditor, write a contact sheet, a video and summary.json, "
                                   "and stop what it started.")
    _root_option(p)
    p.add_argument("--out", default="demo-out", help="output folder (default: %(default)s)")
    p.add_argument("--frames", type=int, default=80, help="frames in the clip (default: %(default)s)")
    p.add_argument("--size", type=_size, default=(1280, 720), help="frame size WxH (default: 1280x720)")
    p.add_argument("--fps", type=float, default=10.0,
                   help="camera pace of the clip in frames per second; 0 = as fast as possible (default 10)")
    p.add_argument("--bounded", action="store_true",
                   help="produce the whole clip first, then replay it with `riskmask run --bounded` (measures "
                        "throughput; latency then includes the wait in frames.raw)")
    p.add_argument("--keep-stack", action="store_true", help="leave a stack the demo started running")
    p.add_argument("--console", action="store_true", help="open `riskmask console` alongside the demo")
    p.add_argument("--console-port", type=int, default=8765, help="console port (default 8765; 0 = any free)")
    p.add_argument("--console-linger", type=float, default=None, metavar="SECONDS",
                   help="with --console: keep it open this long after the last step (default: until Ctrl-C)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from infra.demo import Demo, DemoConfig  # deferred: loads cv2, which only this path needs
    from infra.demo_report import table  # deferred: loads cv2, which only this path needs

    _quiet_kafka_logs(args)
    if not getattr(args, "debug", False):
        for name in ("apache_beam", "infra", "ledger", "pipelines"):
            logging.getLogger(name).setLevel(logging.WARNING)  # the demo prints its own progress lines
    config = DemoConfig(out_dir=Path(args.out), root=Path(args.home) if args.home else None, frames=args.frames,
                        size=args.size, fps=args.fps, keep_stack=args.keep_stack, bounded=args.bounded,
                        console=args.console, console_port=args.console_port,
                        console_linger_s=args.console_linger)
    summary = Demo(config, progress=lambda m: print(m, flush=True)).run()
    print()
    print(table(summary))
    print()
    for name, path in summary["outputs"].items():
        print(f"{name}: {path}")
    return 0 if not summary["unavailable"] or all(
        s["status"] == "unavailable" for s in summary["steps"] if s["status"] != "ok") else 1
