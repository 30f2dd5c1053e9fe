"""Manager and pipeline side of the risk registry: the `riskmask` subcommands over the registry client.

``register_commands(sub)`` adds ``keys``, ``register``, ``search``, ``update-risk``, ``erase``, ``rewrap``,
``anchor``, ``audit`` and ``ledger export`` (called from ``ledger.ops.cli.register``). Every handler returns an
exit code; user mistakes raise :class:`riskmask.errors.UserError` (one line, exit 2) *before* anything is
written; unreachable services raise :class:`riskmask.errors.ServiceError` (exit 3). Nothing here logs or
prints a raw identifier or a template.

:class:`RegistryClient` (re-exported from :mod:`ledger.client.registry_client`) is the library form (tests,
pipeline, demo).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ledger.audit import verifier as audit
from ledger.client import keys as keyring, privacy
from ledger.client.registry_client import COMMIT_TIMEOUT_S, Committed, RegistryClient, RegistryError, SearchResult
from ledger.ops import exporter
from ledger.ops.cluster import default_dir
from ledger.registry import payloads
from ledger.registry.payloads import AnchorTx
from riskmask.errors import UserError

logger = logging.getLogger(__name__)

# The library names, re-exported for callers that use this module (demo, tests, benchmarks).
__all__ = ["COMMIT_TIMEOUT_S", "Committed", "FaceEmbedder", "RegistryClient", "RegistryError", "SearchResult",
           "register_commands"]

Sub = "argparse._SubParsersAction[argparse.ArgumentParser]"
# Photos (and an optional model directory) -> one face template per photo. The ledger loads no face model:
# the command line passes the pipeline's embedder as ``args.face_templates`` (see riskmask.cli).
FaceEmbedder = Callable[[Sequence[Path], Optional[Path]], list[np.ndarray]]


# ------------------------------------------------------------------------------------------------------------
# Command line


def register_commands(sub: Sub) -> None:  # type: ignore[valid-type]
    """Add the registry, key, audit and export subcommands."""
    keyring.add_commands(sub)
    _register_registry(sub)

    audit.add_commands(sub)
    ledger_parser = sub.choices.get("ledger")  # type: ignore[attr-defined]
    if ledger_parser is not None:
        for action in ledger_parser._actions:  # the `ledger` ACTION subparsers
            if isinstance(action, argparse._SubParsersAction):
                exporter.add_command(action)
                break


def _keys_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys-dir", type=Path, default=None,
                   help=f"keyring directory (default: ${keyring.ENV_KEYS_DIR} or ./.riskmask/keys)")


def _ledger_options(p: argparse.ArgumentParser, role: str = "manager") -> None:
    p.add_argument("--ledger-dir", type=Path, default=None,
                   help="ledger cluster directory with genesis.json and keys/ (default: $RISKMASK_LEDGER_DIR "
                        "or ./.riskmask/ledger)")
    p.add_argument("--key", type=Path, default=None, help=f"client key file (default: <ledger-dir>/keys/{role}.key)")


def _identity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="full name (any case, spacing, Unicode form)")
    p.add_argument("--birth-date", required=True, help="date of birth, e.g. 1980-03-12 or 12.03.1980")
    p.add_argument("--id-number", default="", help="document number, if one was given at registration")


# Same shape as infra/console/cli.py:_port, pipelines/redact.py:_mask_scale: one argparse type per flag and range.
def _risk(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"risk must be an integer 0..100, got {text!r}") from None
    if not 0 <= v <= 100:
        raise argparse.ArgumentTypeError(f"risk must be 0..100, got {v}")
    return v


def _attr(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"attribute must be key=value, got {text!r}")
    return k.strip(), v


def _register_registry(sub: Sub) -> None:  # type: ignore[valid-type]
    p = sub.add_parser("register", help="register a subject: de-identify, encrypt, write to the ledger")
    _identity_options(p)
    p.add_argument("--risk", type=_risk, required=True, help="risk 0..100")
    p.add_argument("--suspect", action="store_true", help="the subject is a suspect (criminal intent)")
    p.add_argument("--photo", type=Path, action="append", default=[],
                   help="face photo showing only the subject (repeat for several)")
    p.add_argument("--no-photo", action="store_true", help="register documentary data without a face template")
    p.add_argument("--attr", type=_attr, action="append", default=[], help="extra attribute key=value (encrypted)")
    p.add_argument("--model-dir", type=Path, default=None, help="face model cache directory")
    _ledger_options(p)
    _keys_dir_option(p)
    p.set_defaults(func=_cmd_register)

    # Same shape as the other blocks of ledger/ops/manager_cli.py:_register_registry: one subcommand each.
    p = sub.add_parser("search", help="search by raw identity: same de-identification, decrypted record out")
    _identity_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _ledger_options(p)
    _keys_dir_option(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("update-risk", help="change a registered subject's risk and/or suspect flag")
    _identity_options(p)
    p.add_argument("--risk", type=_risk, default=None, help="new risk 0..100")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--suspect", dest="suspect", action="store_true", default=None)
    g.add_argument("--not-suspect", dest="suspect", action="store_false")
    _ledger_options(p)
    _keys_dir_option(p)
    p.set_defaults(func=_cmd_update)

    p = sub.add_parser("erase", help="erase a subject: erasure transaction + every node deletes its data key")
    _identity_options(p)
    _ledger_options(p)
    _keys_dir_option(p)
    p.set_defaults(func=_cmd_erase)

    p = sub.add_parser("rewrap", help="move every live record to the active key-encryption key")
    p.add_argument("--check", action="store_true", help="only count records wrapped under an old KEK")
    _ledger_options(p)
    _keys_dir_option(p)
    p.set_defaults(func=_cmd_rewrap)

    p = sub.add_parser("anchor", help="audit anchors on the ledger (pipeline role)")
    asub = p.add_subparsers(dest="anchor_command", metavar="ACTION")
    asub.required = True
    q = asub.add_parser("submit", help="anchor a Merkle root of a camera's audit window")
    q.add_argument("--camera", required=True)
    q.add_argument("--start-us", type=int, required=True)
    q.add_argument("--end-us", type=int, required=True)
    q.add_argument("--count", type=int, required=True, help="number of audit records")
    q.add_argument("--root", required=True, help="Merkle root, 64 hex digits")
    _ledger_options(q, "pipeline")
    q.set_defaults(func=_cmd_anchor_submit)
    q = asub.add_parser("proof", help="print an anchor's inclusion proof (verified against its block)")
    q.add_argument("tx_hash")
    _ledger_options(q, "auditor")
    q.set_defaults(func=_cmd_anchor_proof)


def _client(args: argparse.Namespace, role: str = "manager", need_keyring: bool = True) -> RegistryClient:
    d = (args.ledger_dir or default_dir()).expanduser()
    return RegistryClient.from_dir(d, role, getattr(args, "keys_dir", None), args.key, need_keyring)


def _identity(args: argparse.Namespace) -> privacy.Identity:
    ident = privacy.Identity(args.name, args.birth_date, args.id_number)
    try:
        privacy.canonical_identity(ident)  # validate before anything else happens
    except privacy.PrivacyError as exc:
        raise UserError(str(exc)) from None
    return ident


def _run(fn, *a, **kw):
    """Map registry/privacy refusals to one-line user errors."""
    try:
        return fn(*a, **kw)
    except (RegistryError, privacy.PrivacyError, payloads.PayloadError) as exc:
        raise UserError(str(exc)) from None


def _with_client(args: argparse.Namespace, call: Callable[[RegistryClient], Any], role: str = "manager",
                 need_keyring: bool = True) -> Any:
    """``call(client)`` through :func:`_run` on a client of ``args``, closed afterwards."""
    client = _client(args, role, need_keyring)
    try:
        return _run(call, client)
    finally:
        client.close()


def _cmd_register(args: argparse.Namespace) -> int:
    ident = _identity(args)
    if not args.photo and not args.no_photo:
        raise UserError("give at least one --photo of the subject (or --no-photo for documentary data only)")
    if args.photo and args.no_photo:
        raise UserError("--photo and --no-photo exclude each other")
    attrs = dict(args.attr)
    try:
        record = privacy.SubjectRecord.make(args.risk, args.suspect, [], attrs)  # validate cheaply first
    except privacy.PrivacyError as exc:
        raise UserError(str(exc)) from None
    client = _client(args)
    try:
        templates = _embedder(args)(args.photo, args.model_dir) if args.photo else []
        record = _run(privacy.SubjectRecord.make, args.risk, args.suspect, templates, attrs, time.time_ns() // 1000)
        res = _run(client.register, ident, record)
    finally:
        client.close()
    print(f"registered subject {res.pseudonym.hex()[:16]} version {res.version} at height {res.height} "
          f"({len(record.templates)} face template(s))")
    return 0


def _embedder(args: argparse.Namespace) -> FaceEmbedder:
    embed = getattr(args, "face_templates", None)
    if embed is None:
        raise UserError("registering photos needs the face models: run it as 'riskmask register'")
    return embed


def _print_record(res: SearchResult, as_json: bool) -> None:
    out: dict[str, Any] = {"status": res.status, "pseudonym": res.pseudonym.hex()}
    if res.status != "unknown":
        out.update(version=res.version, height=res.height)
    if res.record is not None:
        out.update(risk=res.record.risk, suspect=res.record.suspect, templates=len(res.record.templates),
                   attributes=dict(res.record.attributes), updated_us=res.record.updated_us)
    if as_json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    elif res.status == "live":
        print(f"subject {out['pseudonym'][:16]} version {res.version} (height {res.height}): risk {out['risk']}, "
              f"suspect {'yes' if out['suspect'] else 'no'}, {out['templates']} face template(s), "
              f"attributes {json.dumps(out['attributes'], ensure_ascii=False)}")
    else:
        print(f"subject {out['pseudonym'][:16]}: {res.status}")


def _cmd_search(args: argparse.Namespace) -> int:
    ident = _identity(args)
    res = _with_client(args, lambda c: c.search(ident))
    _print_record(res, args.json)
    return 0 if res.status == "live" else 1


def _cmd_update(args: argparse.Namespace) -> int:
    ident = _identity(args)
    if args.risk is None and args.suspect is None:
        raise UserError("nothing to update: give --risk and/or --suspect/--not-suspect")
    res = _with_client(args, lambda c: c.update(ident, args.risk, args.suspect))
    print(f"updated subject {res.pseudonym.hex()[:16]} to version {res.version} at height {res.height}")
    return 0


def _cmd_erase(args: argparse.Namespace) -> int:
    ident = _identity(args)
    res = _with_client(args, lambda c: c.erase(ident))
    print(f"erased subject {res.pseudonym.hex()[:16]} at height {res.height}: data keys deleted on every node")
    return 0


def _cmd_rewrap(args: argparse.Namespace) -> int:
    stale, done = _with_client(args, lambda c: c.rewrap(args.check))
    print(f"{stale} record(s) under an old key-encryption key" + ("" if args.check else f", {done} rewrapped"))
    return 1 if args.check and stale else 0


def _cmd_anchor_submit(args: argparse.Namespace) -> int:
    try:
        anchor = AnchorTx(camera_id=args.camera, window_start_us=args.start_us, window_end_us=args.end_us,
                          record_count=args.count, merkle_root=bytes.fromhex(args.root))
        anchor.validate()
    except (ValueError, payloads.PayloadError) as exc:
        raise UserError(f"invalid anchor: {exc}") from None
    h, height = _with_client(args, lambda c: c.submit_anchor(anchor), "pipeline", need_keyring=False)
    print(f"anchor {h} committed at height {height}")
    return 0


def _cmd_anchor_proof(args: argparse.Namespace) -> int:
    if len(args.tx_hash) != 64:
        raise UserError("transaction hash must be 64 hex digits")
    st = _with_client(args, lambda c: c.anchor_proof(args.tx_hash.lower()), "auditor", need_keyring=False)
    print(json.dumps(st, indent=2))
    return 0
