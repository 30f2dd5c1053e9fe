"""Registry transaction payloads: canonical round trip, strict decoding, limits, fuzzing."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from ledger.registry import payloads
from ledger.registry.payloads import AnchorTx, EraseTx, PayloadError, SubjectTx


def _subject(op: int = payloads.OP_REGISTER, version: int = 1) -> SubjectTx:
    return SubjectTx(op=op, pseudonym=os.urandom(32), pkey_id=os.urandom(8), version=version, nonce=os.urandom(12),
                     ciphertext=os.urandom(600), kek_id=os.urandom(8), key_commitment=os.urandom(32))


@pytest.mark.parametrize("tx", [
    _subject(), _subject(payloads.OP_UPDATE, 5), EraseTx(pseudonym=b"p" * 32, version=3),
    AnchorTx(camera_id="cam-1", window_start_us=10, window_end_us=20, record_count=7, merkle_root=b"r" * 32),
    AnchorTx(camera_id="cam-ü", window_start_us=0, window_end_us=0, record_count=0, merkle_root=b"r" * 32,
             audit_index=4, audit_block_hash=b"h" * 32),
])
def test_round_trip_byte_identical(tx) -> None:
    data = payloads.encode(tx)
    back = payloads.decode(data)
    assert back == tx
    assert payloads.encode(back) == data
    assert payloads.op_name(back) in ("register", "update", "erase", "anchor")


def test_encoding_is_deterministic() -> None:
    tx = _subject()
    assert payloads.encode(tx) == payloads.encode(SubjectTx(**tx.__dict__))


@pytest.mark.parametrize("tx,match", [
    (SubjectTx(op=payloads.OP_REGISTER, pseudonym=b"x" * 31, pkey_id=b"k" * 8, version=1, nonce=b"n" * 12,
               ciphertext=b"c" * 40, kek_id=b"k" * 8, key_commitment=b"c" * 32), "pseudonym"),
    (SubjectTx(op=payloads.OP_REGISTER, pseudonym=b"x" * 32, pkey_id=b"k" * 8, version=2, nonce=b"n" * 12,
               ciphertext=b"c" * 40, kek_id=b"k" * 8, key_commitment=b"c" * 32), "version 1"),
    (SubjectTx(op=payloads.OP_UPDATE, pseudonym=b"x" * 32, pkey_id=b"k" * 8, version=2, nonce=b"n" * 12,
               ciphertext=b"c" * 10, kek_id=b"k" * 8, key_commitment=b"c" * 32), "ciphertext"),
    (EraseTx(pseudonym=b"x" * 32, version=1), "erase version"),
    (AnchorTx(camera_id="", window_start_us=0, window_end_us=1, record_count=1, merkle_root=b"r" * 32), "camera"),
    (AnchorTx(camera_id="c", window_start_us=5, window_end_us=1, record_count=1, merkle_root=b"r" * 32), "window"),
    (AnchorTx(camera_id="c", window_start_us=0, window_end_us=1, record_count=1, merkle_root=b"r" * 31), "merkle"),
])
def test_encode_validates(tx, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        payloads.encode(tx)


def test_decode_refuses_non_canonical() -> None:
    data = payloads.encode(_subject())
    with pytest.raises(PayloadError, match="trailing"):
        payloads.decode(data + b"\x00")
    with pytest.raises(PayloadError, match="truncated"):
        payloads.decode(data[:-1])
    with pytest.raises(PayloadError, match="magic"):
        payloads.decode(b"XXXX" + data[4:])
    with pytest.raises(PayloadError, match="version"):
        payloads.decode(data[:4] + b"\x02" + data[5:])
    with pytest.raises(PayloadError, match="op"):
        payloads.decode(data[:5] + b"\x09" + data[6:])


def test_oversized_length_prefix_refused_without_allocation() -> None:
    head = payloads.MAGIC + bytes([1, payloads.OP_REGISTER]) + b"p" * 32 + b"k" * 8 + (1).to_bytes(8, "big")
    data = head + b"n" * 12 + (2**32 - 1).to_bytes(4, "big")
    with pytest.raises(PayloadError, match="length 4294967295 outside"):
        payloads.decode(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decode_only_payload_errors(data: bytes) -> None:
    for candidate in (data, payloads.MAGIC + b"\x01" + data):
        try:
            tx = payloads.decode(candidate)
        except PayloadError:
            continue
        assert payloads.encode(tx) == candidate


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**32 - 1), st.text(min_size=1, max_size=30))
def test_anchor_round_trip_property(a: int, b: int, n: int, cam: str) -> None:
    if len(cam.encode()) > payloads.MAX_CAMERA_ID:
        return
    tx = AnchorTx(camera_id=cam, window_start_us=min(a, b), window_end_us=max(a, b), record_count=n,
                  merkle_root=os.urandom(32))
    assert payloads.decode(payloads.encode(tx)) == tx
