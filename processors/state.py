"""What the pipeline remembers about one subject: no personal data, only facts about it.

The state holds which rules keep data about the person, since when and until when, the
consent ledger and restrictions, never the values themselves (no names, e-mails, IPs).
"""

from __future__ import annotations

import marshal
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from hashlib import blake2b
from sys import byteorder, intern
from typing import Any

from .consent import EMPTY_LEDGER, ConsentEntry, ConsentLedger
from .instants import EPOCH, parse_instant

MICROSECOND = timedelta(microseconds=1)


def _at(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def micros(at: datetime) -> int:
    """`at` as integer microseconds since the epoch (how states store instants)."""
    return (at - EPOCH) // MICROSECOND


def _le_bytes(values: array) -> bytes:  # type: ignore[type-arg]
    """An array of int64 as little-endian bytes, whatever the machine's byte order."""
    if byteorder == "little":
        return values.tobytes()
    swapped = array("q", values)
    swapped.byteswap()
    return swapped.tobytes()


def _from_le_bytes(data: bytes) -> array:  # type: ignore[type-arg]
    values = array("q")
    values.frombytes(data)
    if byteorder != "little":
        values.byteswap()
    return values


# In `SubjectState.restricted`: every purpose, for a restriction request that names none.
RESTRICT_ALL = "*"

# Redelivery after a crash repeats recent events; a window per subject catches it
# without keeping every id the person ever had.
DEDUP_WINDOW = 16


@dataclass(slots=True)
class RuleHold:
    """Data kept about the subject under one rule."""

    categories: int  # bitmask over the pack's categories
    last: datetime  # latest record
    anchor: datetime | None = None  # latest activity, or the end of the relationship
    ended: bool = False  # the relationship ended (anchor is its end)
    # Per-record retention: instants of the records still held, epoch microseconds, sorted.
    pending: array | None = None  # type: ignore[type-arg]
    restricted: bool = False
    due: datetime | None = None


# The fields of an `erasure` decision, in the order a tracked command packs them: the
# names are implied by the position, so an open command does not carry a dict of them.
COMMAND_FIELDS = (
    "command_id",
    "controller",
    "subject_id",
    "target",
    "action",
    "purposes",
    "categories",
    "reason",
    "rule",
    "issued_at",
    "deadline",
    "due_at",
    "request_id",
    "recorded_before",
)
_OPTIONAL_FIELDS = frozenset({"request_id", "recorded_before"})
_IMPLIED = frozenset({"decision", "attempt", *COMMAND_FIELDS})


def pack_command(decision: dict[str, Any]) -> bytes:
    """An erasure decision as compact bytes (its values by position, `marshal`led)."""
    extra = {k: v for k, v in decision.items() if k not in _IMPLIED}
    values = tuple(
        tuple(v) if isinstance(v := decision.get(k), list) else v for k in COMMAND_FIELDS
    )
    return marshal.dumps((*values, extra or None))


def unpack_command(packed: bytes, attempt: int) -> dict[str, Any]:
    """Inverse of `pack_command`, with the attempt the command is at."""
    *values, extra = marshal.loads(packed)  # noqa: S302 - our own changelog's bytes
    decision: dict[str, Any] = {"decision": "erasure"}
    for name, value in zip(COMMAND_FIELDS, values, strict=True):
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        decision[name] = list(value) if isinstance(value, tuple) else value
    if extra:
        decision.update(extra)
    decision["attempt"] = attempt
    return decision


class TrackedCommand:
    """An erasure command issued and not yet answered (see `tracker`).

    Kept small, as many may be open at once while a target is down (issue 9: <= 512 B
    each): the decision is packed bytes, decoded only to issue it again or escalate it,
    and the next try is epoch microseconds. The deadline is the decision's own.
    """

    __slots__ = ("attempt", "packed", "wait_until")

    def __init__(self, decision: dict[str, Any], attempt: int, next_try: datetime | None) -> None:
        self.packed = pack_command(decision)
        self.attempt = attempt
        self.wait_until: int | None = None if next_try is None else micros(next_try)

    @classmethod
    def from_packed(cls, packed: bytes, attempt: int, wait_until: int | None) -> TrackedCommand:
        """As `pack_state` wrote it."""
        tracked = cls.__new__(cls)
        tracked.packed, tracked.attempt, tracked.wait_until = packed, attempt, wait_until
        return tracked

    @property
    def decision(self) -> dict[str, Any]:
        """The command as issued last: its decision at the current attempt."""
        return unpack_command(self.packed, self.attempt)

    @property
    def deadline(self) -> datetime:
        """When the target must have acted."""
        return parse_instant(str(self.decision["deadline"]))

    @property
    def next_try(self) -> datetime | None:
        """When to issue it again; None once escalated (no more re-issues)."""
        return None if self.wait_until is None else _at(self.wait_until)

    @next_try.setter
    def next_try(self, value: datetime | None) -> None:
        self.wait_until = None if value is None else micros(value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrackedCommand):
            return NotImplemented
        return (self.packed, self.attempt, self.wait_until) == (
            other.packed,
            other.attempt,
            other.wait_until,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"TrackedCommand({self.decision!r}, attempt={self.attempt}, next_try={self.next_try})"
        )


@dataclass(slots=True)
class TrackedRequest:
    """A privacy request being answered: each of its commands' outcome so far."""

    right: str
    received_at: datetime
    due_at: datetime  # one month after receipt, GDPR art. 12(3)
    outcomes: dict[str, list[str]]  # command_id -> [target, outcome]


@dataclass(slots=True)
class SubjectState:
    """Everything decided so far about one `controller:subject_id`."""

    role: str = "customer"
    holds: dict[str, RuleHold] = field(default_factory=dict)
    ledger: ConsentLedger = EMPTY_LEDGER
    restricted: frozenset[str] = frozenset()
    sources: int = 0  # bitmask of event types seen
    categories: int = 0  # bitmask of the categories the person has given us
    # Latest instant per activity (`order:placed`, `customer:contacted`, ...) that a
    # sliding retention counts from.
    activity: dict[str, datetime] | None = None
    # 8-byte digests of the latest event ids, oldest first; bytes are the most compact
    # container Python has for them (an array costs twice the header).
    recent: bytes = b""
    # Erasure commands issued and not answered yet, by command_id (the tracker's).
    commands: dict[str, TrackedCommand] | None = None
    # Privacy requests whose commands are not all settled, by request_id (the tracker's).
    requests: dict[str, TrackedRequest] | None = None
    # The instant the driver's timer index (Replay, the live worker) holds for this
    # subject; bookkeeping of the driver, derived again after a restore, never serialised.
    timer: datetime | None = None

    def seen(self, event_id: str) -> bool:
        """True if the event was already applied (redelivery); else remember it."""
        digest = blake2b(event_id.encode(), digest_size=8).digest()
        recent = self.recent
        at = recent.find(digest)
        while at != -1:
            if at % 8 == 0:
                return True
            at = recent.find(digest, at + 1)
        recent += digest
        if len(recent) > 8 * DEDUP_WINDOW:
            recent = recent[8:]
        self.recent = recent
        return False

    def recent_digests(self) -> list[int]:
        """The remembered event-id digests, oldest first."""
        r = self.recent
        return [int.from_bytes(r[i : i + 8], "little") for i in range(0, len(r), 8)]

    def next_due(self) -> datetime | None:
        """The earliest instant a retention timer, or a command's wait, of this subject ends."""
        due: datetime | None = None
        for hold in self.holds.values():
            if hold.due is not None and (due is None or hold.due < due):
                due = hold.due
        if self.commands:
            waits = [c.wait_until for c in self.commands.values() if c.wait_until is not None]
            if waits:
                first = _at(min(waits))
                due = first if due is None or first < due else due
        return due

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for tables and snapshots."""

        # Instants as epoch microseconds: exact, and far cheaper than ISO text on the hot
        # path (the live worker writes the changed states of every micro-batch).
        def t(v: datetime | None) -> int | None:
            return None if v is None else (v - EPOCH) // MICROSECOND

        return {
            "role": self.role,
            "holds": {
                rid: {
                    "c": h.categories,
                    "l": t(h.last),
                    "a": t(h.anchor),
                    "e": h.ended,
                    "p": None if h.pending is None else list(h.pending),
                    "r": h.restricted,
                    "d": t(h.due),
                }
                for rid, h in self.holds.items()
            },
            "ledger": [
                [e.purpose, e.action, e.channel, t(e.at), e.event_id] for e in self.ledger.entries
            ],
            "restricted": sorted(self.restricted),
            "sources": self.sources,
            "categories": self.categories,
            "activity": None
            if self.activity is None
            else {k: t(v) for k, v in sorted(self.activity.items())},
            "recent": self.recent_digests(),
            "commands": [
                [c.decision, c.attempt, c.wait_until] for c in (self.commands or {}).values()
            ],
            "requests": [
                [rid, r.right, t(r.received_at), t(r.due_at), r.outcomes]
                for rid, r in (self.requests or {}).items()
            ],
        }

    def pack(self) -> tuple[Any, ...]:
        """A compact positional form of only tuples, ints, strings and bytes.

        What the live worker writes to its changelog for every changed subject of every
        micro-batch: about a third of `to_dict` + JSON in CPU and half in bytes.
        """

        def t(v: datetime | None) -> int | None:
            return None if v is None else (v - EPOCH) // MICROSECOND

        return (
            self.role,
            tuple(
                (
                    rid,
                    h.categories,
                    t(h.last),
                    t(h.anchor),
                    h.ended,
                    None if h.pending is None else _le_bytes(h.pending),
                    h.restricted,
                    t(h.due),
                )
                for rid, h in self.holds.items()
            ),
            tuple(
                (e.purpose, e.action, e.channel, t(e.at), e.event_id) for e in self.ledger.entries
            ),
            tuple(sorted(self.restricted)),
            self.sources,
            self.categories,
            None if self.activity is None else tuple((k, t(v)) for k, v in self.activity.items()),
            self.recent,
            None
            if not self.commands
            else tuple((c.packed, c.attempt, c.wait_until) for c in self.commands.values()),
            None
            if not self.requests
            else tuple(
                (rid, r.right, t(r.received_at), t(r.due_at), r.outcomes)
                for rid, r in self.requests.items()
            ),
        )

    @classmethod
    def unpack(cls, packed: tuple[Any, ...]) -> SubjectState:
        """Inverse of pack."""
        role, holds, ledger, restricted, sources, categories, activity, recent = packed[:8]
        tracked = packed[8] if len(packed) > 8 else None  # absent from older changelogs
        requests = packed[9] if len(packed) > 9 else None
        return cls(
            role=intern(role),
            holds={
                intern(rid): RuleHold(
                    categories=c,
                    last=_at(last),
                    anchor=None if anchor is None else _at(anchor),
                    ended=ended,
                    pending=None if pending is None else _from_le_bytes(pending),
                    restricted=restricted_hold,
                    due=None if due is None else _at(due),
                )
                for rid, c, last, anchor, ended, pending, restricted_hold, due in holds
            },
            ledger=ConsentLedger(
                tuple(
                    ConsentEntry(
                        purpose=intern(p),
                        action=intern(a),
                        channel=intern(ch),
                        at=_at(at),
                        event_id=e,
                    )
                    for p, a, ch, at, e in ledger
                )
            ),
            restricted=frozenset(restricted),
            sources=sources,
            categories=categories,
            activity=None if activity is None else {intern(k): _at(v) for k, v in activity},
            recent=bytes(recent),
            commands=None if not tracked else dict(_unpack_tracked(entry) for entry in tracked),
            requests=None
            if not requests
            else {
                rid: TrackedRequest(right, _at(received), _at(due), dict(outcomes))
                for rid, right, received, due, outcomes in requests
            },
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubjectState:
        """Inverse of to_dict."""

        def t(v: int | None) -> datetime | None:
            return None if v is None else EPOCH + timedelta(microseconds=v)

        holds = {}
        for rid, h in data["holds"].items():
            last = t(h["l"])
            assert last is not None  # noqa: S101 - written by to_dict
            holds[rid] = RuleHold(
                categories=h["c"],
                last=last,
                anchor=t(h["a"]),
                ended=h["e"],
                pending=None if h["p"] is None else array("q", h["p"]),
                restricted=h["r"],
                due=t(h["d"]),
            )
        ledger = ConsentLedger(
            tuple(
                ConsentEntry(
                    purpose=intern(p), action=intern(a), channel=intern(c), at=_at(at), event_id=e
                )
                for p, a, c, at, e in data["ledger"]
            )
        )
        return cls(
            role=intern(data["role"]),
            holds=holds,
            ledger=ledger,
            restricted=frozenset(data["restricted"]),
            sources=data["sources"],
            categories=data.get("categories", 0),
            activity=None
            if data.get("activity") is None
            else {intern(k): _at(v) for k, v in data["activity"].items()},
            recent=b"".join(int(d).to_bytes(8, "little") for d in data["recent"]),
            commands={
                str(entry[0]["command_id"]): TrackedCommand(dict(entry[0]), entry[1], t(entry[-1]))
                for entry in data["commands"]
            }
            if data.get("commands")
            else None,
            requests={
                rid: TrackedRequest(right, _at(rec), _at(due), dict(outcomes))
                for rid, right, rec, due, outcomes in data["requests"]
            }
            if data.get("requests")
            else None,
        )


def _unpack_tracked(entry: tuple[Any, ...]) -> tuple[str, TrackedCommand]:
    """(command_id, command) of a packed open command; changelogs written before commands
    were packed hold (decision, attempt, deadline, next_try) instead."""
    if len(entry) == 4:
        decision, attempt, _deadline, next_try = entry
        return str(decision["command_id"]), TrackedCommand(
            dict(decision), attempt, None if next_try is None else _at(next_try)
        )
    packed, attempt, wait_until = entry
    tracked = TrackedCommand.from_packed(packed, attempt, wait_until)
    return str(marshal.loads(packed)[0]), tracked  # noqa: S302 - our own changelog's bytes
