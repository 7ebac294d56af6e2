"""The consent ledger: an append-only record per subject; the current state is derived."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

ConsentStatus = Literal["granted", "withdrawn", "objected"]
_STATUS: dict[str, ConsentStatus] = {
    "grant": "granted",
    "withdraw": "withdrawn",
    "object": "objected",
}


@dataclass(frozen=True, slots=True)
class ConsentEntry:
    """One grant, withdrawal or objection, as the person gave it."""

    purpose: str
    action: str  # grant, withdraw, object
    channel: str  # email, sms, post, phone, web, or `request` for a privacy request
    at: datetime
    event_id: str


@dataclass(frozen=True, slots=True)
class ConsentLedger:
    """Entries in the order they took effect; never rewritten, only appended to."""

    entries: tuple[ConsentEntry, ...] = ()

    def append(self, entry: ConsentEntry) -> ConsentLedger:
        """A ledger with `entry` added at the end."""
        return ConsentLedger(self.entries + (entry,))

    def status(self, purpose: str) -> ConsentStatus | None:
        """The purpose's current state: the latest entry for it wins; None if never given."""
        for entry in reversed(self.entries):
            if entry.purpose == purpose:
                return _STATUS[entry.action]
        return None

    def objected(self, purpose: str) -> bool:
        """True while an objection to the purpose is in force."""
        return self.status(purpose) == "objected"

    def __len__(self) -> int:
        return len(self.entries)


EMPTY_LEDGER = ConsentLedger()
