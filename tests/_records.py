"""Stored request-id records (``rs:r:{b}/{bucket}:{gen}``, see shard_node/_keys.py), read and written as the index
script stores them, for tests that look at them on a node or put other releases' forms there."""

from __future__ import annotations

import struct

PACKED = 1
"""The first byte of the records this release writes."""
_HEAD = struct.Struct(">6sddB")


def packed_records(raw: bytes) -> list[tuple[int, int, int, bytes]]:
    """The ``(ts, value, score, rid)`` of packed records, oldest first: the byte PACKED, the count, then per record
    struct ``>I6ddB`` (node ms, submitted value, score answered, id length) and the id. Fails unless every byte
    belongs to a well-formed record and the count is right."""
    assert raw[0] == PACKED, raw
    records, pos = [], 2
    while pos < len(raw):
        ts, value, score, length = _HEAD.unpack_from(raw, pos)
        pos += _HEAD.size
        assert pos + length <= len(raw), raw[pos:]
        records.append((int.from_bytes(ts, "big"), int(value), int(score), raw[pos : pos + length]))
        pos += length
    assert len(records) == raw[1], raw
    return records


def packed_ids(raw: bytes) -> list[bytes]:
    """The request ids of packed records, oldest first (see `packed_records`)."""
    return [rid for _, _, _, rid in packed_records(raw)]


def pack(records: list[tuple[int, int, int, bytes]]) -> bytes:
    """Packed records of ``(ts, value, score, rid)``, as the index script writes them."""
    body = b"".join(_HEAD.pack(ts.to_bytes(6, "big"), v, score, len(rid)) + rid for ts, v, score, rid in records)
    return bytes([PACKED, len(records)]) + body


def text_record(ts: int | bytes, value: int, score: int, rid: bytes, length: int | None = None) -> bytes:
    """One record as releases before packed records stored it, ``ts|value|score|len|rid`` (ts in ms since the start
    of the generation of its hash); `length` other than the id's own is how ``string.format('%s')`` wrote an id
    holding a NUL: its bytes cut at the first NUL while its length counts them all."""
    stamp = ts if isinstance(ts, bytes) else b"%d" % ts
    return b"%s|%d|%d|%d|%s" % (stamp, value, score, len(rid) if length is None else length, rid)
