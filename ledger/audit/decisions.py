"""The auditor's view of per-face decisions: open the sealed decisions of audit records with the auditor key.

Since schema v2 the pipeline publishes no identity class, risk group, suspect flag or track id: frames.redacted
carries only the masked regions, and each :class:`~schemas.messages.AuditRecord` carries the frame's per-face
decisions sealed to the auditor's X25519 key (``sealed_faces``; ``ledger.client.privacy.seal_for_auditor``, bound
to the frame's camera/epoch/seq and image hashes). The seal is inside the record bytes, so it is covered by
the block's Merkle root and the ledger anchor: the offline audit verifies it without the key, and an auditor
with the key can open it and read what was decided about each face.

``riskmask audit decisions --auditor-key FILE`` verifies the audit chains (and, with a genesis file and the
ledger topic, the ledger and the anchors) and then lists one line per face. A record that cannot be opened
(another auditor key, tampered) fails the listing with one line naming it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from ledger.audit import verifier as audit
from ledger.client.keys import KeyringError, load_auditor_private_key
from ledger.client.privacy import DecryptionError, decisions_aad, open_for_auditor
from ledger.config import ConfigError, Genesis
from ledger.ops import exporter
from ledger.ops.cluster import default_dir
from riskmask.errors import UserError
from schemas.messages import AuditBlock, AuditRecord, FaceDecision, SealedFaces

logger = logging.getLogger(__name__)


class DecisionsError(Exception):
    """An audit record whose sealed decisions cannot be opened or read; ``where`` names it."""


def open_faces(record: AuditRecord, private_key: bytes) -> Optional[tuple[FaceDecision, ...]]:
    """The per-face decisions sealed in ``record``; None when the record carries none (no auditor key was
    configured when it was written, or it predates schema v2). DecisionsError when it cannot be opened."""
    if record.sealed_faces is None:
        return None
    where = f"{record.camera_id}/{record.epoch}/{record.seq}"
    aad = decisions_aad(record.camera_id, record.epoch, record.seq, record.raw_sha256, record.redacted_sha256)
    try:
        plain = open_for_auditor(private_key, record.sealed_faces, aad)
    except DecryptionError as exc:
        raise DecisionsError(f"record {where}: {exc}") from None
    try:
        return SealedFaces.from_bytes(plain).faces
    except Exception as exc:  # SchemaError or a field error: a sealed payload this version cannot read
        raise DecisionsError(f"record {where}: sealed decisions unreadable ({type(exc).__name__})") from None


@dataclass(frozen=True)
class Decision:
    """One face of one frame, as the auditor sees it."""

    camera_id: str
    epoch: int
    seq: int
    capture_ts_us: int
    index: int
    face: FaceDecision

    def to_dict(self) -> dict[str, Any]:
        f = self.face
        return {"camera_id": self.camera_id, "epoch": self.epoch, "seq": self.seq,
                "capture_ts_us": self.capture_ts_us, "face": self.index, "box": [f.x, f.y, f.w, f.h],
                "track_id": f.track_id, "source": f.source, "identity": f.identity, "risk_group": f.risk_group,
                "suspect": f.suspect, "mode": f.mode, "strength": round(float(f.strength), 3),
                "mask_scale": round(float(f.mask_scale), 3), "subject_ref": f.subject_ref}

    def line(self) -> str:
        f = self.face
        return (f"{self.camera_id} epoch {self.epoch} seq {self.seq} face {self.index}: box {f.x},{f.y} "
                f"{f.w}x{f.h} track {f.track_id if f.track_id is not None else '-'} {f.source} {f.identity} "
                f"group {f.risk_group}{' suspect' if f.suspect else ''} -> {f.mode} {float(f.strength):.1f}"
                + (f" ref {f.subject_ref}" if f.subject_ref else ""))


# Same shape as ledger/audit/manifest.py:ManifestReport, pipelines/redact.py:RedactStats and
# pipelines/video_io.py:TranscodeResult: each command's own tally; the ledger imports no pipelines.
@dataclass
class DecisionStats:
    records: int = 0
    sealed: int = 0
    unsealed: int = 0
    faces: int = 0


def decisions(blocks: Iterable[AuditBlock], private_key: bytes,
              stats: Optional[DecisionStats] = None) -> Iterator[Decision]:
    """Every face decision in ``blocks`` (in block and record order), opened with the auditor key."""
    stats = stats if stats is not None else DecisionStats()
    for block in blocks:
        for record in block.records:
            stats.records += 1
            faces = open_faces(record, private_key)
            if faces is None:
                stats.unsealed += 1
                continue
            stats.sealed += 1
            for i, face in enumerate(faces):
                stats.faces += 1
                yield Decision(record.camera_id, record.epoch, record.seq, record.capture_ts_us, i, face)


def decisions_by_frame(blocks: Iterable[AuditBlock], private_key: bytes
                       ) -> dict[tuple[str, int, int], tuple[FaceDecision, ...]]:
    """(camera_id, epoch, seq) -> the frame's face decisions, for every record that carries sealed ones."""
    out: dict[tuple[str, int, int], tuple[FaceDecision, ...]] = {}
    for block in blocks:
        for record in block.records:
            faces = open_faces(record, private_key)
            if faces is not None:
                out[(record.camera_id, record.epoch, record.seq)] = faces
    return out


# ------------------------------------------------------------------------------------------------------------
# Command line: riskmask audit decisions


def add_decisions_command(asub: Any) -> None:
    """Add ``decisions`` to the ``riskmask audit`` sub-commands."""
    q = asub.add_parser("decisions", help="verify the audit chains, then list every face decision, opened with "
                                          "the auditor key")
    q.add_argument("--auditor-key", type=Path, required=True,
                   help="the auditor private key file (auditor.x25519, from `riskmask keys auditor`) or its "
                        "directory")
    # Same shape as ledger/audit/verifier.py:add_commands: the same flags, with this command's own help.
    q.add_argument("--genesis", type=Path, default=None,
                   help="genesis.json: also verify the ledger chain and the anchors first (default: "
                        "<$RISKMASK_LEDGER_DIR or ./.riskmask/ledger>/genesis.json when present)")
    q.add_argument("--bootstrap-servers", "--bootstrap", dest="bootstrap", default=None,
                   help="Kafka bootstrap servers (default: the local broker)")
    q.add_argument("--ledger-topic", default="ledger.blocks")
    q.add_argument("--audit-topic", default="audit.blocks")
    q.add_argument("--camera", default=None, help="only this camera")
    q.add_argument("--json", action="store_true", help="one JSON object per face")
    q.set_defaults(func=_cmd_decisions)


def _genesis_path(explicit: Any) -> Any:
    if explicit is not None:
        return Path(explicit).expanduser()

    path = default_dir() / "genesis.json"
    return path if path.is_file() else None


def _cmd_decisions(args: Any) -> int:
    try:
        key = load_auditor_private_key(args.auditor_key)
    except KeyringError as exc:
        raise UserError(str(exc)) from None
    bootstrap = exporter.resolve_bootstrap(args.bootstrap)
    if not exporter.topic_exists(bootstrap, args.audit_topic):
        raise UserError(f"topic {args.audit_topic!r} does not exist at {bootstrap}")
    genesis_path = _genesis_path(args.genesis)
    raw: list[tuple[Any, bytes]] = list(exporter.read_all_partitions(bootstrap, args.audit_topic))
    if genesis_path is not None and exporter.topic_exists(bootstrap, args.ledger_topic):
        try:
            genesis = Genesis.load(genesis_path)
        except ConfigError as exc:
            raise UserError(str(exc)) from None
        report = audit.verify_stream(genesis, exporter.read_range(bootstrap, args.ledger_topic), iter(raw))
    else:  # the audit chains alone: links, Merkle roots, block hashes (anchors need the ledger)
        report = audit.AuditReport(chain_id="(no ledger verified)")
        verifier = audit.AuditChainVerifier({}, block_hash_fn=audit.pipeline_block_hash())
        try:
            for offset, data in raw:
                try:
                    blk = AuditBlock.from_bytes(data)
                except Exception as exc:
                    raise audit.BlockInvalid(f"audit message at offset {offset}", f"undecodable AuditBlock ({exc})")
                verifier.feed(blk, offset)
        except audit.BlockInvalid as exc:
            report.failure = exc
        report.audit_blocks, report.audit_cameras = verifier.count, len(verifier.cameras)
    if not report.ok:
        print(report.summary())
        return 1
    blocks = [AuditBlock.from_bytes(data) for _, data in raw]
    if args.camera is not None:
        blocks = [b for b in blocks if b.camera_id == args.camera]
    seen: set[tuple[str, int]] = set()
    unique = []
    for b in blocks:  # at-least-once: the same block may be on the topic twice
        if (b.camera_id, b.index) not in seen:
            seen.add((b.camera_id, b.index))
            unique.append(b)
    stats = DecisionStats()
    try:
        for d in decisions(unique, key, stats):
            print(json.dumps(d.to_dict()) if args.json else d.line())
    except DecisionsError as exc:
        print(f"FAILED {exc}")
        return 1
    summary = (f"{stats.faces} face decision(s) in {stats.sealed} sealed record(s) of {len(unique)} verified "
               f"audit block(s)" + (f"; {stats.unsealed} record(s) carry no sealed decisions" if stats.unsealed
                                    else ""))
    if args.json:
        print(json.dumps({"summary": summary, "faces": stats.faces, "records": stats.records,
                          "unsealed_records": stats.unsealed}))
    else:
        print(summary)
    return 0
