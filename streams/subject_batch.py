"""Subject-log micro-batches written by concatenation, reusing the input records' Avro bodies.

A `SubjectBatch` holds the input events as they came. Avro's binary encoding of a record is
the concatenation of its fields, so the body of an input record (its single-object
encoding less the 10-byte header) is already the encoding of that event inside the batch,
as long as it was written with the current schema. `SubjectBatchWriter` joins those bodies
with the few fields around them instead of decoding nothing but to encode everything
again: fastavro's encode of the whole batch was a third of ingest's CPU. The bytes are
exactly what `AvroSerde.encode("SubjectBatch", ...)` writes (a test holds it to that).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any, NamedTuple

from .serde import MAGIC, AvroSerde

_HEADER = len(MAGIC) + 8

TICKER_SOURCE = "ticker"
"""The `source_topic` of a tick in a micro-batch (ticks come from ingest, not a topic)."""


class SubjectEntry(NamedTuple):
    """One item of a micro-batch, its event as an Avro body of schema `schema`."""

    key: str
    source_topic: str
    source_partition: int
    source_offset: int
    produced_at_ms: int
    schema: str  # short name of the event's record type, e.g. "ClickEvent"
    body: bytes


def _long(n: int) -> bytes:
    """Avro long: zigzag, then base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


@lru_cache(maxsize=4096)
def _short_long(n: int) -> bytes:
    return _long(n)


def _text(value: str) -> bytes:
    raw = value.encode()
    return _long(len(raw)) + raw


@lru_cache(maxsize=64)
def _topic(value: str) -> bytes:
    """A source topic name (a handful of them), encoded once."""
    return _text(value)


class SubjectBatchWriter:
    """Encodes `SubjectBatch` records (single-object encoding) from `SubjectEntry` items."""

    def __init__(self, serde: AvroSerde) -> None:
        self.serde = serde
        self._header = MAGIC + serde.fingerprint("SubjectBatch")
        item = serde.schema("SubjectItem")
        (event,) = [f for f in item["fields"] if f["name"] == "event"]
        branches = [b if isinstance(b, str) else b["name"] for b in event["type"]]
        self._branch = {
            name.rsplit(".", 1)[-1]: _long(i) for i, name in enumerate(branches) if name != "null"
        }
        self._current = {name: serde.fingerprint(name) for name in self._branch}

    def body(self, value: bytes, schema: str, record: dict[str, Any]) -> bytes:
        """The Avro body of an input record in the current `schema`: its own bytes when it
        was written with that schema, else `record` (decoded from it) encoded anew."""
        if value[2:_HEADER] == self._current[schema]:
            return value[_HEADER:]
        return self.encode_body(schema, record)

    def encode_body(self, schema: str, record: dict[str, Any]) -> bytes:
        """`record` as the Avro body of `schema` (no header)."""
        return self.serde.encode(schema, record)[_HEADER:]

    def encode(self, batch_id: str, produced_at_ms: int, items: Iterable[SubjectEntry]) -> bytes:
        """One `SubjectBatch`, single-object encoded."""
        entries = list(items)
        parts = [self._header, _text(batch_id), _long(produced_at_ms)]
        if entries:
            parts.append(_long(len(entries)))
            branch = self._branch
            for e in entries:
                key = e.key.encode()
                parts += (
                    _long(len(key)),
                    key,
                    _topic(e.source_topic),
                    _short_long(e.source_partition),
                    _long(e.source_offset),
                    _long(e.produced_at_ms),
                    branch[e.schema],
                    e.body,
                )
        parts.append(b"\x00")
        return b"".join(parts)


__all__ = ["SubjectBatchWriter", "SubjectEntry"]
