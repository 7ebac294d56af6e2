"""Policy packs: one YAML file per controller, validated on load.

A pack states what the controller's privacy policy says, rule by rule, each rule citing
the seed text it comes from. Where the text is vague the pack picks a value and says so
in `assumption`, for the controller to confirm.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .instants import CalendarDuration
from .vocabulary import (
    CUSTOMER_ACTIONS,
    ORDER_ACTIONS,
    PURPOSES,
    ROLES,
    ErasureAction,
    LegalBasis,
    Reason,
)

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]*$", max_length=80)]


def packaged_policies() -> Path:
    """The folder of the five seed packs shipped with the package."""
    return Path(str(files("privacy_pipeline.policies").joinpath("rego.yaml"))).parent


class PolicyError(ValueError):
    """A pack that does not validate; the message names the file and the field path.

    `problems` holds (field path, message) pairs, e.g. ("rules.3.purpose", ...); the
    message shows each path as `labels` has it for a reader (the rule's id, the line).
    """

    def __init__(
        self,
        source: str,
        problems: list[tuple[str, str]],
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.source = source
        self.problems = problems
        shown = labels or {}
        lines = [f"{source}: {shown.get(path, path) or '(pack)'}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Citation(_Strict):
    """Where in the seed text a rule comes from."""

    section: str = Field(min_length=1, description="Section number or heading in the seed")
    quote: str = Field(min_length=1, description="The words of the seed the rule rests on")


class Duration(_Strict):
    """A calendar span; months and years are calendar units, never a count of days."""

    years: int = Field(0, ge=0)
    months: int = Field(0, ge=0)
    weeks: int = Field(0, ge=0)
    days: int = Field(0, ge=0)
    hours: int = Field(0, ge=0)

    def calendar(self) -> CalendarDuration:
        """The arithmetic form."""
        return CalendarDuration(self.years, self.months, self.weeks, self.days, self.hours)


class EventMatch(_Strict):
    """Which events a rule or trigger is about."""

    type: Literal["customer", "order", "click", "consent", "privacy_request"]
    actions: list[str] | None = Field(None, description="Any action when omitted")
    roles: list[str] | None = Field(None, description="Any role when omitted")
    with_fields: list[str] | None = Field(
        None, description="Only events that carry at least one of these fields"
    )

    @model_validator(mode="after")
    def _known_values(self) -> EventMatch:
        allowed = {"customer": CUSTOMER_ACTIONS, "order": ORDER_ACTIONS}.get(self.type)
        for action in self.actions or []:
            if allowed is not None and action not in allowed:
                raise ValueError(f"actions: '{action}' is not a {self.type} action")
        for role in self.roles or []:
            if role not in ROLES:
                raise ValueError(f"roles: '{role}' is not one of {sorted(ROLES)}")
        return self


RetentionFrom = Literal[
    "event",
    "latest_activity",
    "relationship_end",
    "calendar_year_end",
    "until_withdrawn",
    "until_objection",
]


class Retention(_Strict):
    """How long data kept under a rule lives.

    - event: `duration` after the event that recorded it (each record on its own);
    - latest_activity: `duration` after the latest `activity` event (sliding);
    - relationship_end: open until an `ended_by` event, then `duration`;
    - calendar_year_end: `duration` after the end of the record's calendar year
      (the Bookkeeping Act: through the seventh year after that year);
    - until_withdrawn: open until consent is withdrawn;
    - until_objection: open until the person objects.
    """

    from_: RetentionFrom = Field(alias="from")
    duration: Duration = Field(default_factory=Duration)
    activity: list[EventMatch] | None = None
    ended_by: list[EventMatch] | None = None
    ended_by_objection_to: list[str] = Field(
        default_factory=list,
        description="Purposes whose objection ends this rule too (its own purpose always does)",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> Retention:
        if self.from_ == "latest_activity" and not self.activity:
            raise ValueError("activity: required when retention is from latest_activity")
        if self.from_ == "relationship_end" and not self.ended_by:
            raise ValueError("ended_by: required when retention is from relationship_end")
        timed = {"event", "latest_activity", "calendar_year_end"}
        if self.from_ in timed and self.duration.calendar().is_zero():
            raise ValueError(f"duration: must be more than zero when from {self.from_}")
        return self


class Rule(_Strict):
    """Events of these kinds serve this purpose on this basis, for this long."""

    id: Identifier
    purpose: str
    legal_basis: LegalBasis
    inactive_legal_basis: LegalBasis | None = Field(
        None, description="Basis once the person is no longer active (see active_for)"
    )
    active_for: Duration | None = Field(
        None, description="A person counts as active this long after their latest activity"
    )
    applies_to: list[EventMatch] = Field(min_length=1)
    categories: list[str] = Field(min_length=1)
    retention: Retention
    on_expiry: ErasureAction = "erase"
    on_erasure_request: ErasureAction | None = Field(
        None, description="Default: restrict under a legal obligation, else erase"
    )
    cites: list[Citation] = Field(min_length=1)
    assumption: str | None = None

    @model_validator(mode="after")
    def _basis(self) -> Rule:
        if self.legal_basis == "consent" and self.retention.from_ != "until_withdrawn":
            raise ValueError("retention.from: a rule resting on consent lasts until_withdrawn")
        if (self.inactive_legal_basis is None) != (self.active_for is None):
            raise ValueError("inactive_legal_basis and active_for go together")
        if self.inactive_legal_basis and self.retention.from_ != "latest_activity":
            raise ValueError("inactive_legal_basis needs retention from latest_activity")
        return self

    @property
    def erasure_action(self) -> ErasureAction:
        """What an erasure request does to this rule's data."""
        if self.on_erasure_request is not None:
            return self.on_erasure_request
        return "restrict" if self.legal_basis == "legal_obligation" else "erase"


class Trigger(_Strict):
    """An event that ends purposes at once, e.g. an account the person closed."""

    id: Identifier
    when: EventMatch
    reason: Reason
    purposes: list[str] = Field(min_length=1)
    action: ErasureAction
    deadline: Duration
    cites: list[Citation] = Field(min_length=1)
    assumption: str | None = None


class Category(_Strict):
    """A category of personal data and the event fields that carry it."""

    description: str
    fields: list[str] = Field(min_length=1)


class Recipient(_Strict):
    """A downstream target system that holds some categories for some purposes."""

    id: Identifier
    description: str
    categories: list[str] = Field(min_length=1)
    purposes: list[str] = Field(min_length=1)
    cites: list[Citation] = Field(min_length=1)
    assumption: str | None = None


class Deadlines(_Strict):
    """How long a target has to act on a command."""

    rights: Duration = Field(
        default_factory=lambda: Duration(months=1),
        description="Data-subject rights: GDPR art. 12(3), one month",
    )
    retention: Duration = Field(
        default_factory=lambda: Duration(days=1),
        description="Culling when retention lapses or a relationship ends",
    )
    optout: Duration = Field(
        default_factory=lambda: Duration(days=1),
        description="Removing data after a consent withdrawal or an objection: at once, "
        "so the same short deadline as culling",
    )


class RightsCitations(_Strict):
    """Where the seed states the rights the pipeline answers."""

    erasure: list[Citation] = Field(default_factory=list)
    access: list[Citation] = Field(default_factory=list)
    objection: list[Citation] = Field(default_factory=list)
    restriction: list[Citation] = Field(default_factory=list)
    consent: list[Citation] = Field(default_factory=list)


class PolicyPack(_Strict):
    """The whole policy of one controller."""

    controller: Identifier
    name: str | None = Field(description="The controller's name, null where the seed omits it")
    org_nr: str | None = Field(None, pattern=r"^\d{6}-\d{4}$")
    seed: str = Field(description="The seed file this pack encodes")
    version: str = Field(min_length=1)
    timezone: str = "Europe/Stockholm"
    contact: str | None = None
    custom_purposes: list[str] = Field(default_factory=list)
    categories: dict[str, Category]
    recipients: list[Recipient] = Field(min_length=1)
    rules: list[Rule] = Field(min_length=1)
    triggers: list[Trigger] = Field(default_factory=list)
    deadlines: Deadlines = Field(default_factory=Deadlines)
    rights: RightsCitations = Field(default_factory=RightsCitations)
    assumptions: list[str] = Field(default_factory=list, description="Pack-wide assumptions")

    @model_validator(mode="after")
    def _references(self) -> PolicyPack:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: '{self.timezone}' is not an IANA time zone") from None
        purposes = PURPOSES | set(self.custom_purposes)
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            where = f"rules.{i}"
            if rule.id in seen:
                raise ValueError(f"{where}.id: duplicate rule id '{rule.id}'")
            seen.add(rule.id)
            if rule.purpose not in purposes:
                raise ValueError(f"{where}.purpose: '{rule.purpose}' is not a known purpose")
            self._check_categories(f"{where}.categories", rule.categories)
            for p in rule.retention.ended_by_objection_to:
                if p not in purposes:
                    raise ValueError(f"{where}.retention.ended_by_objection_to: '{p}' unknown")
        for i, trig in enumerate(self.triggers):
            for p in trig.purposes:
                if p not in purposes:
                    raise ValueError(f"triggers.{i}.purposes: '{p}' is not a known purpose")
        for i, rec in enumerate(self.recipients):
            self._check_categories(f"recipients.{i}.categories", rec.categories)
            for p in rec.purposes:
                if p not in purposes:
                    raise ValueError(f"recipients.{i}.purposes: '{p}' is not a known purpose")
        return self

    def _check_categories(self, where: str, names: list[str]) -> None:
        for name in names:
            if name not in self.categories:
                raise ValueError(f"{where}: '{name}' is not a category of this pack")


def pack_schema() -> dict[str, Any]:
    """JSON Schema of a policy pack, for editors."""
    schema = PolicyPack.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "privacy-pipeline policy pack"
    return schema


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # Cross-field checks name their own path inside the message: "rules.3.purpose: ..."
        if ": " in msg and msg.split(": ", 1)[0].replace(".", "").replace("_", "").isalnum():
            sub, msg = msg.split(": ", 1)
            path = f"{path}.{sub}" if path else sub
        out.append((path, msg))
    return out


def load_pack(path: str | Path) -> PolicyPack:
    """Read and validate one pack file; raise PolicyError naming the file and field."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(source, [("", f"cannot read: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where, problem = _yaml_problem(exc)
        raise PolicyError(source, [(where, problem)]) from None
    if not isinstance(data, dict):
        raise PolicyError(source, [("", "a pack is a YAML mapping")])
    try:
        return PolicyPack.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        root = yaml.compose(text)
        labels = {path: _where(path, data, root) for path, _ in problems}
        raise PolicyError(source, problems, labels) from None


def _yaml_problem(exc: yaml.YAMLError) -> tuple[str, str]:
    """Where the YAML parser stopped, and what it found wrong there."""
    mark = getattr(exc, "problem_mark", None)
    where = "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None) or "not valid YAML"
    context = getattr(exc, "context", None)
    return where, f"not valid YAML: {problem}" + (f" ({context})" if context else "")


# Lists whose items have an id: an error in one names the item by its id, not its index.
_LISTS_WITH_IDS = ("rules", "recipients", "triggers")


def _where(path: str, data: dict[str, Any], root: yaml.Node | None) -> str:
    """`path` (e.g. `rules.3.retention.duration`) as a reader finds it in the file: the
    item's id after its index, and the line of the deepest part of the path present."""
    parts = path.split(".") if path else []
    shown = path or "(pack)"
    if len(parts) >= 2 and parts[0] in _LISTS_WITH_IDS and parts[1].isdigit():
        items = data.get(parts[0])
        index = int(parts[1])
        if isinstance(items, list) and index < len(items) and isinstance(items[index], dict):
            item_id = items[index].get("id")
            if item_id is not None:
                rest = ".".join(parts[2:])
                shown = f"{parts[0]}[{index}] (id {item_id})" + (f".{rest}" if rest else "")
    line = _line(root, parts)
    return shown if line is None else f"{shown} (line {line})"


def _line(node: yaml.Node | None, parts: list[str]) -> int | None:
    """The 1-based line of the node at `parts`, or of its deepest ancestor in the file."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in parts:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    child, line = value, key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            child = node.value[int(part)]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def pack_files(path: str | Path) -> list[Path]:
    """The pack files at `path`: the file itself, or the *.yaml files of a folder."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in {".yaml", ".yml"} and f.is_file())
    return [p]


def load_packs(path: str | Path) -> dict[str, PolicyPack]:
    """Load a pack file or a folder of packs, keyed by controller id."""
    packs: dict[str, PolicyPack] = {}
    files = pack_files(path)
    if not files:
        raise PolicyError(str(path), [("", "no policy packs (*.yaml) found")])
    for f in files:
        pack = load_pack(f)
        if pack.controller in packs:
            raise PolicyError(str(f), [("controller", f"'{pack.controller}' defined twice")])
        packs[pack.controller] = pack
    return packs
