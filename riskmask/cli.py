"""The ``riskmask`` command: one entry point, subcommands contributed by each package.

Each area owns its subcommands in its own module (``infra.cli``, ``pipelines.cli``, ``ledger.ops.cli``), each
exposing ``register(subparsers)``; handlers take the parsed args and return an exit code. Errors a user can
fix are printed as one readable line with a non-zero exit, never as a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from riskmask import __version__
from riskmask.errors import ServiceError, UserError
from riskmask.logjson import LOG_FORMATS, configure

COMMAND_MODULES = ("infra.cli", "pipelines.cli", "ledger.ops.cli", "infra.console.cli")


def face_templates(photos: Sequence[Path], model_dir: Optional[Path] = None) -> list[Any]:
    """The pipeline's face templates of registration photos (:func:`pipelines.recognition.enrolment.face_templates`)."""
    # deferred: loads numpy; only `register --photo` needs it
    from pipelines.recognition.enrolment import face_templates as embed

    return embed(photos, model_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="riskmask",
        description="Risk-dependent face de-identification for streaming CCTV, with a PoA audit ledger.")
    parser.add_argument("--version", action="version", version=f"riskmask {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in logs")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="log lines as text or as one JSON object per line (default: $RISKMASK_LOG_FORMAT "
                             "or text)")
    # the ledger's `register --photo` embeds photos with the pipeline's face models, passed in from here
    parser.set_defaults(face_templates=face_templates)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _add_log_format(sub)
    return parser


def _add_log_format(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Accept ``--log-format`` after any subcommand too (``riskmask run --log-format json``)."""
    for p in {id(p): p for p in sub.choices.values()}.values():
        if not any("--log-format" in a.option_strings for a in p._actions):
            p.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS,
                           help="text or json log lines (default: text)")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_log_format(action)




def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO)
    configure(level, args.log_format)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, ServiceError) as exc:
        if args.debug:
            raise
        print(f"riskmask: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("riskmask: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: one line, not a traceback
        if args.debug:
            raise
        print(f"riskmask: error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
