"""Audit stage: one AuditRecord per redacted frame, per-camera hash-chained AuditBlocks to audit.blocks.

Taps the output of Encode (a RedactedFrame, or the Kafka record carrying one), keys it by camera and feeds a
stateful DoFn that holds the camera's chain in Beam keyed state: the :class:`~pipelines.audit_chain.ChainHead`
(next index, last block hash, pending count and time span) and a bag of the pending records. A block is cut when ``max_records`` records are pending or the
arriving record's capture time is ``max_window_us`` past the first pending one: decided on arriving
elements, no timers (REAL_TIME timers push the local runner onto a runner without bundle finalizers).
Consequence: the last partial block of a camera that stops sending is cut only when it sends again.

Each record's per-face decisions (``OutboundMessage.decisions`` from Encode, never written to frames.redacted)
are sealed to the auditor's X25519 public key (``auditor_public_key``; from pipeline options: the
``auditor.x25519.pub`` file of ``--keys_dir``). Without that key the records carry no per-face decisions.

An optional ``anchorer`` (e.g. :class:`LedgerAnchorer`) submits each block's Merkle root to the ledger as an
anchor transaction; its hash goes into ``anchor_tx_hash``. A failed anchor leaves it null and is counted:
the block is still written, and the auditor reports it as not anchored. Output: OutboundMessage with key =
camera id, value = AuditBlock (Avro single-object), dedupe header ``camera_id/audit/index``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec

from ledger.client.keys import AUDITOR_PUB_FILE, KeyringError, default_keys_dir, load_auditor_public_key
from ledger.client.registry_client import RegistryClient
from pipelines.audit_chain import CameraChain, ChainHead, FlushRule, anchor_tx, record_from_redacted
from pipelines.config.defaults import value
from pipelines.frame import DEDUPE_HEADER, OutboundMessage
from schemas.messages import AuditBlock, AuditRecord, RedactedFrame
from schemas.serde import SchemaError

logger = logging.getLogger(__name__)

STAGE = "audit"


def to_redacted(element: Any) -> RedactedFrame:
    """The RedactedFrame in an Encode output (OutboundMessage, bytes or the frame itself)."""
    if isinstance(element, RedactedFrame):
        return element
    if isinstance(element, OutboundMessage):
        return RedactedFrame.from_bytes(element.value)
    if isinstance(element, (bytes, bytearray)):
        return RedactedFrame.from_bytes(bytes(element))
    raise TypeError(f"not a redacted frame: {type(element).__name__}")


def block_message(block: AuditBlock) -> OutboundMessage:
    """Kafka record for audit.blocks."""
    return OutboundMessage(key=block.camera_id.encode("utf-8"), value=block.to_bytes(),
                           headers=((DEDUPE_HEADER, f"{block.camera_id}/audit/{block.index}".encode("utf-8")),))


class LedgerAnchorer:
    """Submits an audit block's anchor transaction with the pipeline key; returns the tx hash (bytes).

    Picklable: the registry client is made on first use, inside the worker.
    """

    def __init__(self, ledger_dir: str, key_name: str = "pipeline", key_file: Optional[str] = None) -> None:
        self.ledger_dir, self.key_name, self.key_file = ledger_dir, key_name, key_file
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def __call__(self, block: AuditBlock) -> bytes:
        if self._client is None:
            self._client = RegistryClient.from_dir(Path(self.ledger_dir), key_name=self.key_name,
                                                   key_file=Path(self.key_file) if self.key_file else None,
                                                   need_keyring=False)
        tx_hash, _ = self._client.submit_anchor(anchor_tx(block), wait=False)
        return bytes.fromhex(tx_hash)


def anchored(block: AuditBlock, anchorer: Optional[Callable[[AuditBlock], bytes]]) -> tuple[AuditBlock, bool]:
    """The block with its anchor transaction hash, or unchanged (and False) when anchoring failed."""
    if anchorer is None:
        return block, True
    try:
        return dataclasses.replace(block, anchor_tx_hash=bytes(anchorer(block))), True
    except Exception as exc:  # noqa: BLE001 - the block must still be written; the auditor flags it
        logger.warning("anchoring audit block %s #%d failed: %s", block.camera_id, block.index,
                       type(exc).__name__)
        return block, False


class _AuditChainFn(beam.DoFn):
    """Per camera: the chain head in a small read-modify-write state, the pending records in a bag.

    Writing the whole chain (up to ``max_records`` pending records) back on every frame cost ~1.4 ms per frame
    at the default 250 records and grew with the block; a bag append writes one record. Bag order is not a Beam
    guarantee, so each record is stored with its arrival number and sealed in that order. A chain left in the
    old single ``chain`` state (a savepoint of an earlier version) is moved over on its camera's first frame.
    """

    HEAD = ReadModifyWriteStateSpec("head", PickleCoder())
    PENDING = BagStateSpec("pending", PickleCoder())
    LEGACY = ReadModifyWriteStateSpec("chain", PickleCoder())

    def __init__(self, rule: FlushRule, anchorer: Optional[Callable[[AuditBlock], bytes]]) -> None:
        self._rule = rule
        self._anchorer = anchorer
        self._blocks = Metrics.counter(STAGE, "blocks")
        self._records = Metrics.counter(STAGE, "records")
        self._anchor_failed = Metrics.counter(STAGE, "anchor_failed")

    def setup(self) -> None:
        self._migrated: set[str] = set()  # cameras whose legacy state this instance already looked at

    def _head(self, camera_id: str, head_state: Any, pending_state: Any, legacy_state: Any) -> ChainHead:
        head = head_state.read()
        if head is None and camera_id not in self._migrated:
            self._migrated.add(camera_id)
            legacy: Optional[CameraChain] = legacy_state.read()
            if legacy is not None:
                head = legacy.head()
                for n, r in enumerate(legacy.pending):
                    pending_state.add((n, r))
                legacy_state.clear()
        return head or ChainHead(camera_id, self._rule)

    def process(self, element: tuple[str, AuditRecord],
                head_state: Any = beam.DoFn.StateParam(HEAD),
                pending_state: Any = beam.DoFn.StateParam(PENDING),
                legacy_state: Any = beam.DoFn.StateParam(LEGACY)) -> Iterator[OutboundMessage]:
        camera_id, record = element
        head = self._head(camera_id, head_state, pending_state, legacy_state)
        number = head.pending
        cut = head.admit(record)
        self._records.inc()
        if not cut:
            pending_state.add((number, record))
            head_state.write(head)
            return
        records = [r for _, r in sorted(pending_state.read(), key=lambda nr: nr[0])] + [record]
        block = head.seal(records)
        pending_state.clear()
        head_state.write(head)
        block, ok = anchored(block, self._anchorer)
        if not ok:
            self._anchor_failed.inc()
        self._blocks.inc()
        yield block_message(block)


class _RecordFn(beam.DoFn):
    """Encode output -> (camera_id, AuditRecord); an unreadable element is counted and skipped (it was
    produced by this pipeline's own Encode stage, so this is a bug, not bad input)."""

    def __init__(self, auditor_public_key: Optional[bytes] = None) -> None:
        self._bad = Metrics.counter(STAGE, "unreadable")
        self._auditor_public_key = auditor_public_key

    def process(self, element: Any) -> Iterator[tuple[str, AuditRecord]]:
        try:
            decisions = element.decisions if isinstance(element, OutboundMessage) else ()
            record = record_from_redacted(to_redacted(element), decisions, self._auditor_public_key)
        except (SchemaError, TypeError) as exc:
            logger.error("audit: cannot read an encoded frame: %s", exc)
            self._bad.inc()
            return
        yield record.camera_id, record


class Audit(beam.PTransform):
    """Encode output -> OutboundMessage of AuditBlock records for audit.blocks."""

    def __init__(self, rule: FlushRule = FlushRule(),
                 anchorer: Optional[Callable[[AuditBlock], bytes]] = None,
                 auditor_public_key: Optional[bytes] = None) -> None:
        super().__init__()
        self._rule = rule
        self._anchorer = anchorer
        self._auditor_public_key = auditor_public_key
        if auditor_public_key is None:
            logger.warning("no auditor key: audit records will carry no per-face decisions "
                           "(create one with `riskmask keys auditor`)")

    def expand(self, encoded: beam.PCollection) -> beam.PCollection:
        records = (encoded | "AuditRecord" >> beam.ParDo(_RecordFn(self._auditor_public_key))
                   .with_output_types(beam.typehints.Tuple[str, AuditRecord]))
        return records | "ChainBlocks" >> beam.ParDo(_AuditChainFn(self._rule, self._anchorer))


def audit_from_options(opts: Any) -> "Audit":
    """:class:`Audit` from pipeline options (declared defaults for options not set): audit_block_records,
    audit_block_seconds, and anchor_audit_blocks with ledger_dir (anchor each block with the pipeline key)."""
    rule = FlushRule(max_records=int(value(opts, "audit_block_records")),
                     max_window_us=int(float(value(opts, "audit_block_seconds")) * 1_000_000))
    anchorer = None
    if value(opts, "anchor_audit_blocks"):
        ledger_dir = value(opts, "ledger_dir")
        if not ledger_dir:
            raise ValueError("anchoring audit blocks needs --ledger_dir")
        anchorer = LedgerAnchorer(str(ledger_dir))
    return Audit(rule, anchorer, auditor_key_from_options(opts))


def auditor_key_from_options(opts: Any) -> Optional[bytes]:
    """The auditor public key: ``auditor_public_key`` (a .pub file) if set, else ``auditor.x25519.pub`` in
    ``keys_dir`` (or the default keys directory) when present; None when there is none. A key file that
    exists but cannot be read is an error (never silently run without sealing what should be sealed)."""
    explicit = getattr(opts, "auditor_public_key", None)
    if explicit:
        path = Path(str(explicit))
    else:
        keys_dir = getattr(opts, "keys_dir", None)
        path = Path(str(keys_dir) if keys_dir else default_keys_dir()) / AUDITOR_PUB_FILE
        if not path.is_file():
            return None
    try:
        return load_auditor_public_key(path)
    except KeyringError as exc:
        raise ValueError(str(exc)) from None
