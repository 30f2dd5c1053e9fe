"""Avro schemas (the single source of truth for every message) and their serde helpers."""

from schemas.serde import SchemaError, decode, encode, fingerprint, load_schema, schema_names

__all__ = ["SchemaError", "decode", "encode", "fingerprint", "load_schema", "schema_names"]
