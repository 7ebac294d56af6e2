"""Policy packs: the five seeds load; broken packs fail naming the file and the field path."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from privacy_pipeline.cli.main import main
from privacy_pipeline.processors.compiled import CompiledPolicy
from privacy_pipeline.processors.policy import (
    PolicyError,
    PolicyPack,
    load_pack,
    load_packs,
    pack_files,
    pack_schema,
)
from privacy_pipeline.processors.vocabulary import PURPOSES

POLICIES = Path(__file__).resolve().parents[3] / "policies"
CONTROLLERS = ["inrego", "iret", "rego", "rejoin", "unnamed004"]
BASE: dict[str, Any] = yaml.safe_load((POLICIES / "unnamed004.yaml").read_text(encoding="utf-8"))


def write_pack(folder: Path, name: str, mutate: Callable[[dict[str, Any]], None]) -> Path:
    data = copy.deepcopy(BASE)
    mutate(data)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def failure(path: Path) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_pack(path)
    return info.value


# -- the five seed packs -------------------------------------------------------------------


def test_all_five_packs_load_keyed_by_controller() -> None:
    packs = load_packs(POLICIES)
    assert sorted(packs) == CONTROLLERS
    assert {c: len(p.rules) for c, p in packs.items()} == {
        "inrego": 7,
        "iret": 5,
        "rego": 5,
        "rejoin": 4,
        "unnamed004": 4,
    }
    assert [f.name for f in pack_files(POLICIES)] == [f"{c}.yaml" for c in CONTROLLERS]


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_each_seed_pack_is_consistent(controller: str) -> None:
    pack = load_pack(POLICIES / f"{controller}.yaml")
    assert pack.controller == controller
    assert pack.timezone == "Europe/Stockholm"
    for rule in pack.rules:
        assert rule.purpose in PURPOSES
        assert rule.cites
        if rule.legal_basis == "consent":
            assert rule.retention.from_ == "until_withdrawn"
        for cat in rule.categories:
            assert cat in pack.categories
    # Bookkeeping is a legal obligation everywhere, and an erasure request restricts it.
    bookkeeping = [r for r in pack.rules if r.purpose == "bookkeeping"]
    assert len(bookkeeping) == 1
    assert bookkeeping[0].legal_basis == "legal_obligation"
    assert bookkeeping[0].erasure_action == "restrict"
    CompiledPolicy(pack)  # the arithmetic form builds too


def test_seed_pack_details_as_read() -> None:
    packs = load_packs(POLICIES)
    inrego = {r.id: r for r in packs["inrego"].rules}
    analytics = inrego["inrego.analytics.web-visits"]
    assert (analytics.legal_basis, analytics.retention.from_) == ("legitimate_interest", "event")
    assert analytics.retention.duration.months == 24
    assert inrego["inrego.account.user-accounts"].on_expiry == "anonymize"
    assert packs["rego"].name == "RE&GO AB"
    assert packs["unnamed004"].name is None
    assert [t.id for t in packs["inrego"].triggers] == ["inrego.account.closed-by-person"]
    rego_dm = next(r for r in packs["rego"].rules if r.purpose == "direct_marketing")
    assert rego_dm.legal_basis == "consent"


# -- broken packs --------------------------------------------------------------------------


def test_unknown_purpose_names_file_and_rule_path(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "p", lambda d: d["rules"][1].__setitem__("purpose", "astrology"))
    err = failure(path)
    assert err.source == str(path)
    assert err.problems == [("rules.1.purpose", "'astrology' is not a known purpose")]
    # The message names the rule by its id and the line, as a reader finds it in the file.
    assert str(err) == (
        f"{path}: rules[1] (id unnamed004.bookkeeping.invoices).purpose (line 109): "
        "'astrology' is not a known purpose"
    )


def test_custom_purpose_is_allowed_when_declared(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["custom_purposes"] = ["astrology"]
        d["rules"][1]["purpose"] = "astrology"

    assert load_pack(write_pack(tmp_path, "p", mutate)).rules[1].purpose == "astrology"


def test_unknown_category_in_rule(tmp_path: Path) -> None:
    path = write_pack(
        tmp_path, "p", lambda d: d["rules"][2].__setitem__("categories", ["technical", "dna"])
    )
    err = failure(path)
    assert err.problems == [("rules.2.categories", "'dna' is not a category of this pack")]
    assert str(path) in str(err)


def test_unknown_category_in_recipient(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "p", lambda d: d["recipients"][1].__setitem__("categories", ["x"]))
    assert failure(path).problems == [
        ("recipients.1.categories", "'x' is not a category of this pack")
    ]


def test_unknown_purpose_in_recipient_and_trigger(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "r", lambda d: d["recipients"][0].__setitem__("purposes", ["x"]))
    assert failure(path).problems == [("recipients.0.purposes", "'x' is not a known purpose")]

    trigger = {
        "id": "t1",
        "when": {"type": "customer", "actions": ["closed"]},
        "reason": "account_closed",
        "purposes": ["x"],
        "action": "erase",
        "deadline": {"months": 1},
        "cites": [{"section": "1", "quote": "q"}],
    }
    path = write_pack(tmp_path, "t", lambda d: d.__setitem__("triggers", [trigger]))
    assert failure(path).problems == [("triggers.0.purposes", "'x' is not a known purpose")]


@pytest.mark.parametrize(
    "retention", [{"from": "event", "duration": {"months": 6}}, {"from": "until_objection"}]
)
def test_consent_rule_must_last_until_withdrawn(tmp_path: Path, retention: dict[str, Any]) -> None:
    assert BASE["rules"][3]["legal_basis"] == "consent"
    path = write_pack(tmp_path, "p", lambda d: d["rules"][3].__setitem__("retention", retention))
    err = failure(path)
    assert err.problems == [
        ("rules.3.retention.from", "a rule resting on consent lasts until_withdrawn")
    ]
    assert str(path) in str(err)


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("controller: x\nrules: [\n  - a: b\n", encoding="utf-8")
    err = failure(path)
    # Where the parser stopped, and what it found there.
    assert err.problems == [
        (
            "line 3, column 3",
            "not valid YAML: expected the node content, but found '-' (while parsing a flow node)",
        )
    ]
    assert str(err).startswith(f"{path}: line 3, column 3: not valid YAML: expected")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_a_pack_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    assert failure(path).problems == [("", "a pack is a YAML mapping")]
    assert str(failure(path)) == f"{path}: (pack): a pack is a YAML mapping"


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    err = failure(tmp_path / "absent.yaml")
    assert err.source == str(tmp_path / "absent.yaml")
    assert err.problems[0][1].startswith("cannot read")


def test_duplicate_rule_id(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "p", lambda d: d["rules"][1].__setitem__("id", d["rules"][0]["id"]))
    assert failure(path).problems == [
        ("rules.1.id", "duplicate rule id 'unnamed004.contract.customers-and-suppliers'")
    ]


def test_unknown_key_in_rule(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "p", lambda d: d["rules"][0].__setitem__("colour", "red"))
    assert failure(path).problems == [("rules.0.colour", "Extra inputs are not permitted")]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "p", lambda d: d.__setitem__("colour", "red"))
    assert failure(path).problems == [("colour", "Extra inputs are not permitted")]


def test_unknown_key_in_retention(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "p", lambda d: d["rules"][1]["retention"].__setitem__("x", 1))
    assert failure(path).problems == [("rules.1.retention.x", "Extra inputs are not permitted")]


def test_bad_legal_basis(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "p", lambda d: d["rules"][0].__setitem__("legal_basis", "vibes"))
    [(where, msg)] = failure(path).problems
    assert where == "rules.0.legal_basis"
    assert "legal_obligation" in msg


def test_bad_action_in_match(tmp_path: Path) -> None:
    path = write_pack(
        tmp_path, "p", lambda d: d["rules"][0]["applies_to"][0].__setitem__("actions", ["boom"])
    )
    assert failure(path).problems == [
        ("rules.0.applies_to.0.actions", "'boom' is not a customer action")
    ]


def test_relationship_end_needs_ended_by(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "p", lambda d: d["rules"][0]["retention"].pop("ended_by"))
    assert failure(path).problems == [
        ("rules.0.retention.ended_by", "required when retention is from relationship_end")
    ]


def test_timed_retention_needs_a_duration(tmp_path: Path) -> None:
    path = write_pack(
        tmp_path, "p", lambda d: d["rules"][1]["retention"].__setitem__("duration", {})
    )
    assert failure(path).problems == [
        ("rules.1.retention.duration", "must be more than zero when from calendar_year_end")
    ]


def test_negative_duration(tmp_path: Path) -> None:
    path = write_pack(
        tmp_path, "p", lambda d: d["rules"][1]["retention"].__setitem__("duration", {"years": -1})
    )
    [(where, _)] = failure(path).problems
    assert where == "rules.1.retention.duration.years"


def test_bad_org_nr(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "p", lambda d: d.__setitem__("org_nr", "12345"))
    [(where, _)] = failure(path).problems
    assert where == "org_nr"


def test_unknown_timezone_is_rejected_on_load(tmp_path: Path) -> None:
    # A zone that does not exist must fail validation naming `timezone`, not pass
    # `policy check` and crash later when the pack is compiled (ZoneInfoNotFoundError).
    path = write_pack(tmp_path, "p", lambda d: d.__setitem__("timezone", "Mars/Olympus_Mons"))
    err = failure(path)
    assert [where for where, _ in err.problems] == ["timezone"]


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["rules"][0]["colour"] = "red"
        d["rules"][1]["legal_basis"] = "vibes"

    paths = {where for where, _ in failure(write_pack(tmp_path, "p", mutate)).problems}
    assert paths == {"rules.0.colour", "rules.1.legal_basis"}


def test_load_packs_rejects_a_controller_defined_twice(tmp_path: Path) -> None:
    write_pack(tmp_path, "a", lambda d: None)
    second = write_pack(tmp_path, "b", lambda d: None)
    with pytest.raises(PolicyError) as info:
        load_packs(tmp_path)
    assert info.value.source == str(second)
    assert info.value.problems == [("controller", "'unnamed004' defined twice")]


def test_load_packs_on_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_packs(tmp_path)
    assert info.value.problems == [("", "no policy packs (*.yaml) found")]


def test_load_packs_accepts_a_single_file() -> None:
    assert list(load_packs(POLICIES / "rego.yaml")) == ["rego"]


# -- JSON Schema ---------------------------------------------------------------------------


def test_pack_schema_is_json_schema_ish() -> None:
    schema = pack_schema()
    json.dumps(schema)  # serialisable
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "privacy-pipeline policy pack"
    assert schema["type"] == "object"
    assert {"rules", "recipients", "categories", "triggers", "controller"} <= set(
        schema["properties"]
    )
    assert {"controller", "rules", "recipients", "categories"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
    # Retention is written `from:` in YAML: the schema uses the alias.
    retention = schema["$defs"]["Retention"]
    assert "from" in retention["properties"]
    assert "from_" not in retention["properties"]
    assert "from" in retention["required"]


def test_pack_schema_refs_resolve() -> None:
    schema = pack_schema()
    text = json.dumps(schema)
    defs = schema["$defs"]
    for name in defs:
        assert f"#/$defs/{name}" in text or name == "PolicyPack"
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/$defs/')[1:]}:
        assert ref in defs


def test_seed_packs_satisfy_their_own_schema_shape() -> None:
    schema = pack_schema()
    for path in pack_files(POLICIES):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert set(schema["required"]) <= set(data)
        assert set(data) <= set(schema["properties"])
        PolicyPack.model_validate(data)


# -- `privacy-pipeline policy check` and `policy schema` -----------------------------------


def test_policy_check_on_the_seed_folder_exits_0() -> None:
    result = CliRunner().invoke(main, ["policy", "check", str(POLICIES)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert all(": ok (" in line for line in lines)
    assert lines[0] == (
        f"{POLICIES / 'inrego.yaml'}: ok (inrego: 7 rules, 1 triggers, 6 recipients, "
        "4 assumptions to confirm)"
    )


def test_policy_check_defaults_to_the_seed_packs() -> None:
    result = CliRunner().invoke(main, ["policy", "check"])
    assert result.exit_code == 0
    assert result.stdout.count(": ok (") == 5


def test_policy_check_on_a_broken_file_exits_1_naming_file_and_field(tmp_path: Path) -> None:
    path = write_pack(tmp_path, "p", lambda d: d["rules"][1].__setitem__("purpose", "astrology"))
    result = CliRunner().invoke(main, ["policy", "check", str(path)])
    assert result.exit_code == 1
    assert (
        f"{path}: rules[1] (id unnamed004.bookkeeping.invoices).purpose (line 109): "
        "'astrology' is not a known purpose"
    ) in result.stderr
    assert "1 of 1 packs invalid" in result.stderr
    assert result.stdout == ""


def test_policy_check_folder_with_one_bad_pack_exits_1(tmp_path: Path) -> None:
    write_pack(tmp_path, "good", lambda d: None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("controller: [\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["policy", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path / 'good.yaml'}: ok (unnamed004:" in result.stdout
    assert f"{bad}: line 2, column 1: not valid YAML: expected the node content" in result.stderr
    assert "1 of 2 packs invalid" in result.stderr


def test_policy_check_empty_folder_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["policy", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert "no policy packs" in result.stderr


def test_policy_check_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["policy", "check", str(tmp_path / "absent")])
    assert result.exit_code == 2


def test_policy_schema_prints_the_schema() -> None:
    result = CliRunner().invoke(main, ["policy", "schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(json.dumps(pack_schema()))


@pytest.mark.parametrize("args", [["policy", "--help"], ["policy", "check", "--help"]])
def test_policy_help(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0
    assert "Usage:" in result.stdout


def test_an_error_in_a_recipient_or_a_nested_field_names_its_id_and_line(tmp_path: Path) -> None:
    def break_it(d: dict[str, Any]) -> None:
        d["rules"][2]["retention"]["duration"] = {"months": -3}

    path = write_pack(tmp_path, "p", break_it)
    err = failure(path)
    [(field, _)] = err.problems
    assert field == "rules.2.retention.duration.months"  # the machine path stays as it was
    lines = path.read_text(encoding="utf-8").splitlines()
    [line] = [n for n, text in enumerate(lines, 1) if "months: -3" in text]
    assert (
        f"rules[2] (id unnamed004.analytics.digital-services).retention.duration.months "
        f"(line {line}): " in str(err)
    )
