"""Avro serde for every pipeline topic: one module, our own error type for bad records.

Wire format: Avro **single-object encoding** (Avro specification, "Single object
encoding"): two magic bytes ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint
of the writer schema's Parsing Canonical Form, then the Avro binary body.

Why this and not the Confluent wire format (magic 0, 4-byte registry id): the value names
its schema by content, not by an id handed out by a registry, so no schema registry has to
run next to the embedded broker, and any Avro library (Java ``BinaryMessageDecoder``,
fastavro, ...) decodes it with nothing but the ``.avsc`` files shipped in ``schemas/``.
The price: a reader must hold the writer's schema. When a schema changes (only by
extension: a new field with a default, a new value in a documented string), ship the new
``.avsc`` to readers before producers write it, and register schemas that are no longer
current with :meth:`AvroSerde.add_writer_schema` so old records stay readable.

Schemas live one named record per file, ``schemas/<snake_case name>.avsc``, namespace
``privacy_pipeline``; records refer to each other by full name. The loader inlines each
referenced type at its first use, which gives every schema a self-contained form
(:meth:`AvroSerde.schema`) whose canonical form is the one Java's ``SchemaNormalization``
computes for the same schema.

Unions of several record types (``SubjectItem.event``, ``TaggedRecord.record``) are
written with an explicit branch: :meth:`AvroSerde.encode` picks it from the event's
``type`` (a tick is recognised by ``ticker_id``), or takes fastavro's tuple notation
``(record_name, record)``. They are decoded as plain dicts; an event says what it is in
its ``type`` field, a tick has none.

Errors never carry field *values* (they may be personal data): :class:`RecordError`
names the field and the problem, and the original exception is not chained.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from io import BytesIO
from pathlib import Path
from typing import Any, Final

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from .topics import EVENT_SCHEMAS

__all__ = [
    "DEFAULT_SCHEMA_DIR",
    "MAGIC",
    "NAMESPACE",
    "AvroSerde",
    "RecordError",
    "avro_to_event",
    "event_to_avro",
]

NAMESPACE: Final = "privacy_pipeline"
DEFAULT_SCHEMA_DIR: Final = Path(
    str(files("privacy_pipeline.schemas").joinpath("tick.avsc"))
).parent
"""The Avro schemas shipped with the package."""
MAGIC: Final = b"\xc3\x01"
_HEADER_SIZE: Final = 10

_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_NAMED_KINDS: Final = frozenset({"record", "error", "enum", "fixed"})
_COMPLEX: Final = _NAMED_KINDS | {"array", "map"}


class RecordError(Exception):
    """A record that cannot be encoded or decoded.

    ``reason`` is a short machine code: ``undecodable`` (not our wire format, or a body
    that does not parse), ``unknown_schema`` (fingerprint or schema name we do not know),
    ``invalid_record`` (a record that does not fit its schema), ``incompatible_schema``
    (writer and reader schemas cannot be resolved). ``field`` is the path of the field at
    fault, when known. The message names the field, never its value.
    """

    def __init__(self, reason: str, message: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        self.detail = message
        text = f"{reason}: {message}"
        if field is not None:
            text += f" (field '{field}')"
        super().__init__(text)


# --------------------------------------------------------------------------- loading


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _full(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _namespace_of(fullname: str) -> str | None:
    return fullname.rsplit(".", 1)[0] if "." in fullname else None


def _named_definitions(schema: Any, namespace: str | None) -> Iterator[tuple[str, Any]]:
    """Every named type defined (not merely referenced) in `schema`, with its full name."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _named_definitions(branch, namespace)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, dict | list):
            yield from _named_definitions(kind, namespace)
        elif kind in _NAMED_KINDS:
            fullname = _full(str(schema["name"]), schema.get("namespace", namespace))
            yield fullname, schema
            namespace = _namespace_of(fullname)
            for field in schema.get("fields", ()):
                yield from _named_definitions(field["type"], namespace)
        elif kind == "array":
            yield from _named_definitions(schema["items"], namespace)
        elif kind == "map":
            yield from _named_definitions(schema["values"], namespace)


def _inline(schema: Any, named: Mapping[str, Any], seen: set[str], namespace: str | None) -> Any:
    """`schema` with every named type defined at its first use and referenced by full
    name after that: the self-contained form the Avro spec's canonical form is taken of."""
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return schema
        fullname = _full(schema, namespace)
        if fullname in seen:
            return fullname
        if fullname not in named:
            raise ValueError(f"unknown Avro type {schema!r}")
        return _inline(named[fullname], named, seen, _namespace_of(fullname))
    if isinstance(schema, list):
        return [_inline(branch, named, seen, namespace) for branch in schema]
    if not isinstance(schema, dict):
        raise ValueError(f"not an Avro schema: {type(schema).__name__}")
    kind = schema.get("type")
    if not isinstance(kind, str) or (kind not in _PRIMITIVES and kind not in _COMPLEX):
        return _inline(kind, named, seen, namespace)  # {"type": <a schema>}
    out = {k: v for k, v in schema.items() if k != "namespace"}
    if kind in _NAMED_KINDS:
        fullname = _full(str(schema["name"]), schema.get("namespace", namespace))
        if fullname in seen:
            raise ValueError(f"Avro type {fullname!r} is defined twice")
        seen.add(fullname)
        out["name"] = fullname
        inner = _namespace_of(fullname)
        if "fields" in schema:
            out["fields"] = [
                {**fld, "type": _inline(fld["type"], named, seen, inner)}
                for fld in schema["fields"]
            ]
    elif kind == "array":
        out["items"] = _inline(schema["items"], named, seen, namespace)
    elif kind == "map":
        out["values"] = _inline(schema["values"], named, seen, namespace)
    return out


def _read_schema_files(schema_dir: Path) -> dict[str, Any]:
    """Top-level schemas of a directory by full name."""
    files = sorted(schema_dir.glob("*.avsc"))
    if not files:
        raise FileNotFoundError(f"no .avsc files in {schema_dir}")
    top: dict[str, Any] = {}
    for path in files:
        schema = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(schema, dict) or schema.get("type") not in _NAMED_KINDS:
            raise ValueError(f"{path.name}: top-level schema must be a named type")
        fullname = _full(str(schema["name"]), schema.get("namespace"))
        if fullname in top:
            raise ValueError(f"{path.name}: {fullname} is defined in two files")
        top[fullname] = schema
    return top


@dataclass(frozen=True, slots=True)
class _Schema:
    name: str  # short name, e.g. "ClickEvent"
    fullname: str
    standalone: dict[str, Any]  # self-contained JSON schema
    parsed: Any  # fastavro-parsed, ready for reading and writing
    canonical_form: str
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO
    header: bytes  # MAGIC + fingerprint


def _compile(standalone: dict[str, Any]) -> _Schema:
    canonical = to_parsing_canonical_form(standalone)
    fp = bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))
    fullname = str(standalone["name"])
    return _Schema(
        name=_short(fullname),
        fullname=fullname,
        standalone=standalone,
        parsed=parse_schema(copy.deepcopy(standalone), {}),
        canonical_form=canonical,
        fingerprint=fp,
        header=MAGIC + fp,
    )


# ------------------------------------------------------------- record-union branches


def _branch_of(value: Any) -> Any:
    """`value` in fastavro's tuple notation when it is a plain dict in a record union."""
    if not isinstance(value, dict) or "-type" in value:
        return value
    kind = value.get("type")
    name = EVENT_SCHEMAS.get(kind) if isinstance(kind, str) else None
    if name is None and "ticker_id" in value:
        name = "Tick"
    elif name is None and "command_id" in value and "status" in value:
        name = "ErasureAck"
    return value if name is None else (f"{NAMESPACE}.{name}", value)


def _full_tuple(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return (_full(value[0], NAMESPACE), value[1])
    return _branch_of(value)


def _fix_subject_batch(record: Any) -> Any:
    items = record.get("items") if isinstance(record, dict) else None
    if not isinstance(items, list):
        return record
    return {**record, "items": [_fix_subject_item(item) for item in items]}


def _fix_subject_item(item: Any) -> Any:
    if not isinstance(item, dict) or item.get("event") is None:
        return item
    return {**item, "event": _full_tuple(item["event"])}


def _fix_tagged_record(record: Any) -> Any:
    if not isinstance(record, dict) or "record" not in record:
        return record
    return {**record, "record": _full_tuple(record["record"])}


_UNION_FIXUPS: Final[dict[str, Callable[[Any], Any]]] = {
    "SubjectBatch": _fix_subject_batch,
    "SubjectItem": _fix_subject_item,
    "TaggedRecord": _fix_tagged_record,
}


def _has_record_union(schema: Any) -> bool:
    """True when `schema` holds a union of two or more record types anywhere."""
    if isinstance(schema, list):
        records = sum(
            (isinstance(b, dict) and b.get("type") == "record")
            or (isinstance(b, str) and b not in _PRIMITIVES)
            for b in schema
        )
        return records > 1 or any(_has_record_union(b) for b in schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            return any(_has_record_union(fld["type"]) for fld in schema["fields"])
        if kind == "array":
            return _has_record_union(schema["items"])
        if kind == "map":
            return _has_record_union(schema["values"])
    return False


# ------------------------------------------------------------ locating a bad field


def _check(schema: Any, datum: Any, path: str, named: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field path, problem) of the first place `datum` does not fit `schema`, or None.

    Slow, only called after a write failed, to name the field; never mentions values.
    """
    if isinstance(schema, str):
        if schema in named:
            return _check(named[schema], datum, path, named)
        ok = {
            "null": datum is None,
            "boolean": isinstance(datum, bool),
            "int": isinstance(datum, int)
            and not isinstance(datum, bool)
            and -(2**31) <= datum < 2**31,
            "long": isinstance(datum, int)
            and not isinstance(datum, bool)
            and -(2**63) <= datum < 2**63,
            "float": isinstance(datum, int | float) and not isinstance(datum, bool),
            "double": isinstance(datum, int | float) and not isinstance(datum, bool),
            "bytes": isinstance(datum, bytes | bytearray | memoryview),
            "string": isinstance(datum, str),
        }.get(schema, False)
        return None if ok else (path, f"expected {schema}, got {type(datum).__name__}")
    if isinstance(schema, list):
        if isinstance(datum, tuple) and len(datum) == 2 and isinstance(datum[0], str):
            for branch in schema:
                bname = branch.get("name") if isinstance(branch, dict) else branch
                if bname == _full(datum[0], NAMESPACE):
                    return _check(branch, datum[1], path, named)
            return (path, f"union has no branch named {datum[0]}")
        problems = [_check(branch, datum, path, named) for branch in schema]
        if any(p is None for p in problems):
            return None
        deeper = [p for p in problems if p is not None and p[0] != path]
        return deeper[0] if len(deeper) == 1 else (path, "matches no type of the union")
    kind = schema.get("type")
    if kind == "record":
        if not isinstance(datum, Mapping):
            return (path, f"expected a record, got {type(datum).__name__}")
        prefix = f"{path}." if path else ""
        names = set()
        for fld in schema["fields"]:
            names.add(fld["name"])
            sub = prefix + fld["name"]
            if fld["name"] in datum:
                problem = _check(fld["type"], datum[fld["name"]], sub, named)
                if problem is not None:
                    return problem
            elif "default" not in fld:
                return (sub, "missing required field")
        for key in datum:
            if key not in names:
                return (prefix + str(key), "field not in the schema")
        return None
    if kind == "array":
        if not isinstance(datum, list | tuple):
            return (path, f"expected an array, got {type(datum).__name__}")
        for i, item in enumerate(datum):
            problem = _check(schema["items"], item, f"{path}[{i}]", named)
            if problem is not None:
                return problem
        return None
    if kind == "map":
        if not isinstance(datum, Mapping):
            return (path, f"expected a map, got {type(datum).__name__}")
        for key, value in datum.items():
            if not isinstance(key, str):
                return (path, "map key is not a string")
            problem = _check(schema["values"], value, f"{path}.{key}", named)
            if problem is not None:
                return problem
        return None
    if kind == "enum":
        return None if datum in schema["symbols"] else (path, "not a symbol of the enum")
    if kind == "fixed":
        ok = isinstance(datum, bytes) and len(datum) == schema["size"]
        return None if ok else (path, f"expected {schema['size']} bytes")
    return _check(kind, datum, path, named)


# ---------------------------------------------------------------------------- serde


class AvroSerde:
    """Encodes and decodes records of the schemas in a directory (single-object encoding).

    Schema names are short (``"ClickEvent"``); full names (``"privacy_pipeline.ClickEvent"``)
    are accepted too. Safe to share between threads once built (``add_writer_schema``
    aside).
    """

    def __init__(self, schema_dir: Path | str | None = None) -> None:
        self.schema_dir = Path(schema_dir) if schema_dir is not None else DEFAULT_SCHEMA_DIR
        top = _read_schema_files(self.schema_dir)
        named: dict[str, Any] = {}
        for fullname, schema in top.items():
            for name, definition in _named_definitions(schema, _namespace_of(fullname)):
                if name in named and named[name] is not definition:
                    raise ValueError(f"Avro type {name} is defined twice in {self.schema_dir}")
                named[name] = definition
        self._named_raw = named
        self._current: dict[str, _Schema] = {}
        self._by_fingerprint: dict[bytes, _Schema] = {}
        unfixed: list[str] = []
        for fullname in top:
            try:
                entry = _compile(_inline(fullname, named, set(), None))
            except ValueError as exc:
                raise ValueError(f"schema {fullname}: {exc}") from exc
            self._current[entry.name] = entry
            self._by_fingerprint[entry.fingerprint] = entry
            if entry.name not in _UNION_FIXUPS and _has_record_union(entry.standalone):
                unfixed.append(entry.name)
        if unfixed:
            raise ValueError(
                f"records {sorted(unfixed)} hold a union of several record types; "
                "teach serde._UNION_FIXUPS how to pick the branch"
            )

    # -- schemas

    @property
    def names(self) -> tuple[str, ...]:
        """Short names of the current schemas, sorted."""
        return tuple(sorted(self._current))

    def _entry(self, name: str) -> _Schema:
        entry = self._current.get(name)
        if entry is None:
            entry = self._current.get(_short(name))
        if entry is None:
            raise RecordError("unknown_schema", f"no schema named {name}")
        return entry

    def schema(self, name: str) -> dict[str, Any]:
        """The self-contained JSON schema (docs and annotations kept), a fresh copy."""
        return copy.deepcopy(self._entry(name).standalone)

    def canonical_form(self, name: str) -> str:
        """The schema's Parsing Canonical Form (Avro spec)."""
        return self._entry(name).canonical_form

    def fingerprint(self, name: str) -> bytes:
        """The 8 header bytes naming the schema: CRC-64-AVRO of the canonical form, LE."""
        return self._entry(name).fingerprint

    def add_writer_schema(self, schema: Mapping[str, Any] | str) -> str:
        """Make records written with `schema` (e.g. an earlier version) decodable.

        `schema` is a dict or JSON text; it may refer to the current named types.
        Returns its short name. Encoding always uses the current schema.
        """
        raw = json.loads(schema) if isinstance(schema, str) else copy.deepcopy(dict(schema))
        if raw.get("type") not in _NAMED_KINDS:
            raise ValueError("writer schema must be a named type")
        fullname = _full(str(raw["name"]), raw.get("namespace"))
        named = dict(self._named_raw)
        for name, definition in _named_definitions(raw, _namespace_of(fullname)):
            named[name] = definition
        entry = _compile(_inline(fullname, named, set(), None))
        self._by_fingerprint.setdefault(entry.fingerprint, entry)
        return entry.name

    # -- wire

    def encode(self, schema_name: str, record: Mapping[str, Any]) -> bytes:
        """`record` as Avro single-object encoding of schema `schema_name`.

        Fields with a default may be left out; fields the schema does not have are an
        error (nothing is dropped silently). Raises :class:`RecordError`.
        """
        entry = self._entry(schema_name)
        fixup = _UNION_FIXUPS.get(entry.name)
        datum = fixup(record) if fixup is not None else record
        out = BytesIO()
        out.write(entry.header)
        try:
            schemaless_writer(out, entry.parsed, datum, strict_allow_default=True)
        except Exception as exc:  # fastavro raises many types; messages may hold values
            raise self._invalid(entry, datum, exc) from None
        return out.getvalue()

    def _invalid(self, entry: _Schema, datum: Any, exc: Exception) -> RecordError:
        named = {
            name: definition for name, definition in _named_definitions(entry.standalone, None)
        }
        found = _check(entry.standalone, datum, "", named)
        if found is None:
            return RecordError(
                "invalid_record", f"{entry.name} could not be encoded ({type(exc).__name__})"
            )
        path, problem = found
        return RecordError(
            "invalid_record",
            f"{entry.name}: {problem}" if path else f"{entry.name}: {problem} (the record itself)",
            field=path or None,
        )

    def decode(
        self, data: bytes | bytearray | memoryview, reader_schema: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """(schema name, record) of a single-object-encoded value.

        The writer schema is found by the fingerprint in the header. With `reader_schema`
        the record is resolved to that schema (Avro schema evolution: fields the reader
        does not know are skipped, fields the writer did not have get the reader's
        default). Raises :class:`RecordError`.
        """
        if len(data) < _HEADER_SIZE or bytes(data[:2]) != MAGIC:
            raise RecordError("undecodable", "not Avro single-object encoding (no C3 01 header)")
        writer = self._by_fingerprint.get(bytes(data[2:_HEADER_SIZE]))
        if writer is None:
            fp = bytes(data[2:_HEADER_SIZE]).hex()
            raise RecordError("unknown_schema", f"no schema with fingerprint {fp}")
        reader = writer if reader_schema is None else self._entry(reader_schema)
        buf = BytesIO(data)
        buf.seek(_HEADER_SIZE)
        try:
            if reader is writer or reader.fingerprint == writer.fingerprint:
                record = schemaless_reader(buf, writer.parsed)
            else:
                record = schemaless_reader(buf, writer.parsed, reader.parsed)
        except SchemaResolutionError:
            raise RecordError(
                "incompatible_schema", f"{writer.name} data cannot be read as {reader.name}"
            ) from None
        except Exception as exc:  # fastavro raises many types; messages may hold values
            raise RecordError(
                "undecodable", f"{writer.name} body does not parse ({type(exc).__name__})"
            ) from None
        if buf.tell() != len(data):
            raise RecordError("undecodable", f"{writer.name} body has trailing bytes")
        if not isinstance(record, dict):
            raise RecordError("undecodable", f"{writer.name} body is not a record")
        return reader.name, record


# ------------------------------------------------------- canonical JSON <-> Avro


@dataclass(frozen=True, slots=True)
class _Layout:
    fields: tuple[tuple[str, bool, Any], ...]  # (name, required, default)
    names: frozenset[str]


@cache
def _event_layouts() -> dict[str, _Layout]:
    """Field layout of each input-event schema, read from the shipped .avsc files."""
    top = _read_schema_files(DEFAULT_SCHEMA_DIR)
    layouts: dict[str, _Layout] = {}
    for name in EVENT_SCHEMAS.values():
        schema = top[f"{NAMESPACE}.{name}"]
        fields = tuple(
            (str(f["name"]), "default" not in f, f.get("default")) for f in schema["fields"]
        )
        layouts[name] = _Layout(fields, frozenset(f[0] for f in fields))
    return layouts


def event_to_avro(event: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(schema name, Avro record) of a canonical JSON input event.

    The schema is chosen by ``type``; optional fields left out become None. Checks the
    shape only (known type, no unknown field, required fields present); types are
    checked by :meth:`AvroSerde.encode`. Raises :class:`RecordError`.
    """
    if not isinstance(event, Mapping):
        raise RecordError("invalid_record", "event is not a JSON object")
    kind = event.get("type")
    name = EVENT_SCHEMAS.get(kind) if isinstance(kind, str) else None
    if name is None:
        raise RecordError("invalid_record", "missing or unknown event type", field="type")
    layout = _event_layouts()[name]
    for key in event:
        if key not in layout.names:
            raise RecordError("invalid_record", f"{name} has no such field", field=str(key))
    record: dict[str, Any] = {}
    for field, required, default in layout.fields:
        if field in event:
            record[field] = event[field]
        elif required:
            raise RecordError("invalid_record", f"{name}: missing required field", field=field)
        else:
            record[field] = copy.deepcopy(default)
    return name, record


def avro_to_event(record: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical JSON form of a decoded input-event record: optional fields that
    are None are left out, so ``avro_to_event(event_to_avro(e)[1]) == e``."""
    return {key: value for key, value in record.items() if value is not None}
