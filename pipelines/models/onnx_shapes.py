"""Make fixed ONNX input/output dimensions symbolic, on the serialized model, without the ``onnx`` package.

YuNet 2023mar declares its input as 1x3x640x640 and CenterFace as 10x3x32x32, but both graphs are fully
convolutional: onnxruntime runs them at any size once the declared dimensions are symbolic. This module edits
the protobuf wire format directly (ModelProto.graph -> ValueInfoProto.type.tensor_type.shape.dim), so the only
dependency is onnxruntime itself. Intermediate ``value_info`` shape hints are dropped (onnxruntime infers them).
Unknown fields are copied byte for byte.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

# ONNX field numbers (onnx.proto3)
_MODEL_GRAPH = 7
_GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 11, 12, 13
_VI_NAME, _VI_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_SHAPE = 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2


class OnnxEditError(ValueError):
    """The bytes are not an ONNX model this editor understands."""


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise OnnxEditError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxEditError("varint too long")


def varint(value: int) -> bytes:
    """Protobuf base-128 varint (negative values as their 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """Yield (field number, wire type, payload, raw bytes of the whole field)."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, pos = _read_varint(buf, pos)
            payload = b""
        elif wt == 1:
            pos += 8
            payload = b""
        elif wt == 2:
            n, pos = _read_varint(buf, pos)
            payload = buf[pos:pos + n]
            pos += n
        elif wt == 5:
            pos += 4
            payload = b""
        else:
            raise OnnxEditError(f"unsupported wire type {wt}")
        if pos > len(buf):
            raise OnnxEditError("truncated field")
        yield num, wt, payload, buf[start:pos]


def length_delimited(num: int, payload: bytes) -> bytes:
    """Protobuf field ``num`` of wire type 2 (bytes, string, embedded message)."""
    return varint((num << 3) | 2) + varint(len(payload)) + payload


def _value_info_name(vi: bytes) -> str:
    for num, wt, payload, _ in _fields(vi):
        if num == _VI_NAME and wt == 2:
            return payload.decode("utf-8")
    return ""


def _shape_bytes(dims: Sequence[int | str]) -> bytes:
    out = bytearray()
    for d in dims:
        if isinstance(d, str):
            dim = length_delimited(_DIM_PARAM, d.encode("utf-8"))
        else:
            dim = varint(_DIM_VALUE << 3) + varint(int(d))
        out += length_delimited(_SHAPE_DIM, dim)
    return bytes(out)


def _rewrite_type(buf: bytes, dims: Sequence[int | str] | None) -> bytes:
    """TypeProto with its tensor shape replaced by ``dims`` (None: shape removed)."""
    out = bytearray()
    for num, wt, payload, raw in _fields(buf):
        if num == _TYPE_TENSOR and wt == 2:
            tensor = bytearray()
            for n2, w2, p2, r2 in _fields(payload):
                if n2 == _TENSOR_SHAPE and w2 == 2:
                    continue
                tensor += r2
            if dims is not None:
                tensor += length_delimited(_TENSOR_SHAPE, _shape_bytes(dims))
            out += length_delimited(_TYPE_TENSOR, bytes(tensor))
        else:
            out += raw
    return bytes(out)


def _rewrite_value_info(vi: bytes, dims: Sequence[int | str] | None) -> bytes:
    out = bytearray()
    for num, wt, payload, raw in _fields(vi):
        if num == _VI_TYPE and wt == 2:
            out += length_delimited(_VI_TYPE, _rewrite_type(payload, dims))
        else:
            out += raw
    return bytes(out)


def set_io_dims(model: bytes, inputs: Mapping[str, Sequence[int | str]],
                outputs: Mapping[str, Sequence[int | str]] | None = None,
                free_other_outputs: bool = True) -> bytes:
    """Serialized model with the named inputs/outputs given these dims (str = symbolic).

    Outputs not named lose their declared shape when ``free_other_outputs``; intermediate value_info entries
    are always dropped, so no stale fixed shape constrains a resized run.
    """
    outputs = outputs or {}
    found: set[str] = set()
    out = bytearray()
    graph_seen = False
    for num, wt, payload, raw in _fields(model):
        if num != _MODEL_GRAPH or wt != 2:
            out += raw
            continue
        graph_seen = True
        graph = bytearray()
        for n2, w2, p2, r2 in _fields(payload):
            if n2 == _GRAPH_VALUE_INFO and w2 == 2:
                continue
            if n2 in (_GRAPH_INPUT, _GRAPH_OUTPUT) and w2 == 2:
                name = _value_info_name(p2)
                table = inputs if n2 == _GRAPH_INPUT else outputs
                if name in table:
                    found.add(name)
                    graph += length_delimited(n2, _rewrite_value_info(p2, table[name]))
                    continue
                if n2 == _GRAPH_OUTPUT and free_other_outputs:
                    graph += length_delimited(n2, _rewrite_value_info(p2, None))
                    continue
            graph += r2
        out += length_delimited(_MODEL_GRAPH, bytes(graph))
    if not graph_seen:
        raise OnnxEditError("no graph in model")
    missing = (set(inputs) | set(outputs)) - found
    if missing:
        raise OnnxEditError(f"model has no input/output named {sorted(missing)}")
    return bytes(out)
