"""``riskmask audit manifest MANIFEST``: check an offline redaction manifest against the files it names.

``riskmask redact --manifest M.json`` records, per file, the SHA-256 of input and output, the frame count and the
faces masked per frame, with the policy and detector used (format: docs/redact.md). This check re-hashes every
output (and every input that is present), re-counts the frames of each output video, and checks that the manifest
is consistent with itself. The first problem found is named; exit 0 = PASS, 1 = FAIL, 2 = unreadable manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from riskmask.errors import UserError

logger = logging.getLogger(__name__)

FORMAT = "riskmask.redaction-manifest"
VERSIONS = {1}
MAX_MANIFEST_BYTES = 64 << 20


# Same shape as pipelines/video_io.py:TranscodeResult, pipelines/redact.py:RedactStats and
# ledger/audit/decisions.py:DecisionStats: each command's own tally; the ledger imports no pipelines.
class ManifestError(ValueError):
    """The manifest cannot be read or is not a redaction manifest."""


@dataclass
class ManifestReport:
    files: int = 0
    frames: int = 0
    faces: int = 0
    inputs_checked: int = 0
    failure: Optional[str] = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "verdict": "PASS" if self.ok else "FAIL", "files": self.files, "frames": self.frames,
                "faces": self.faces, "inputs_checked": self.inputs_checked, "first_problem": self.failure,
                "warnings": self.warnings}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {path} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a redaction manifest (format {FORMAT!r} expected)")
    if doc.get("version") not in VERSIONS:
        raise ManifestError(f"{path}: manifest version {doc.get('version')!r} is not supported")
    if not isinstance(doc.get("files"), list):
        raise ManifestError(f"{path}: 'files' must be a list")
    return doc


def _resolve(name: Any, bases: list[Path]) -> Optional[Path]:
    if not isinstance(name, str) or not name:
        return None
    p = Path(name)
    if p.is_absolute():
        return p
    for b in bases:
        if (b / p).exists():
            return b / p
    return bases[0] / p


def _video_frames(path: Path) -> int:
    import av  # deferred: loads av, which only this path needs

    with av.open(str(path)) as c:
        if not c.streams.video:
            return 0
        return sum(1 for _ in c.demux(video=0) if _.size)


def _check_entry(i: int, e: Any, bases: list[Path], require_inputs: bool, rep: ManifestReport) -> Optional[str]:
    if not isinstance(e, dict):
        return f"file #{i}: entry is not an object"
    kind, frames, fpf = e.get("kind"), e.get("frames"), e.get("faces_per_frame")
    if kind not in ("image", "video"):
        return f"file #{i}: unknown kind {kind!r}"
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        return f"file #{i}: frames must be a positive integer"
    if not isinstance(fpf, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in fpf):
        return f"file #{i}: faces_per_frame must be a list of non-negative integers"
    if len(fpf) != frames:
        return f"file #{i}: {len(fpf)} faces_per_frame entries for {frames} frame(s)"
    if e.get("faces", sum(fpf)) != sum(fpf):
        return f"file #{i}: faces total {e.get('faces')} differs from the per-frame sum {sum(fpf)}"
    degraded = e.get("degraded_frames", [])
    if not isinstance(degraded, list) or any(not isinstance(d, int) or not 0 <= d < frames for d in degraded):
        return f"file #{i}: degraded_frames out of range"
    if kind == "image" and frames != 1:
        return f"file #{i}: an image has exactly one frame"
    out = _resolve(e.get("output"), bases)
    if out is None:
        return f"file #{i}: no output path"
    if not out.is_file():
        return f"file #{i} ({out.name}): output file is missing"
    if sha256_file(out) != e.get("output_sha256"):
        return f"file #{i} ({out.name}): output SHA-256 differs from the manifest (changed after redaction)"
    if kind == "video":
        try:
            n = _video_frames(out)
        except Exception as exc:  # noqa: BLE001 - any decoder error is a finding, not a crash
            return f"file #{i} ({out.name}): output video cannot be read ({type(exc).__name__})"
        if n != frames:
            return f"file #{i} ({out.name}): output video has {n} frame(s), the manifest says {frames}"
    src = _resolve(e.get("input"), bases)
    if src is not None and src.is_file():
        if sha256_file(src) != e.get("input_sha256"):
            return f"file #{i} ({src.name}): input SHA-256 differs from the manifest (not the redacted original)"
        rep.inputs_checked += 1
    elif require_inputs:
        return f"file #{i}: input {e.get('input')!r} is not available"
    else:
        rep.warnings.append(f"file #{i}: input {e.get('input')!r} not available; its hash was not re-checked")
    rep.frames += frames
    rep.faces += sum(fpf)
    return None


def verify(path: Path, base: Optional[Path] = None, require_inputs: bool = False) -> ManifestReport:
    """Check the manifest at ``path``; relative file names resolve against ``base``, the manifest's folder, then
    the working directory."""
    doc = load(path)
    bases = [b for b in (base, path.resolve().parent, Path.cwd()) if b is not None]
    rep = ManifestReport()
    for k in ("policy_id",):
        if not isinstance(doc.get(k), str) or not doc[k]:
            rep.failure = f"manifest has no {k}"
            return rep
    if not isinstance(doc.get("detector"), dict) or not doc["detector"].get("id"):
        rep.failure = "manifest names no detector"
        return rep
    if not doc["files"]:
        rep.failure = "manifest lists no files"
        return rep
    for i, e in enumerate(doc["files"]):
        problem = _check_entry(i, e, bases, require_inputs, rep)
        if problem is not None:
            rep.failure = problem
            return rep
        rep.files += 1
    return rep


def _cmd_manifest(args: Any) -> int:
    try:
        rep = verify(Path(args.manifest), Path(args.base) if args.base else None, args.require_inputs)
    except ManifestError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(rep.to_json(), indent=2))
    else:
        verdict = "PASS" if rep.ok else "FAIL"
        print(f"{verdict}: {rep.files} file(s), {rep.frames} frame(s), {rep.faces} face(s) masked, "
              f"{rep.inputs_checked} input(s) re-hashed" + (f"; FIRST PROBLEM: {rep.failure}" if rep.failure else ""))
        for w in rep.warnings[:10]:
            print(f"  warning: {w}")
    return 0 if rep.ok else 1


def add_manifest_command(asub: Any) -> None:
    """Add ``riskmask audit manifest`` to the audit subcommands."""
    q = asub.add_parser("manifest", help="check a 'riskmask redact --manifest' file against the files it names")
    q.add_argument("manifest", help="the manifest JSON")
    q.add_argument("--base", default=None, help="folder that relative file names are relative to")
    q.add_argument("--require-inputs", action="store_true",
                   help="fail when an original input is not available to re-hash (default: warn)")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=_cmd_manifest)
