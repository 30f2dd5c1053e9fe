"""Offline auditor: verifies exported ledger blocks (and audit blocks) with nothing but the genesis file.

:class:`LedgerVerifier` is fed :class:`schemas.messages.LedgerBlock` messages in topic order and checks, per
block: the canonical header (decode -> encode byte-identical), chain id, contiguous heights from 1 (no gap,
no reordering; a second copy at a seen height is skipped only when its message is byte-identical to the
verified one, as an at-least-once export writes it; any other block there is a fork or tampering), the block
hash, the hash chain (height 1 links to the genesis hash), the validator-set
hash, non-decreasing time, every transaction (canonical, hash, kind, signature), the RFC 6962 transaction
root and count, and the commit certificate: at least 2f+1 distinct signers, each a genesis validator, all of
one round, every precommit signature valid. Anchor transactions are decoded and indexed.

:class:`AuditChainVerifier` checks ``audit.blocks`` per camera (contiguous indexes, prev-hash chain, Merkle
root recomputed over the records) and that every anchored audit block matches its ledger anchor.

The first failure stops verification and names the block (height and topic offset).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ledger.audit import blocks as audit_blocks
from ledger.audit.manifest import add_manifest_command
from ledger.config import SUBMIT_KINDS, ClientRegistry, ConfigError, Genesis
from ledger.ops import exporter
from ledger.ops.cluster import default_dir
from ledger.registry import kinds as tx_kinds, payloads
from ledger.registry.payloads import AnchorTx, PayloadError
from ledger.types import crypto, merkle
from ledger.types.block import PRECOMMIT, TX_KIND_NAMES, BlockHeader, Evidence, Transaction, Vote, validator_set_hash
from riskmask.errors import UserError
from schemas.messages import AuditBlock, LedgerBlock

logger = logging.getLogger(__name__)



class BlockInvalid(Exception):
    """Verification failed at one block; ``where`` names it (height and/or offset)."""

    def __init__(self, where: str, reason: str, height: Optional[int] = None) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason
        self.height = height


def kind_name(kind: int) -> str:
    return TX_KIND_NAMES.get(kind, f"kind{kind}")


@dataclass
class AnchorRecord:
    height: int
    tx_hash: bytes
    anchor: AnchorTx


# Same shape as infra/console/feed.py:CameraStats, ledger/consensus/events.py:ConsensusParams: unrelated fields.
@dataclass
class AuditReport:
    """What was verified, for the summary; ``failure`` is None when everything is intact."""

    chain_id: str
    blocks: int = 0
    txs: int = 0
    first_height: int = 0
    last_height: int = 0
    tip_hash: bytes = b""
    duplicates: int = 0
    kinds: Counter = field(default_factory=Counter)
    signers: Counter = field(default_factory=Counter)
    evidence: Counter = field(default_factory=Counter)  # validator index -> verified misbehaviour records
    anchors: int = 0
    opaque_anchors: int = 0
    audit_blocks: int = 0
    audit_cameras: int = 0
    anchored_audit_blocks: int = 0
    unanchored_audit_blocks: int = 0
    roles_checked: Optional[int] = None  # transactions whose sender's role was checked; None: no registry given
    warnings: list[str] = field(default_factory=list)
    failure: Optional[BlockInvalid] = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def summary(self) -> str:
        lines = [f"chain {self.chain_id}: {'INTACT' if self.ok else 'FAILED'}"]
        if self.blocks:
            lines.append(f"  blocks {self.first_height}..{self.last_height} ({self.blocks} verified, "
                         f"{self.duplicates} exact duplicates skipped), tip {self.tip_hash.hex()[:16]}")
        else:
            lines.append("  no blocks")
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items())) or "none"
        lines.append(f"  transactions {self.txs} ({kinds})")
        if self.signers:
            lines.append("  commit signatures per validator: "
                         + ", ".join(f"v{k}={v}" for k, v in sorted(self.signers.items())))
        if self.evidence:
            lines.append("  misbehaviour evidence (verified): "
                         + ", ".join(f"v{k} x{v}" for k, v in sorted(self.evidence.items())))
        lines.append("  senders' roles not checked (no client registry given)" if self.roles_checked is None else
                     f"  senders' roles checked against the client registry: {self.roles_checked} transaction(s)")
        lines.append(f"  anchors {self.anchors}" + (f" (+{self.opaque_anchors} anchor-kind txs without a registry "
                                                     "anchor payload)" if self.opaque_anchors else ""))
        if self.audit_blocks:
            lines.append(f"  audit blocks {self.audit_blocks} over {self.audit_cameras} camera(s): "
                         f"{self.anchored_audit_blocks} anchored, {self.unanchored_audit_blocks} not anchored yet")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        if self.failure is not None:
            lines.append(f"  FIRST BAD BLOCK: {self.failure}")
        return "\n".join(lines)


class LedgerVerifier:
    """Stateful verifier of a ledger block stream (feed blocks in topic order)."""

    def __init__(self, genesis: Genesis, verifier: Optional[Callable[[bytes, bytes, bytes], bool]] = None,
                 clients: Optional[ClientRegistry] = None) -> None:
        """``clients``: the client registry (public keys and roles); when given, every transaction's sender
        must be a validator or a registered client whose role may submit that kind (as nodes enforce)."""
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.keys = genesis.public_keys()
        self.quorum = genesis.quorum
        self.genesis_hash = genesis.hash()
        self.validators_hash = validator_set_hash(self.keys)
        self.verify_sig = verifier or crypto.CachingVerifier()
        self.clients = clients.with_validators(genesis) if clients is not None else None
        self.height = 0
        self.last_hash = self.genesis_hash
        self.last_time = 0
        self.hashes: dict[int, bytes] = {}
        self.digests: dict[int, bytes] = {}  # height -> SHA-256 of the verified message's encoding
        self.anchors: dict[bytes, AnchorRecord] = {}
        self.report = AuditReport(chain_id=self.chain_id, roles_checked=0 if clients is not None else None)

    def feed_bytes(self, data: bytes, offset: Optional[int] = None) -> None:
        where = f"message at offset {offset}" if offset is not None else "message"
        try:
            msg = LedgerBlock.from_bytes(data)
        except Exception as exc:  # SchemaError or a field error: the message itself is damaged
            raise BlockInvalid(where, f"undecodable LedgerBlock ({type(exc).__name__}: {exc})") from None
        self.feed(msg, offset)

    def feed(self, msg: LedgerBlock, offset: Optional[int] = None) -> None:
        """Verify one block; raises :class:`BlockInvalid` naming it."""
        where = f"block {msg.height}" + (f" (offset {offset})" if offset is not None else "")
        try:
            self._feed(msg, where)
        except BlockInvalid:
            raise
        except Exception as exc:  # any decode/validation error of the core types names this block
            raise BlockInvalid(where, f"{type(exc).__name__}: {exc}", msg.height) from None

    def _fail(self, where: str, reason: str, height: int) -> BlockInvalid:
        return BlockInvalid(where, reason, height)

    def _feed(self, msg: LedgerBlock, where: str) -> None:
        h = msg.height
        if msg.chain_id != self.chain_id:
            raise self._fail(where, f"chain id {msg.chain_id!r} is not the genesis chain {self.chain_id!r}", h)
        if h in self.hashes and h <= self.height:
            if self.digests[h] == crypto.sha256(msg.to_bytes()):
                self.report.duplicates += 1
                return
            if self.hashes[h] == msg.block_hash:
                raise self._fail(where, f"a second copy of block {h} is not byte-identical to the verified one "
                                        "(certificate, transactions or evidence differ)", h)
            raise self._fail(where, f"a different block at already verified height {h} (fork or tampering)", h)
        if h != self.height + 1:
            raise self._fail(where, f"expected height {self.height + 1} next, found {h} "
                                    f"({'gap: blocks missing' if h > self.height + 1 else 'out of order'})", h)
        # The decoders accept only canonical bytes (decode(b).encode() == b for every accepted b, fuzzed in
        # bench/fuzz_decoders.py): no separate re-encoding check, test_non_canonical_encodings_refused.
        header = BlockHeader.decode(msg.header)
        if crypto.sha256(msg.header) != msg.block_hash or header.hash() != msg.block_hash:
            raise self._fail(where, "block hash does not match the header", h)
        if header.chain_id != self.chain_id:
            raise self._fail(where, f"header chain id {header.chain_id!r} differs from genesis", h)
        if header.height != h:
            raise self._fail(where, f"header height {header.height} differs from the message height", h)
        if header.prev_hash != self.last_hash:
            raise self._fail(where, "prev_hash does not link to the previous block"
                             + (" (genesis hash)" if h == 1 else ""), h)
        if header.validators_hash != self.validators_hash:
            raise self._fail(where, "validators hash is not the genesis validator set", h)
        if header.timestamp_ms < self.last_time:
            raise self._fail(where, "block time goes backwards", h)
        # transactions and their Merkle root
        bodies = []
        for i, ltx in enumerate(msg.txs):
            tx = Transaction.decode(ltx.body)  # canonical only (see the header above)
            if tx.hash() != ltx.tx_hash:
                raise self._fail(where, f"tx {i} hash does not match its body", h)
            if kind_name(tx.kind) != ltx.kind:
                raise self._fail(where, f"tx {i} labelled {ltx.kind!r} but is {kind_name(tx.kind)!r}", h)
            if not tx.verify_signature(self.chain_id):
                raise self._fail(where, f"tx {i} signature is invalid", h)
            if self.clients is not None:
                self._check_role(tx.sender, kind_name(tx.kind), where, i, h)
            kind_error = tx_kinds.check(tx.kind, tx.payload)  # the kinds table: a kind carries only its own op
            if kind_error is not None:
                raise self._fail(where, f"tx {i} breaks the transaction kinds table: {kind_error}", h)
            if tx.kind == payloads.OP_ANCHOR:
                # A committed anchor-kind tx whose payload is not a registry anchor is not tampering (its
                # signature and the certificate cover it) but it anchors nothing: counted, not indexed.
                try:
                    anchor = payloads.decode(tx.payload)
                except PayloadError:
                    anchor = None
                if isinstance(anchor, AnchorTx):
                    self.anchors[ltx.tx_hash] = AnchorRecord(h, ltx.tx_hash, anchor)
                else:
                    self.report.opaque_anchors += 1
            bodies.append(ltx.body)
        if header.num_txs != len(bodies):
            raise self._fail(where, f"header counts {header.num_txs} txs, block carries {len(bodies)}", h)
        if merkle.merkle_root(bodies) != header.tx_root:
            raise self._fail(where, "transaction Merkle root does not match the header", h)
        offenders = self._check_evidence(msg, header.evidence_hash, where, h)
        self._check_commit(msg, where, h)
        # accepted
        self.height, self.last_hash, self.last_time = h, msg.block_hash, header.timestamp_ms
        self.hashes[h] = msg.block_hash
        self.digests[h] = crypto.sha256(msg.to_bytes())
        r = self.report
        r.blocks += 1
        r.first_height = r.first_height or h
        r.last_height, r.tip_hash = h, msg.block_hash
        r.txs += len(msg.txs)
        r.kinds.update(t.kind for t in msg.txs)
        r.anchors = len(self.anchors)
        r.evidence.update(offenders)

    def _check_evidence(self, msg: LedgerBlock, evidence_hash: bytes, where: str, h: int) -> list[int]:
        """Re-hash the carried evidence against the header and verify each item; returns the offenders."""
        items = []
        for i, raw in enumerate(msg.evidence):
            ev = Evidence.decode(raw)  # canonical only (see LedgerVerifier._feed)
            try:
                ev.verify(self.chain_id, self.keys, self.verify_sig)
            except Exception as exc:  # ValidationError / SignatureError: a forged or malformed accusation
                raise self._fail(where, f"evidence {i} does not verify: {exc}", h) from None
            items.append(ev)
        if merkle.merkle_root(list(msg.evidence)) != evidence_hash:
            raise self._fail(where, "carried evidence does not match the header's evidence hash (evidence missing "
                                    "or altered; a block exported before evidence was carried must be re-exported)",
                             h)
        return [ev.validator for ev in items]

    def _check_role(self, sender: bytes, kind: str, where: str, i: int, h: int) -> None:
        assert self.clients is not None
        client = self.clients.lookup(sender.hex())
        if client is None:
            raise self._fail(where, f"tx {i} ({kind}) was sent by key {sender.hex()[:16]}..., which is neither a "
                                    "validator nor a registered client", h)
        if kind not in SUBMIT_KINDS.get(client.role, frozenset()):
            raise self._fail(where, f"tx {i}: role {client.role!r} may not submit {kind!r} transactions", h)
        self.report.roles_checked = (self.report.roles_checked or 0) + 1

    def _check_commit(self, msg: LedgerBlock, where: str, h: int) -> None:
        sigs = list(msg.commit)
        seen: set[int] = set()
        rounds = {c.round for c in sigs}
        if len(rounds) > 1:
            raise self._fail(where, "commit certificate mixes rounds", h)
        for c in sigs:
            if not 0 <= c.validator_index < len(self.keys):
                raise self._fail(where, f"commit signed by validator {c.validator_index}, not in genesis "
                                        f"(0..{len(self.keys) - 1})", h)
            if c.validator_index in seen:
                raise self._fail(where, f"validator {c.validator_index} appears twice in the commit certificate", h)
            seen.add(c.validator_index)
        if len(seen) < self.quorum:
            raise self._fail(where, f"commit certificate has {len(seen)} distinct signers, quorum is {self.quorum}",
                             h)
        for c in sigs:
            signed = Vote(PRECOMMIT, h, c.round, msg.block_hash, c.validator_index).signed(self.chain_id)
            if not self.verify_sig(self.keys[c.validator_index], signed, bytes(c.signature)):
                raise self._fail(where, f"invalid precommit signature of validator {c.validator_index}", h)
        self.report.signers.update(c.validator_index for c in sigs)


class AuditChainVerifier:
    """Per-camera audit block chains, their Merkle roots, and their anchors on the ledger."""

    def __init__(self, anchors: dict[bytes, AnchorRecord],
                 block_hash_fn: Optional[Callable[[AuditBlock], bytes]] = None,
                 record_leaf_fn: Optional[Callable] = None) -> None:
        self.anchors = anchors
        self.by_root: dict[tuple[str, bytes], AnchorRecord] = {
            (a.anchor.camera_id, a.anchor.merkle_root): a for a in anchors.values()}
        self.block_hash_fn = block_hash_fn
        self.record_leaf_fn = record_leaf_fn or (lambda rec: rec.to_bytes())
        self.cameras: dict[str, tuple[int, bytes]] = {}
        self.seen: dict[tuple[str, int], tuple[bytes, bytes]] = {}  # (camera, index) -> (hash, SHA-256 of message)
        self.count = self.anchored = self.unanchored = self.pending_refs = 0

    def feed(self, blk: AuditBlock, offset: Any = None) -> None:
        where = f"audit block {blk.camera_id}#{blk.index}" + (f" (offset {offset})" if offset is not None else "")
        key = (blk.camera_id, blk.index)
        if key in self.seen:
            if self.seen[key][1] == crypto.sha256(blk.to_bytes()):
                return  # at-least-once duplicate: byte-identical
            if self.seen[key][0] == blk.block_hash:
                raise BlockInvalid(where, "a second copy of this audit block is not byte-identical to the verified one")
            raise BlockInvalid(where, "a different audit block at an already seen index")
        last = self.cameras.get(blk.camera_id)
        expect_index = 0 if last is None else last[0] + 1
        expect_prev = b"\x00" * 32 if last is None else last[1]
        if blk.index != expect_index:
            raise BlockInvalid(where, f"expected index {expect_index} for camera {blk.camera_id}")
        if blk.prev_hash != expect_prev:
            raise BlockInvalid(where, "prev_hash does not link to the previous audit block")
        if blk.window_end_us < blk.window_start_us:
            raise BlockInvalid(where, "window ends before it starts")
        root = merkle.merkle_root([self.record_leaf_fn(r) for r in blk.records])
        if root != blk.merkle_root:
            raise BlockInvalid(where, "records do not hash to the block's Merkle root")
        if any(r.camera_id != blk.camera_id for r in blk.records):
            raise BlockInvalid(where, "a record of another camera inside the block")
        if self.block_hash_fn is not None and self.block_hash_fn(blk) != blk.block_hash:
            raise BlockInvalid(where, "block hash does not match its header fields")
        anchor = None
        anchor = None
        if blk.anchor_tx_hash is not None:
            anchor = self.anchors.get(blk.anchor_tx_hash)
            if anchor is None:  # submitted without waiting: not committed, or not exported yet
                self.pending_refs += 1
        if anchor is None:
            anchor = self.by_root.get((blk.camera_id, blk.merkle_root))
        if anchor is not None:
            a = anchor.anchor
            if (a.camera_id, a.merkle_root, a.record_count) != (blk.camera_id, blk.merkle_root, len(blk.records)) \
                    or (a.window_start_us, a.window_end_us) != (blk.window_start_us, blk.window_end_us):
                raise BlockInvalid(where, f"does not match its ledger anchor at height {anchor.height}")
            if a.audit_index >= 0 and (a.audit_index != blk.index or (
                    a.audit_block_hash != b"\x00" * 32 and a.audit_block_hash != blk.block_hash)):
                raise BlockInvalid(where, f"index/hash differ from its ledger anchor at height {anchor.height}")
            self.anchored += 1
        else:
            self.unanchored += 1
        self.cameras[blk.camera_id] = (blk.index, blk.block_hash)
        self.seen[key] = (blk.block_hash, crypto.sha256(blk.to_bytes()))
        self.count += 1


def verify_stream(genesis: Genesis, ledger_msgs: Iterable[tuple[Optional[int], bytes]],
                  audit_msgs: Optional[Iterable[tuple[Any, bytes]]] = None,
                  block_hash_fn: Optional[Callable[[AuditBlock], bytes]] = None,
                  clients: Optional[ClientRegistry] = None) -> AuditReport:
    """Verify a whole export; the report carries the first failure, if any. With ``clients`` every
    transaction's sender role is checked too."""
    v = LedgerVerifier(genesis, clients=clients)
    report = v.report
    try:
        for offset, data in ledger_msgs:
            v.feed_bytes(data, offset)
    except BlockInvalid as exc:
        report.failure = exc
        return report
    finally:
        _close(ledger_msgs)
    if report.blocks == 0:
        report.warnings.append("the ledger topic holds no blocks")
    if audit_msgs is not None:
        a = AuditChainVerifier(v.anchors, block_hash_fn=block_hash_fn or pipeline_block_hash())
        try:
            for offset, data in audit_msgs:
                try:
                    blk = AuditBlock.from_bytes(data)
                except Exception as exc:
                    raise BlockInvalid(f"audit message at offset {offset}", f"undecodable AuditBlock ({exc})")
                a.feed(blk, offset)
        except BlockInvalid as exc:
            report.failure = exc
        finally:
            _close(audit_msgs)
        report.audit_blocks, report.audit_cameras = a.count, len(a.cameras)
        report.anchored_audit_blocks, report.unanchored_audit_blocks = a.anchored, a.unanchored
        if a.pending_refs:
            report.warnings.append(f"{a.pending_refs} audit block(s) name an anchor transaction that is not in the "
                                   "exported ledger (not committed or not exported yet)")
    return report


# ------------------------------------------------------------------------------------------------------------
# Command line: riskmask audit verify | follow


def _close(messages: Any) -> None:
    """Close a message generator the verifier stopped reading early (e.g. at the first bad block) here, on
    this thread: left to the garbage collector, its Kafka consumer could be closed from the client's own I/O
    thread, which kafka-python refuses."""
    close = getattr(messages, "close", None)
    if callable(close):
        close()


def pipeline_block_hash() -> Callable[[AuditBlock], bytes]:
    """The audit block hash the pipeline writes (the format of :mod:`ledger.audit.blocks`)."""
    return audit_blocks.audit_block_hash


def add_commands(sub) -> None:
    p = sub.add_parser("audit", help="verify exported ledger and audit blocks offline (genesis file only)")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True
    for name, helptext in (("verify", "verify everything on the topics now; exit 0 when intact"),
                           ("follow", "verify continuously as blocks arrive; exit non-zero at the first bad one")):
        q = asub.add_parser(name, help=helptext)
        # Same shape as ledger/audit/decisions.py:add_decisions_command: the same flags, with these commands' own help.
        q.add_argument("--genesis", type=Path, default=None,
                       help="genesis.json (default: <$RISKMASK_LEDGER_DIR or ./.riskmask/ledger>/genesis.json)")
        q.add_argument("--clients", type=Path, default=None,
                       help="client registry (clients.json: public keys and roles) to check every sender's role "
                            "(default: clients.json beside the genesis file, when present)")
        q.add_argument("--bootstrap-servers", "--bootstrap", dest="bootstrap", default=None,
                       help="Kafka bootstrap servers (default: the local broker)")
        q.add_argument("--ledger-topic", default="ledger.blocks")
        q.add_argument("--audit-topic", default="audit.blocks",
                       help="audit block topic, checked when it exists ('' to skip)")
        q.add_argument("--json", action="store_true", help="print the summary as JSON")
        if name == "follow":
            q.add_argument("--idle-exit", type=float, default=None,
                           help="exit 0 after this many seconds without a new block (default: never)")
        q.set_defaults(func=_cmd_verify if name == "verify" else _cmd_follow)

    add_manifest_command(asub)
    from ledger.audit.decisions import add_decisions_command  # cycle: ledger.audit.decisions imports this module

    add_decisions_command(asub)


def _genesis(args) -> tuple[Genesis, Any]:
    """The genesis and the path it was read from."""
    path = args.genesis
    if path is None:
        path = default_dir() / "genesis.json"
    try:
        return Genesis.load(Path(path).expanduser()), path
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def _clients(args, genesis_path: Any) -> Optional[ClientRegistry]:
    path = args.clients
    if path is None:
        beside = Path(genesis_path).expanduser().parent / "clients.json"
        if not beside.is_file():
            return None
        path = beside
    try:
        return ClientRegistry.load(Path(path).expanduser())
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def _report_json(r: AuditReport) -> str:
    return json.dumps({"ok": r.ok, "chain_id": r.chain_id, "blocks": r.blocks, "first_height": r.first_height,
                       "last_height": r.last_height, "tip_hash": r.tip_hash.hex(), "duplicates": r.duplicates,
                       "txs": r.txs, "kinds": dict(r.kinds), "anchors": r.anchors, "audit_blocks": r.audit_blocks,
                       "anchored_audit_blocks": r.anchored_audit_blocks,
                       "unanchored_audit_blocks": r.unanchored_audit_blocks, "roles_checked": r.roles_checked,
                       "evidence": {str(k): v for k, v in sorted(r.evidence.items())},
                       "warnings": r.warnings,
                       "first_bad_block": None if r.failure is None else str(r.failure),
                       "first_bad_height": None if r.failure is None else r.failure.height}, indent=2)


def _cmd_verify(args) -> int:
    genesis, genesis_path = _genesis(args)
    clients = _clients(args, genesis_path)
    bootstrap = exporter.resolve_bootstrap(args.bootstrap)
    audit_msgs = None
    if args.audit_topic and exporter.topic_exists(bootstrap, args.audit_topic):
        audit_msgs = exporter.read_all_partitions(bootstrap, args.audit_topic)
    if not exporter.topic_exists(bootstrap, args.ledger_topic):
        raise UserError(f"topic {args.ledger_topic!r} does not exist at {bootstrap}")
    report = verify_stream(genesis, exporter.read_range(bootstrap, args.ledger_topic), audit_msgs,
                           clients=clients)
    print(_report_json(report) if args.json else report.summary())
    return 0 if report.ok else 1


def _cmd_follow(args) -> int:
    genesis, genesis_path = _genesis(args)
    bootstrap = exporter.resolve_bootstrap(args.bootstrap)
    v = LedgerVerifier(genesis, clients=_clients(args, genesis_path))
    blocks = exporter.follow(bootstrap, args.ledger_topic, stop_after_idle_s=args.idle_exit)
    try:
        for offset, data in blocks:
            try:
                v.feed_bytes(data, offset)
            except BlockInvalid as exc:
                v.report.failure = exc
                print(f"FAILED {exc}", flush=True)
                return 1
            r = v.report
            print(f"ok height {r.last_height} hash {r.tip_hash.hex()[:16]} txs {r.txs} anchors {r.anchors}",
                  flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        _close(blocks)
    print(v.report.summary())
    return 0 if v.report.ok else 1
