"""Sink mapping: what an erasure command means for one database, read from YAML.

The mapping names the target the sink serves, optionally the controllers whose commands
it takes, and for each table the columns that hold personal data with their category::

    target: business-systems
    controllers: [inrego]
    tables:
      customers:
        subject_column: subject_id
        controller_column: controller
        recorded_at_column: created_at
        columns: {name: contact, email: contact, personnummer: identity}
        anonymize: {email: hash}
        restricted_column: restricted

Categories are free strings, matched against the `categories` of the commands. The five
policy packs use `identity`, `contact`, `account`, `order`, `technical`, `employment`,
`correspondence`, `payment`, `location` and `profile` (see `categories` in `policies/*.yaml`);
a target only receives the categories its recipient entry in the pack lists.

Subject ids belong to their controller, so a table without a `controller_column` is only
accepted when `controllers` names exactly one controller.

Table and column names must be plain SQL identifiers, so they never need quoting and a
mapping cannot smuggle SQL in. Whether the tables and columns exist, and have types the
strategies can write, is checked against the database when the sink starts
(`privacy_pipeline.sink.database.CommandApplier`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Hashable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

_SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The same spelling as target and controller ids in policy packs, so a typo is caught here
# rather than by a sink that silently never sees a command.
_ID = re.compile(r"^[a-z][a-z0-9_.-]*$")
# PostgreSQL truncates longer identifiers silently; a name it would truncate cannot match.
_MAX_IDENTIFIER = 63

#: The sink's own bookkeeping table; a mapped table may not use the name.
APPLIED_COMMANDS_TABLE = "applied_commands"
#: The sink's other tables (see `privacy_pipeline.sink.scopes`); not for mapped tables either.
RESERVED_TABLES = (APPLIED_COMMANDS_TABLE, "command_scopes", "command_scopes_lock")


class MappingError(ValueError):
    """A mapping that does not validate; the message names the file and the field path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {path or '(mapping)'}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class _Problems(ValueError):
    """Cross-field problems of one model, each with its path relative to that model."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


def _sql_identifier(name: str) -> str:
    if not _SQL_IDENTIFIER.match(name):
        raise ValueError(
            f"'{name}' is not a plain SQL identifier "
            "(letters, digits and underscores, not starting with a digit)"
        )
    if len(name) > _MAX_IDENTIFIER:
        raise ValueError(f"'{name}' is longer than {_MAX_IDENTIFIER} characters")
    return name


def _id(name: str) -> str:
    if not _ID.match(name):
        raise ValueError(
            f"'{name}' is not an id as policy packs spell them "
            "(lower-case letters, digits, '_', '.', '-', starting with a letter)"
        )
    return name


SqlIdentifier = Annotated[str, AfterValidator(_sql_identifier)]
Id = Annotated[str, AfterValidator(_id)]
Category = Annotated[str, Field(min_length=1)]
ConstantValue = bool | int | float | str | datetime | date


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Constant(_Strict):
    """Anonymise by writing this value (a NULL stays NULL)."""

    constant: ConstantValue


#: Per column: None (NULL, the default), "hash" (hex SHA-256 of the value's text),
#: "year" (a date becomes 1 January of its year), or a Constant.
Strategy = Literal["hash", "year"] | Constant | None

_STRATEGY_HELP = "must be null, 'hash', 'year' or {constant: VALUE}"


def _strategy(value: object) -> Strategy:
    if value is None:
        return None
    if value == "hash":
        return "hash"
    if value == "year":
        return "year"
    if isinstance(value, Constant):
        return value
    if isinstance(value, Mapping) and set(value) == {"constant"}:
        constant = value["constant"]
        if constant is None:
            raise ValueError("{constant: null} is written null")
        if not isinstance(constant, bool | int | float | str | datetime | date):
            raise ValueError("the constant must be a string, number, boolean or date")
        return Constant(constant=constant)
    if isinstance(value, str):
        raise ValueError(f"'{value}' is not a strategy: {_STRATEGY_HELP}")
    if isinstance(value, Mapping):
        keys = ", ".join(f"'{k}'" for k in value)
        raise ValueError(f"unknown key {keys}: {_STRATEGY_HELP}")
    raise ValueError(_STRATEGY_HELP)


class TableMapping(_Strict):
    """One table: how to find the person's rows, and which columns hold what."""

    subject_column: SqlIdentifier = Field(description="The column with the subject id")
    controller_column: SqlIdentifier | None = Field(
        None,
        description="The column with the controller id, when one table holds several; "
        "required unless `controllers` names exactly one controller",
    )
    recorded_at_column: SqlIdentifier | None = Field(
        None,
        description="When the row was recorded; with a command's recorded_before, "
        "newer rows are kept",
    )
    columns: dict[SqlIdentifier, Category] = Field(
        min_length=1, description="Personal-data columns and their category"
    )
    anonymize: dict[SqlIdentifier, Strategy] = Field(
        default_factory=dict,
        description="Per column: null (default), hash, year, or {constant: VALUE}",
    )
    restricted_column: SqlIdentifier | None = Field(
        None, description="A boolean column that restrict sets"
    )

    @field_validator("anonymize", mode="before")
    @classmethod
    def _strategies(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value  # pydantic reports the wrong type
        out: dict[object, Strategy] = {}
        problems: list[tuple[str, str]] = []
        for column, raw in value.items():
            try:
                out[column] = _strategy(raw)
            except ValueError as exc:
                problems.append((str(column), str(exc)))
        if problems:
            raise _Problems(problems)
        return out

    @model_validator(mode="after")
    def _consistent(self) -> TableMapping:
        problems: list[tuple[str, str]] = []
        for column in self.anonymize:
            if column not in self.columns:
                problems.append((f"anonymize.{column}", "not a column listed in `columns`"))
        # The columns the sink finds rows by must survive an erase, or the rest of the
        # person's data in that row could never be found again.
        roles: dict[str, str | None] = {
            "subject_column": self.subject_column,
            "controller_column": self.controller_column,
            "recorded_at_column": self.recorded_at_column,
            "restricted_column": self.restricted_column,
        }
        seen: dict[str, str] = {}
        for role, key_column in roles.items():
            if key_column is None:
                continue
            if key_column in self.columns:
                problems.append(
                    (role, f"'{key_column}' is also listed in `columns`; the sink finds rows by it")
                )
            if key_column in seen:
                problems.append((role, f"'{key_column}' is already the {seen[key_column]}"))
            seen.setdefault(key_column, role)
        if problems:
            raise _Problems(problems)
        return self

    def columns_of(self, categories: frozenset[str] | set[str]) -> list[str]:
        """The mapped columns whose category is one of `categories`, in mapping order."""
        return [column for column, category in self.columns.items() if category in categories]

    def strategy(self, column: str) -> Strategy:
        """How `anonymize` treats `column` (None: set it NULL)."""
        return self.anonymize.get(column)


class SinkMapping(_Strict):
    """The whole mapping of one sink: one target, one database."""

    target: Id = Field(description="The target id the commands name")
    controllers: list[Id] | None = Field(
        None, min_length=1, description="Only these controllers' commands (default: any)"
    )
    tables: dict[SqlIdentifier, TableMapping] = Field(min_length=1)

    @model_validator(mode="after")
    def _tables(self) -> SinkMapping:
        problems: list[tuple[str, str]] = []
        for reserved in RESERVED_TABLES:
            if reserved in self.tables:
                problems.append((f"tables.{reserved}", "the name of the sink's own table"))
        # Subject ids are the controller's own, so two controllers may use the same one for
        # different people, and every controller's commands for a target reach its sinks.
        # Without a controller column, only a sink limited to one controller knows whose
        # person a row is.
        if self.controllers is None or len(self.controllers) > 1:
            for name, table in self.tables.items():
                if table.controller_column is None:
                    problems.append(
                        (
                            f"tables.{name}.controller_column",
                            "required unless `controllers` names exactly one controller "
                            "(subject ids are per controller)",
                        )
                    )
        if problems:
            raise _Problems(problems)
        return self

    def mapped_categories(self) -> frozenset[str]:
        """Every category some table maps."""
        return frozenset(cat for table in self.tables.values() for cat in table.columns.values())

    def concerns(self, command: Mapping[str, Any]) -> bool:
        """True when the command is for this target and, if limited, one of its controllers."""
        if command.get("target") != self.target:
            return False
        return self.controllers is None or command.get("controller") in self.controllers


# -- loading ------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice: YAML would silently keep the last one,
    and a table or column mapped twice is almost always a mistake."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice", key_node.start_mark
            )
        if isinstance(key, Hashable):
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)

_FIELDS: dict[str, list[str]] = {
    "mapping": list(SinkMapping.model_fields),
    "table": list(TableMapping.model_fields),
}


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    # loc is ("tables", NAME, KEY) for a table's key, (KEY,) at the top.
    allowed = _FIELDS["table"] if len(loc) == 3 and loc[0] == "tables" else _FIELDS["mapping"]
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key; {hint}allowed: {', '.join(allowed)}"


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p != "[key]")
        path = ".".join(str(p) for p in loc)
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            out += [(f"{path}.{sub}" if path else sub, msg) for sub, msg in cause.problems]
        elif err["type"] == "extra_forbidden":
            out.append((path, _unknown_key(loc)))
        else:
            out.append((path, err["msg"].removeprefix("Value error, ")))
    return out


def parse_mapping(data: object, source: str = "<mapping>") -> SinkMapping:
    """Validate already-parsed YAML or JSON data; raise MappingError naming each problem."""
    if not isinstance(data, dict):
        raise MappingError(source, [("", "a sink mapping is a YAML mapping (key: value)")])
    try:
        return SinkMapping.model_validate(data)
    except ValidationError as exc:
        raise MappingError(source, _problems(exc)) from None


def load_mapping(path: str | Path) -> SinkMapping:
    """Read and validate one mapping file; raise MappingError naming the file and field."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(source, [("", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise MappingError(source, [("", "not UTF-8 text")]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise MappingError(
            source, [(where, f"not valid YAML: {problem}" if problem else "not valid YAML")]
        ) from None
    return parse_mapping(data, source)
