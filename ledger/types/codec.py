"""Strict canonical binary encoding primitives and the ledger's hard size limits.

Big-endian fixed-width integers, u32 length prefixes for variable fields. :class:`Reader` refuses truncated
input, out-of-range lengths and (via :meth:`Reader.end`) trailing bytes, raising :class:`DecodeError` (or the
subclass a caller names, e.g. the registry's ``PayloadError``). :class:`Writer` is its encoding counterpart.
This is the one binary codec of the ledger: blocks, votes, transactions and the registry payloads
(:mod:`ledger.registry.payloads`) are all written and read with it.
"""

from __future__ import annotations

import struct
from typing import Callable, TypeVar

from ledger.errors import DecodeError

T = TypeVar("T")

MAX_TX_BYTES = 72 * 1024          # a maximal ledger.registry.payloads registry payload is just over 64 KiB
MAX_PAYLOAD_BYTES = MAX_TX_BYTES - 128
MAX_BLOCK_BYTES = 8 * 1024 * 1024
MAX_BLOCK_TXS = 20000
MAX_BLOCK_EVIDENCE = 64
MAX_EVIDENCE_BYTES = 1024         # two signed votes or proposal stubs
MAX_VALIDATORS = 64
MAX_CHAIN_ID_BYTES = 64
HASH_LEN = 32

TAG_TX = 0x10
TAG_HEADER = 0x11
TAG_BLOCK = 0x12
TAG_VOTE = 0x13
TAG_PROPOSAL = 0x14
TAG_CERT = 0x15
TAG_EVIDENCE = 0x16
TAG_PROPOSAL_STUB = 0x17

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")

U64_MAX = 2 ** 64 - 1
U32_MAX = 2 ** 32 - 1


def u8(v: int) -> bytes:
    return _U8.pack(v)


def u16(v: int) -> bytes:
    return _U16.pack(v)


def u32(v: int) -> bytes:
    return _U32.pack(v)


def u64(v: int) -> bytes:
    return _U64.pack(v)


def blob(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def chain_id_bytes(chain_id: str) -> bytes:
    raw = chain_id.encode("utf-8")
    if not 1 <= len(raw) <= MAX_CHAIN_ID_BYTES:
        raise ValueError("chain id must be 1..64 bytes of UTF-8")
    return raw


class Writer:
    """Append-only encoder matching :class:`Reader` (big-endian integers, u32 length prefixes)."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> "Writer":
        self._parts.append(bytes(data))
        return self

    def u8(self, v: int) -> "Writer":
        return self.raw(_U8.pack(v))

    def u16(self, v: int) -> "Writer":
        return self.raw(_U16.pack(v))

    def u32(self, v: int) -> "Writer":
        return self.raw(_U32.pack(v))

    def u64(self, v: int) -> "Writer":
        return self.raw(_U64.pack(v))

    def i64(self, v: int) -> "Writer":
        return self.raw(_I64.pack(v))

    def boolean(self, v: bool) -> "Writer":
        return self.u8(1 if v else 0)

    def blob(self, data: bytes) -> "Writer":
        return self.u32(len(data)).raw(data)

    def text(self, s: str) -> "Writer":
        return self.blob(s.encode("utf-8"))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Sequential strict reader over one byte string; errors are ``error`` (a :class:`DecodeError` type)."""

    __slots__ = ("data", "pos", "error")

    def __init__(self, data: bytes, error: type[DecodeError] = DecodeError) -> None:
        self.error = error
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise error("expected bytes")
        self.data = bytes(data)
        self.pos = 0

    def raw(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise self.error(f"truncated: need {n} bytes at offset {self.pos}, have {len(self.data) - self.pos}")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def _unpack(self, s: struct.Struct) -> int:
        end = self.pos + s.size
        if end > len(self.data):
            raise self.error(f"truncated: need {s.size} bytes at offset {self.pos}")
        (v,) = s.unpack_from(self.data, self.pos)
        self.pos = end
        return v

    def u8(self) -> int:
        return self._unpack(_U8)

    def u16(self) -> int:
        return self._unpack(_U16)

    def u32(self) -> int:
        return self._unpack(_U32)

    def u64(self) -> int:
        return self._unpack(_U64)

    def i64(self) -> int:
        return self._unpack(_I64)

    def blob(self, max_len: int, min_len: int = 0, what: str = "field") -> bytes:
        n = self.u32()
        if not min_len <= n <= max_len:
            raise self.error(f"{what} length {n} outside {min_len}..{max_len}")
        return self.raw(n)

    def text(self, max_len: int, what: str = "text field") -> str:
        """A length-prefixed UTF-8 string of at most ``max_len`` bytes."""
        try:
            return self.blob(max_len, what=what).decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not valid UTF-8") from None

    def tag(self, expected: int, what: str) -> None:
        t = self.u8()
        if t != expected:
            raise self.error(f"not a {what} (tag 0x{t:02x}, expected 0x{expected:02x})")

    def flag(self) -> bool:
        v = self.u8()
        if v > 1:
            raise self.error(f"boolean flag must be 0 or 1, got {v}")
        return v == 1

    boolean = flag

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.error(f"{len(self.data) - self.pos} trailing bytes")


def check_size(data: bytes, limit: int, what: str) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{what}: expected bytes")
    if len(data) > limit:
        raise DecodeError(f"{what} of {len(data)} bytes exceeds the {limit}-byte limit")


def decode_whole(data: bytes, limit: int, what: str, read: Callable[[Reader], T]) -> T:
    """``read`` one value from ``data`` (at most ``limit`` bytes), refusing trailing bytes."""
    check_size(data, limit, what)
    r = Reader(data)
    value = read(r)
    r.end()
    return value
