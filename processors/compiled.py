"""A policy pack prepared for the hot path: indexes built once per pack."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from zoneinfo import ZoneInfo

from .events import Event
from .instants import CalendarDuration
from .policy import EventMatch, PolicyPack, Recipient, Rule, Trigger
from .vocabulary import CUSTOMER_ACTIONS, ORDER_ACTIONS


def matches(match: EventMatch, event: Event, role: str) -> bool:
    """Does the event fit the match (type, action, role, fields)?"""
    if match.type != event.type:
        return False
    if match.actions is not None and event.action not in match.actions:
        return False
    if match.roles is not None and role not in match.roles:
        return False
    if match.with_fields is not None and not any(f in event.fields for f in match.with_fields):
        return False
    return True


def activity_key(event: Event) -> str:
    """The `type:action` an event counts as, for sliding retention."""
    return f"{event.type}:{event.action}"


def _activity_keys(rule: Rule) -> list[str]:
    out: list[str] = []
    for m in rule.retention.activity or ():
        actions = m.actions if m.actions is not None else _ALL_ACTIONS.get(m.type, [None])
        out += [f"{m.type}:{a}" for a in actions]
    return out


_ALL_ACTIONS: dict[str, list[str | None]] = {
    "customer": [*sorted(CUSTOMER_ACTIONS)],
    "order": [*sorted(ORDER_ACTIONS)],
}


@dataclass(frozen=True, slots=True)
class RuleView:
    """A rule with its arithmetic ready."""

    rule: Rule
    index: int
    # Copies of the rule's id, purpose and `retention.from`: read for every rule of every
    # record, where a property would cost a call each time.
    id: str
    purpose: str
    kind: str
    duration: CalendarDuration
    active_for: CalendarDuration | None
    categories: int  # bitmask over the pack's categories
    objection_purposes: frozenset[str]
    activity_keys: frozenset[str]  # `type:action` events a sliding retention counts from
    consent: bool  # rests on consent: needs a grant on record


class CompiledPolicy:
    """One controller's pack with indexes: categories as bits, rules per event shape."""

    def __init__(self, pack: PolicyPack) -> None:
        self.pack = pack
        self.controller = pack.controller
        self.zone = ZoneInfo(pack.timezone)
        self.category_names: tuple[str, ...] = tuple(pack.categories)
        self.category_bit = {name: 1 << i for i, name in enumerate(self.category_names)}
        field_bits: dict[str, int] = {}
        for name, cat in pack.categories.items():
            for f in cat.fields:
                field_bits[f] = field_bits.get(f, 0) | self.category_bit[name]
        self._field_bits = field_bits
        self.rules: tuple[RuleView, ...] = tuple(
            RuleView(
                rule=r,
                index=i,
                id=r.id,
                purpose=r.purpose,
                kind=r.retention.from_,
                duration=r.retention.duration.calendar(),
                active_for=r.active_for.calendar() if r.active_for else None,
                categories=self.bits(r.categories),
                objection_purposes=frozenset([r.purpose, *r.retention.ended_by_objection_to]),
                activity_keys=frozenset(_activity_keys(r)),
                consent=r.legal_basis == "consent",
            )
            for i, r in enumerate(pack.rules)
        )
        self.rule_by_id = {v.id: v for v in self.rules}
        self.sliding_rules = tuple(v for v in self.rules if v.activity_keys)
        self.activity_keys = frozenset(k for v in self.sliding_rules for k in v.activity_keys)
        self.rights_deadline = pack.deadlines.rights.calendar()
        self.retention_deadline = pack.deadlines.retention.calendar()
        self.optout_deadline = pack.deadlines.optout.calendar()
        self._rules_cache: dict[tuple[str, str | None, str, frozenset[str]], tuple[RuleView, ...]]
        self._rules_cache = {}
        self.trigger_deadlines = {t.id: t.deadline.calendar() for t in pack.triggers}
        self._fields_cache: dict[frozenset[str], int] = {}
        self.relationship_rules = tuple(v for v in self.rules if v.kind == "relationship_end")
        self._triggers_need_fields = any(t.when.with_fields for t in pack.triggers)
        self._ends_need_fields = any(
            m.with_fields for v in self.relationship_rules for m in v.rule.retention.ended_by or ()
        )
        self._ends_cache: dict[tuple[str, str | None, str], tuple[RuleView, ...]] = {}
        self._triggers_cache: dict[tuple[str, str | None, str], tuple[Trigger, ...]] = {}

    @cached_property
    def version(self) -> str:
        """`controller@version`, carried on commands as policy_version."""
        return f"{self.controller}@{self.pack.version}"

    def bits(self, names: list[str] | tuple[str, ...] | frozenset[str]) -> int:
        """Category names to a bitmask."""
        out = 0
        for n in names:
            out |= self.category_bit[n]
        return out

    def names(self, bits: int) -> list[str]:
        """A bitmask to category names, in pack order."""
        return [n for n in self.category_names if self.category_bit[n] & bits]

    def categories_of(self, event: Event) -> int:
        """The categories an event carries, as a bitmask."""
        found = self._fields_cache.get(event.fields)
        if found is None:
            found = 0
            for f in event.fields:
                found |= self._field_bits.get(f, 0)
            if len(self._fields_cache) < 4096:
                self._fields_cache[event.fields] = found
        return found

    def rules_for(self, event: Event, role: str) -> tuple[RuleView, ...]:
        """Rules whose applies_to fits the event, in pack order (cached per event shape)."""
        key = (event.type, event.action, role, event.fields)
        found = self._rules_cache.get(key)
        if found is None:
            found = tuple(
                v for v in self.rules if any(matches(m, event, role) for m in v.rule.applies_to)
            )
            if len(self._rules_cache) < 4096:
                self._rules_cache[key] = found
        return found

    def triggers_for(self, event: Event, role: str) -> tuple[Trigger, ...]:
        """Triggers this event sets off."""
        if not self.pack.triggers:
            return ()
        key = (event.type, event.action, role)
        found = self._triggers_cache.get(key)
        if found is None:
            found = tuple(t for t in self.pack.triggers if matches(t.when, event, role))
            if not self._triggers_need_fields:
                self._triggers_cache[key] = found
        return found

    def relationships_ended_by(self, event: Event, role: str) -> tuple[RuleView, ...]:
        """The relationship_end rules whose relationship this event ends."""
        if not self.relationship_rules:
            return ()
        key = (event.type, event.action, role)
        found = self._ends_cache.get(key)
        if found is None:
            found = tuple(
                v for v in self.relationship_rules if self.ends_relationship(v, event, role)
            )
            self._ends_cache[key] = found
        return found

    def ends_relationship(self, view: RuleView, event: Event, role: str) -> bool:
        """Does the event end the relationship a relationship_end rule waits for?"""
        ended_by = view.rule.retention.ended_by
        return bool(ended_by) and any(matches(m, event, role) for m in ended_by or ())

    def recipients_for(
        self, purposes: set[str], categories: int
    ) -> list[tuple[Recipient, list[str], int]]:
        """Targets holding any of these categories for any of these purposes."""
        out = []
        for rec in self.pack.recipients:
            held = [p for p in rec.purposes if p in purposes]
            cats = self.bits(rec.categories) & categories
            if held and cats:
                out.append((rec, held, cats))
        return out
