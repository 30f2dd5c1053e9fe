"""Avro single-object encoding for riskmask messages.

Every message is framed as ``0xC3 0x01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's parsing canonical form + the Avro binary body (Avro 1.10 spec, "single object encoding"). The
fingerprint lets a reader refuse a message of another schema before it parses a byte of the body.

Schemas are read from the ``*.avsc`` files beside this module once per process, on first use (no work at
import time), and cross-file named types (e.g. ``riskmask.v1.FaceDecision``) are inlined so that each
schema is self-contained and its fingerprint is stable.

Earlier versions of a schema live in ``history/<file>.v<N>.avsc``: messages written with one of them (found by
fingerprint) are still read, projected onto the current schema with defaults for the fields they lack, so a
topic written before an upgrade stays readable after it.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import struct
from pathlib import Path
from typing import Any, Mapping

import fastavro
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

SCHEMA_DIR = Path(__file__).resolve().parent
HISTORY_DIR = SCHEMA_DIR / "history"
MAGIC = b"\xc3\x01"
HEADER_LEN = 10
# Hard limit on a single decoded message: a 4K JPEG is ~2 MB; anything far above is hostile or a mistake.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class SchemaError(ValueError):
    """A message could not be encoded or decoded: garbage, truncated, foreign schema or invalid datum."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _raw_schemas() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out[f"{doc['namespace']}.{doc['name']}"] = doc
    return out


def _inline(node: Any, raw: Mapping[str, dict[str, Any]], seen: set[str]) -> Any:
    """Replace references to schemas defined in other files by their definition (first use only)."""
    if isinstance(node, str):
        if node in raw and node not in seen:
            seen.add(node)
            return _inline(copy.deepcopy(raw[node]), raw, seen)
        return node
    if isinstance(node, list):
        return [_inline(n, raw, seen) for n in node]
    if isinstance(node, dict):
        if node.get("type") == "record":
            ns = node.get("namespace")
            full = node["name"] if "." in node["name"] or not ns else f"{ns}.{node['name']}"
            seen.add(full)
        return {k: (_inline(v, raw, seen) if k in ("type", "items", "values", "fields") else v)
                for k, v in node.items()}
    return node


@functools.lru_cache(maxsize=None)
def _catalog() -> dict[str, tuple[Any, bytes]]:
    """full name -> (parsed schema, fingerprint); and fingerprint hex -> name, for lookups."""
    raw = _raw_schemas()
    out: dict[str, tuple[Any, bytes]] = {}
    for name, doc in raw.items():
        full = _inline(copy.deepcopy(doc), raw, set())
        parsed = fastavro.parse_schema(full)
        out[name] = (parsed, _fingerprint_of(parsed))
    return out


@functools.lru_cache(maxsize=None)
def _history() -> dict[str, dict[bytes, Any]]:
    """full name -> {fingerprint: parsed schema} of the earlier versions kept in ``history/``."""
    raw = _raw_schemas()
    out: dict[str, dict[bytes, Any]] = {}
    for path in sorted(HISTORY_DIR.glob("*.avsc")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        parsed = fastavro.parse_schema(_inline(doc, raw, set()))
        out.setdefault(f"{doc['namespace']}.{doc['name']}", {})[_fingerprint_of(parsed)] = parsed
    return out


def _fingerprint_of(parsed: Any) -> bytes:
    canonical = to_parsing_canonical_form(parsed)
    return int(_fastavro_fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")


def _resolve(name: str) -> str:
    if "." not in name:
        name = f"riskmask.v1.{name}"
    if name not in _catalog():
        raise SchemaError("unknown_schema", name)
    return name


def schema_names() -> list[str]:
    """Full names of every schema shipped in schemas/."""
    return sorted(_catalog())


def load_schema(name: str) -> Any:
    """The parsed (self-contained) schema for a full or short name, e.g. ``CameraFrame``."""
    return _catalog()[_resolve(name)][0]


def fingerprint(name: str) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint used in the single-object header."""
    return _catalog()[_resolve(name)][1]


def _short(text: str, limit: int = 240) -> str:
    """Error details quote the offending value, which may be image bytes or personal data: keep them short."""
    return text if len(text) <= limit else text[:limit] + "..."


def encode(name: str, datum: Mapping[str, Any]) -> bytes:
    """Encode ``datum`` as an Avro single-object message of schema ``name``."""
    parsed, fp = _catalog()[_resolve(name)]
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(fp)
    try:
        record = dict(datum)
        # validate() range-checks ints and floats (the writer alone would silently write 2**31 into an "int");
        # strict_allow_default: fields with a default may be left out, unknown fields are refused.
        validate(record, parsed, raise_errors=True)
        fastavro.schemaless_writer(buf, parsed, record, strict_allow_default=True)
    except ValidationError as exc:
        raise SchemaError("invalid_datum", _short(f"{name}: {'; '.join(map(str, exc.errors))}")) from None
    except (ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
        raise SchemaError("invalid_datum", _short(f"{name}: {exc}")) from None
    if buf.tell() > MAX_MESSAGE_BYTES:  # decode() refuses these; never produce what no reader accepts
        raise SchemaError("oversized", f"{name}: {buf.tell()} bytes > {MAX_MESSAGE_BYTES}")
    return buf.getvalue()


def peek_fingerprint(data: bytes) -> bytes:
    """Fingerprint of a framed message, or SchemaError if it is not single-object encoded."""
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        raise SchemaError("not_avro", "missing single-object header")
    return bytes(data[2:HEADER_LEN])


def decode(name: str, data: bytes, reader_schema: Any = None,
           writer_schemas: Mapping[bytes, Any] | None = None) -> dict[str, Any]:
    """Decode a single-object message expected to be of schema ``name``.

    ``reader_schema`` (parsed or a plain schema dict) enables schema evolution: the message is read with the
    writer schema named by its fingerprint (this process's schema, one of ``writer_schemas``, or the reader
    schema itself) and projected onto the reader schema (added fields take their defaults). Without a reader
    schema the result has the shape of this process's schema. ``writer_schemas`` adds other writer versions
    by fingerprint. Every failure raises SchemaError.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SchemaError("not_bytes", type(data).__name__)
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise SchemaError("oversized", f"{len(data)} bytes > {MAX_MESSAGE_BYTES}")
    fp = peek_fingerprint(data)
    parsed, own_fp = _catalog()[_resolve(name)]
    if reader_schema is not None and not (isinstance(reader_schema, dict)
                                          and reader_schema.get("__fastavro_parsed")):
        try:
            reader_schema = fastavro.parse_schema(reader_schema)
        except Exception as exc:  # fastavro raises SchemaParseException, KeyError, TypeError...
            raise SchemaError("bad_reader_schema", f"{type(exc).__name__}: {exc}") from None
    if fp == own_fp:
        writer = parsed
    elif writer_schemas and fp in writer_schemas:
        writer = writer_schemas[fp]
    elif fp in _history().get(_resolve(name), {}):
        writer = _history()[_resolve(name)][fp]  # an earlier version of this schema
    elif reader_schema is not None and fp == _fingerprint_of(reader_schema):
        writer = reader_schema  # written by the same (newer) version the caller reads with
    else:
        raise SchemaError("foreign_schema", f"fingerprint {fp.hex()} is not {name}")
    # Without an explicit reader schema, project onto this process's schema: an older writer's message then
    # comes out in the current shape, with defaults for the fields it lacks.
    reader = reader_schema if reader_schema is not None else parsed
    buf = io.BytesIO(data)
    buf.seek(HEADER_LEN)
    try:
        out = fastavro.schemaless_reader(buf, writer, reader)
    except Exception as exc:  # fastavro raises many types on garbage (EOFError, ValueError, IndexError...)
        raise SchemaError("corrupt", f"{name}: {type(exc).__name__}") from None
    if buf.tell() != len(data):
        raise SchemaError("trailing_bytes", f"{len(data) - buf.tell()} bytes after the datum")
    return out


def decode_as_written(name: str, data: bytes) -> tuple[dict[str, Any], Any]:
    """(datum, writer schema) of a message of ``name`` read with its writer's own schema (this version's or one
    in ``history/``), without projecting it onto the current shape. Used where the exact bytes a writer
    produced matter, e.g. to re-derive the Merkle leaves of audit records written by an earlier version."""
    data = bytes(data)
    fp = peek_fingerprint(data)
    full = _resolve(name)
    parsed, own_fp = _catalog()[full]
    writer = parsed if fp == own_fp else _history().get(full, {}).get(fp)
    if writer is None:
        raise SchemaError("foreign_schema", f"fingerprint {fp.hex()} is not {name}")
    buf = io.BytesIO(data)
    buf.seek(HEADER_LEN)
    try:
        out = fastavro.schemaless_reader(buf, writer, writer)
    except Exception as exc:  # garbage: same contract as decode()
        raise SchemaError("corrupt", f"{name}: {type(exc).__name__}") from None
    if buf.tell() != len(data):
        raise SchemaError("trailing_bytes", f"{len(data) - buf.tell()} bytes after the datum")
    return out, writer


def encode_with_schema(schema: Any, datum: Mapping[str, Any]) -> bytes:
    """Single-object encoding of ``datum`` with an explicit (e.g. historical or nested) record schema."""
    parsed = schema if isinstance(schema, dict) and schema.get("__fastavro_parsed") else fastavro.parse_schema(schema)
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(_fingerprint_of(parsed))
    try:
        fastavro.schemaless_writer(buf, parsed, dict(datum))
    except (ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
        raise SchemaError("invalid_datum", _short(str(exc))) from None
    return buf.getvalue()
