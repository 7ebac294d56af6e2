"""Sink mappings: valid files load; each broken one fails naming the file and the field path."""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from privacy_pipeline.processors.policy import load_pack
from privacy_pipeline.sink.mapping import (
    Constant,
    MappingError,
    SinkMapping,
    TableMapping,
    load_mapping,
    parse_mapping,
)

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "sink" / "examples" / "business-systems.yaml"

# The example of design.md, "Sink mapping (contract)", verbatim.
CONTRACT_EXAMPLE = """\
target: business-systems          # the target id the commands name
controllers: [inrego]             # optional: only these controllers' commands
tables:
  customers:
    subject_column: subject_id    # the column with the controller's subject id
    controller_column: controller # optional: when one table holds several controllers
    recorded_at_column: created_at  # optional: with recorded_before, newer rows are kept
    columns:                      # personal-data columns and their category
      name: contact
      email: contact
      personnummer: identity
    anonymize:                    # optional, per column: null (default), hash, year, or {constant: VALUE}
      email: hash
    restricted_column: restricted # optional boolean column, set by restrict
"""  # noqa: E501

BASE: dict[str, Any] = yaml.safe_load(CONTRACT_EXAMPLE)


def write(folder: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    data = copy.deepcopy(BASE)
    mutate(data)
    path = folder / "mapping.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def failure(path: Path) -> MappingError:
    with pytest.raises(MappingError) as info:
        load_mapping(path)
    return info.value


def customers(data: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = data["tables"]["customers"]
    return table


# -- valid mappings ------------------------------------------------------------------------


def test_the_contract_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    mapping = load_mapping(path)
    assert mapping.target == "business-systems"
    assert mapping.controllers == ["inrego"]
    table = mapping.tables["customers"]
    assert table == TableMapping(
        subject_column="subject_id",
        controller_column="controller",
        recorded_at_column="created_at",
        columns={"name": "contact", "email": "contact", "personnummer": "identity"},
        anonymize={"email": "hash"},
        restricted_column="restricted",
    )
    assert mapping.mapped_categories() == frozenset({"contact", "identity"})
    assert table.columns_of(frozenset({"contact"})) == ["name", "email"]
    assert table.strategy("email") == "hash"
    assert table.strategy("name") is None


def test_every_strategy_and_the_optional_keys(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            target: crm
            tables:
              people:
                subject_column: ref
                controller_column: owner
                columns: {a: contact, b: identity, c: identity, d: contact, e: x, f: y, g: z}
                anonymize:
                  a: null
                  b: hash
                  c: year
                  d: {constant: "anonymised"}
                  e: {constant: 0}
                  f: {constant: false}
                  g: {constant: 1900-01-01}
            """
        ),
        encoding="utf-8",
    )
    mapping = load_mapping(path)
    assert mapping.controllers is None
    table = mapping.tables["people"]
    assert table.recorded_at_column is None
    assert table.restricted_column is None
    assert table.anonymize == {
        "a": None,
        "b": "hash",
        "c": "year",
        "d": Constant(constant="anonymised"),
        "e": Constant(constant=0),
        "f": Constant(constant=False),
        "g": Constant(constant=date(1900, 1, 1)),
    }
    # The YAML types survive: a boolean does not become 0, nor 0 False.
    assert type(table.anonymize["e"].constant) is int  # type: ignore[union-attr]
    assert type(table.anonymize["f"].constant) is bool  # type: ignore[union-attr]


def test_the_example_maps_exactly_what_inrego_sends_to_business_systems() -> None:
    mapping = load_mapping(EXAMPLE)
    pack = load_pack(ROOT / "policies" / "inrego.yaml")
    [recipient] = [r for r in pack.recipients if r.id == mapping.target]
    assert mapping.controllers == [pack.controller]
    assert mapping.mapped_categories() == frozenset(recipient.categories)


def test_concerns_filters_on_target_and_controllers() -> None:
    mapping = parse_mapping(copy.deepcopy(BASE))
    assert mapping.concerns({"target": "business-systems", "controller": "inrego"})
    assert not mapping.concerns({"target": "web-analytics", "controller": "inrego"})
    assert not mapping.concerns({"target": "business-systems", "controller": "rego"})
    anyone = parse_mapping({**copy.deepcopy(BASE), "controllers": None})
    assert anyone.concerns({"target": "business-systems", "controller": "rego"})


def test_models_are_frozen() -> None:
    mapping = parse_mapping(copy.deepcopy(BASE))
    with pytest.raises(ValueError, match="frozen"):
        mapping.target = "other"  # type: ignore[misc]
    assert isinstance(mapping, SinkMapping)


# -- broken mappings -----------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _rename_table(new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data["tables"] = {new: data["tables"].pop("customers")}

    return mutate


def _no_controllers_no_column(data: dict[str, Any]) -> None:
    del data["controllers"], customers(data)["controller_column"]


def _two_controllers_no_column(data: dict[str, Any]) -> None:
    data["controllers"] = ["inrego", "rego"]
    del customers(data)["controller_column"]


BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    (
        "anonymize-unknown-column",
        _set("tables.customers.anonymize.phone", "hash"),
        "tables.customers.anonymize.phone",
        "not a column listed in `columns`",
    ),
    (
        "bad-strategy",
        _set("tables.customers.anonymize.email", "md5"),
        "tables.customers.anonymize.email",
        "'md5' is not a strategy: must be null, 'hash', 'year' or {constant: VALUE}",
    ),
    (
        "strategy-unknown-key",
        _set("tables.customers.anonymize.email", {"const": "x"}),
        "tables.customers.anonymize.email",
        "unknown key 'const'",
    ),
    (
        "constant-null",
        _set("tables.customers.anonymize.email", {"constant": None}),
        "tables.customers.anonymize.email",
        "{constant: null} is written null",
    ),
    (
        "strategy-number",
        _set("tables.customers.anonymize.email", 5),
        "tables.customers.anonymize.email",
        "must be null, 'hash', 'year' or {constant: VALUE}",
    ),
    (
        "table-name",
        _rename_table("customers-2024"),
        "tables.customers-2024",
        "'customers-2024' is not a plain SQL identifier",
    ),
    (
        "table-name-injection",
        _rename_table("customers; DROP TABLE orders"),
        "tables.customers; DROP TABLE orders",
        "is not a plain SQL identifier",
    ),
    (
        "column-name",
        _set("tables.customers.columns.e mail", "contact"),
        "tables.customers.columns.e mail",
        "'e mail' is not a plain SQL identifier",
    ),
    (
        "column-name-digit",
        _set("tables.customers.columns.1st_name", "contact"),
        "tables.customers.columns.1st_name",
        "not starting with a digit",
    ),
    (
        "subject-column-name",
        _set("tables.customers.subject_column", "subject-id"),
        "tables.customers.subject_column",
        "'subject-id' is not a plain SQL identifier",
    ),
    ("no-tables", _set("tables", {}), "tables", "at least 1 item"),
    ("no-columns", _set("tables.customers.columns", {}), "tables.customers.columns", "at least 1"),
    (
        "empty-category",
        _set("tables.customers.columns.name", ""),
        "tables.customers.columns.name",
        "at least 1 character",
    ),
    (
        "category-list",
        _set("tables.customers.columns.name", ["contact"]),
        "tables.customers.columns.name",
        "valid string",
    ),
    ("no-target", _drop("target"), "target", "Field required"),
    ("target-spelling", _set("target", "Business Systems"), "target", "not an id"),
    ("no-controllers", _set("controllers", []), "controllers", "at least 1 item"),
    (
        "no-subject-column",
        _drop("tables.customers.subject_column"),
        "tables.customers.subject_column",
        "Field required",
    ),
    (
        "subject-column-is-personal",
        _set("tables.customers.columns.subject_id", "identity"),
        "tables.customers.subject_column",
        "'subject_id' is also listed in `columns`; the sink finds rows by it",
    ),
    (
        "recorded-at-is-personal",
        _set("tables.customers.columns.created_at", "order"),
        "tables.customers.recorded_at_column",
        "also listed in `columns`",
    ),
    (
        "two-roles-one-column",
        _set("tables.customers.restricted_column", "controller"),
        "tables.customers.restricted_column",
        "'controller' is already the controller_column",
    ),
    (
        "reserved-table",
        _rename_table("applied_commands"),
        "tables.applied_commands",
        "the name of the sink's own table",
    ),
    (
        "reserved-scopes-table",
        _rename_table("command_scopes"),
        "tables.command_scopes",
        "the name of the sink's own table",
    ),
    ("tables-not-a-mapping", _set("tables", ["customers"]), "tables", "valid dictionary"),
    (
        "no-controller-column-for-any-controller",
        _no_controllers_no_column,
        "tables.customers.controller_column",
        "required unless `controllers` names exactly one controller",
    ),
    (
        "no-controller-column-for-two-controllers",
        _two_controllers_no_column,
        "tables.customers.controller_column",
        "required unless `controllers` names exactly one controller",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [pytest.param(m, p, msg, id=name) for name, m, p, msg in BROKEN],
)
def test_a_broken_mapping_names_the_file_and_the_field(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], path: str, message: str
) -> None:
    file = write(tmp_path, mutate)
    error = failure(file)
    assert error.source == str(file)
    paths = [p for p, _ in error.problems]
    assert path in paths, error.problems
    [msg] = [m for p, m in error.problems if p == path]
    assert message in msg
    assert f"{file}: {path}: " in str(error)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def mutate(data: dict[str, Any]) -> None:
        table = customers(data)
        table["anonymize"] = {"email": "md5", "phone": "hash"}
        data["tables"]["orders"] = {"subject_column": "x", "columns": {"bad name": "order"}}

    error = failure(write(tmp_path, mutate))
    assert sorted(p for p, _ in error.problems) == [
        "tables.customers.anonymize.email",
        "tables.orders.columns.bad name",
    ]

    # The cross-field check of customers runs only once its fields are valid; fixing the
    # strategy then shows the column that is not mapped.
    def fixed(data: dict[str, Any]) -> None:
        customers(data)["anonymize"] = {"email": "hash", "phone": "hash"}

    assert failure(write(tmp_path, fixed)).problems == [
        ("tables.customers.anonymize.phone", "not a column listed in `columns`")
    ]


def test_an_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    def mutate(data: dict[str, Any]) -> None:
        customers(data)["colums"] = customers(data).pop("columns")
        data["controler"] = data.pop("controllers")

    error = failure(write(tmp_path, mutate))
    problems = dict(error.problems)
    assert problems["tables.customers.colums"].startswith(
        "unknown key; did you mean 'columns'? allowed: subject_column, controller_column, "
    )
    assert problems["controler"].startswith("unknown key; did you mean 'controllers'? ")
    assert problems["tables.customers.columns"] == "Field required"


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text(
        "target: business-systems\ntables:\n  customers:\n    columns: {name: contact\n"
        "    subject_column: subject_id\n",
        encoding="utf-8",
    )
    error = failure(path)
    [(where, message)] = error.problems
    assert where == "line 5"
    assert message.startswith("not valid YAML: ")
    assert str(error).startswith(f"{path}: line 5: not valid YAML")


def test_a_key_given_twice_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text(
        "target: business-systems\ntables:\n  customers:\n    subject_column: a\n"
        "    columns: {name: contact}\n  customers:\n    subject_column: b\n"
        "    columns: {email: contact}\n",
        encoding="utf-8",
    )
    assert failure(path).problems == [("line 6", "not valid YAML: key 'customers' appears twice")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a sink mapping is a YAML mapping (key: value)"),
        ("- customers\n", "a sink mapping is a YAML mapping (key: value)"),
    ],
)
def test_a_file_that_is_not_a_mapping(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text(text, encoding="utf-8")
    error = failure(path)
    assert error.problems == [("", message)]
    assert str(error) == f"{path}: (mapping): {message}"


def test_a_missing_file(tmp_path: Path) -> None:
    error = failure(tmp_path / "nowhere.yaml")
    assert error.problems == [("", "cannot read: No such file or directory")]
