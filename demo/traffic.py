"""Seeded synthetic traffic: realistic canonical JSON events for the five seed controllers.

`TrafficModel(seed, subjects, start, span).events(n)` yields `n` input events (dicts of the
design's input-event contract) in non-decreasing `occurred_at` order, spread over
`[start, start + span)`. The same arguments always give the same events.

Each subject lives a life cycle that exercises the packs:

- a person record is `created` (name, e-mail, phone, address, personnummer, customer type)
  with a role: mostly `customer`; `prospect` at iret, `contact_person` at inrego and
  `supplier` at unnamed004, where the packs have rules for them; some subjects are
  website visitors known only by their clicks;
- clicks (url, ip, user agent, often an anonymous cookie id);
- orders `placed` -> `invoiced` -> `delivered`, some `returned` or with a `complaint`;
- customer-service contacts and updates of the record;
- consents (grant, withdraw, object), mostly for direct marketing, over every channel;
  at rego, where marketing rests on consent, many new customers grant it soon after signing
  up;
- rare privacy requests (access, erasure, objection, rectification, restriction,
  portability), rare `relationship_ended` and `closed`; a prospect may become a customer.

The personal data is fake but realistic-looking: names from short Swedish lists, e-mails at
example.com / example.se, phone numbers in the range PTS keeps for fiction
(070-174 06 05 .. 99), IPs from the documentation ranges (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24, 2001:db8::/32), URLs under the reserved `.example` TLD, and personnummer
shaped `19YYMMDD-NNNN` whose check digit is deliberately wrong, so none is a real person's.

Timestamps follow each controller's producer style: Europe/Stockholm offsets (`+01:00` /
`+02:00`: rego, iret, unnamed004) or UTC `Z` (inrego, rejoin), with milliseconds (rejoin,
unnamed004) or whole seconds. A whole-second producer rounds up when needed to keep the
order, so the last events of a dense stream may lie up to a second past `start + span`.

With `bad_ratio > 0` that share of events is malformed, as a real producer sometimes sends:
a missing field, a bad timestamp, an unknown controller or an unknown type, and in `lines`
also text that is not JSON. `evaluate` must turn each into a `reject`.

Also runnable: `python -m privacy_pipeline.demo.traffic --events 10000 > events.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from bisect import bisect
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from random import Random
from typing import Any
from zoneinfo import ZoneInfo

CONTROLLERS: tuple[str, ...] = ("rego", "inrego", "rejoin", "iret", "unnamed004")
EVENT_TYPES: tuple[str, ...] = ("customer", "order", "click", "consent", "privacy_request")
BAD_KINDS: tuple[str, ...] = (
    "missing_field",
    "bad_timestamp",
    "unknown_controller",
    "unknown_type",
    "non_json",  # only in `lines`; `events` (dicts) uses the first four
)
STOCKHOLM = ZoneInfo("Europe/Stockholm")

# -- controllers ------------------------------------------------------------------------

# Share of subjects per controller.
_CONTROLLER_WEIGHTS = {"rego": 24, "inrego": 22, "rejoin": 20, "iret": 16, "unnamed004": 18}

# Kinds of subject per controller: a role of the contract, or `visitor` (clicks only).
_KIND_WEIGHTS: dict[str, tuple[tuple[str, float], ...]] = {
    "rego": (("customer", 92), ("visitor", 8)),
    "inrego": (("customer", 70), ("contact_person", 22), ("visitor", 8)),
    "rejoin": (("customer", 92), ("visitor", 8)),
    "iret": (("customer", 58), ("prospect", 34), ("visitor", 8)),
    "unnamed004": (("customer", 72), ("supplier", 20), ("visitor", 8)),
}


@dataclass(frozen=True, slots=True)
class _Style:
    """How a controller's producers write timestamps and ids."""

    local: bool  # Europe/Stockholm offset, else Z
    millis: bool
    host: str
    order_prefix: str
    currencies: tuple[tuple[str, float], ...]
    marketing_consent: float  # share of new customers who grant direct marketing soon


_STYLES: dict[str, _Style] = {
    "rego": _Style(True, False, "www.rego.example", "RG", (("SEK", 98), ("EUR", 2)), 0.6),
    "inrego": _Style(False, False, "www.inrego.example", "IN", (("SEK", 90), ("EUR", 10)), 0.1),
    "rejoin": _Style(False, True, "app.rejoin.example", "RJ", (("SEK", 95), ("NOK", 5)), 0.1),
    "iret": _Style(True, False, "www.iret.example", "IRET-", (("SEK", 70), ("EUR", 30)), 0.05),
    "unnamed004": _Style(True, True, "tjanster.kommun.example", "PO", (("SEK", 100),), 0.3),
}

_PATHS: dict[str, tuple[str, ...]] = {
    "rego": (
        "/",
        "/sortiment",
        "/sortiment/hyllor",
        "/sortiment/kontorsstolar",
        "/kassa",
        "/mina-sidor",
        "/kundservice",
        "/om-oss",
        "/kampanj/var",
    ),
    "inrego": (
        "/",
        "/shop/datorer/laptops",
        "/shop/datorer/stationara",
        "/shop/skarmar",
        "/shop/mobiler",
        "/tjanster/it-asset-disposition",
        "/kassa",
        "/mitt-konto",
        "/kontakt",
    ),
    "rejoin": (
        "/",
        "/login",
        "/fordon",
        "/fordon/karta",
        "/korjournal",
        "/rapporter",
        "/abonnemang",
        "/support",
    ),
    "iret": ("/", "/tjanster", "/referenser", "/kontakt", "/offert", "/om-iret"),
    "unnamed004": ("/", "/e-tjanster", "/e-tjanster/ansokan", "/nyheter", "/kontakt", "/sok"),
}

_URLS: dict[str, tuple[str, ...]] = {
    c: tuple(
        f"https://{_STYLES[c].host}{p}{q}"
        for p in paths
        for q in (("", "?sida=2", "?sida=3") if p.startswith(("/sortiment", "/shop")) else ("",))
    )
    for c, paths in _PATHS.items()
}

_USER_AGENTS: tuple[str, ...] = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
)

# -- fake persons -----------------------------------------------------------------------

_FIRST = (
    "Anna", "Eva", "Maria", "Karin", "Sara", "Lena", "Emma", "Kerstin", "Ingrid", "Sofia",
    "Elin", "Linnea", "Maja", "Astrid", "Åsa", "Lars", "Erik", "Anders", "Johan", "Karl",
    "Per", "Mikael", "Nils", "Oskar", "Björn", "Hans", "Jonas", "Göran", "Olof", "Ali",
    "Mohammed", "Fatima", "Yusuf", "Aino", "Mikko",
)  # fmt: skip
_LAST = (
    "Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson",
    "Persson", "Svensson", "Gustafsson", "Pettersson", "Jonsson", "Jansson", "Hansson",
    "Bengtsson", "Lindberg", "Lindström", "Lundqvist", "Berg", "Holm", "Sjöberg", "Åberg",
    "Öberg", "Hassan", "Nieminen", "Virtanen", "Ek", "Wallin", "Hedlund", "Sandberg",
)  # fmt: skip
_STREETS = (
    "Storgatan", "Drottninggatan", "Kungsgatan", "Vasagatan", "Sveavägen", "Skolgatan",
    "Järnvägsgatan", "Parkvägen", "Björkvägen", "Kyrkogatan", "Industrivägen", "Åsgatan",
)  # fmt: skip
_CITIES = (
    ("Stockholm", "11"), ("Göteborg", "41"), ("Malmö", "21"), ("Uppsala", "75"),
    ("Örebro", "70"), ("Linköping", "58"), ("Västerås", "72"), ("Umeå", "90"),
    ("Vadstena", "59"), ("Täby", "18"), ("Lund", "22"), ("Jönköping", "55"),
)  # fmt: skip
_COMPANIES = (
    "Exempel AB", "Testbolaget i Norden AB", "Fiktiva Fastigheter AB", "Demo Logistik AB",
    "Provkonsult HB", "Exempelkommunen", "Påhittat Bygg AB", "Modell & Co AB",
)  # fmt: skip
_TITLES = ("Inköpare", "IT-chef", "Ekonomichef", "VD", "Projektledare", "Upphandlare")
_MAIL_DOMAINS = ("example.com", "example.se", "mail.example.se", "example.com")
_MESSAGES = (
    "Var är min leverans?",
    "Jag vill byta faktureringsadress.",
    "Fråga om garanti på produkten.",
    "Kan ni ringa upp mig?",
    "Jag har fått fel vara.",
    "Hur avslutar jag mitt konto?",
)
_FOLD = str.maketrans({"å": "a", "ä": "a", "ö": "o", "é": "e", "Å": "A", "Ä": "A", "Ö": "O"})

# -- life cycle -------------------------------------------------------------------------

# Next step of a subject, by kind: (step, weight).
_STEPS: dict[str, tuple[tuple[str, float], ...]] = {
    "customer": (
        ("click", 40),
        ("order", 26),
        ("consent", 7),
        ("contacted", 5),
        ("updated", 3),
        ("request", 0.8),
        ("relationship_ended", 0.25),
        ("closed", 0.2),
    ),
    "prospect": (
        ("click", 30),
        ("contacted", 30),
        ("updated", 14),
        ("consent", 8),
        ("convert", 5),
        ("relationship_ended", 4),
        ("request", 1),
    ),
    "contact_person": (
        ("contacted", 30),
        ("order", 25),
        ("click", 20),
        ("updated", 12),
        ("consent", 6),
        ("relationship_ended", 3),
        ("request", 0.8),
    ),
    "supplier": (
        ("contacted", 40),
        ("order", 20),
        ("updated", 15),
        ("click", 5),
        ("relationship_ended", 3),
        ("request", 0.5),
    ),
    "visitor": (("click", 92), ("consent", 8)),
}
_RIGHTS = (
    ("access", 35),
    ("erasure", 25),
    ("objection", 15),
    ("rectification", 10),
    ("restriction", 8),
    ("portability", 7),
)
_CONSENT_PURPOSES = (
    ("direct_marketing", 80),
    ("analytics", 8),
    ("personalization", 7),
    ("surveys", 5),
)
_GRANT_CHANNELS = (("web", 50), ("email", 25), ("sms", 10), ("phone", 8), ("post", 7))
_STOP_CHANNELS = (("email", 60), ("web", 20), ("sms", 10), ("phone", 5), ("post", 5))

_INTRO_SHARE = 0.7  # all subjects have appeared by this share of the stream
_FOLLOW_UP = 0.3  # chance a step serves a queued follow-up (consent after sign-up, ...)
_RECENT = 0.25  # chance a step picks one of the most recently introduced subjects
_RECENT_SIZE = 64


class _Picker:
    """Weighted choice from (value, weight) pairs with one random draw."""

    __slots__ = ("_values", "_cum", "_total")

    def __init__(self, pairs: Sequence[tuple[Any, float]]) -> None:
        self._values = [v for v, _ in pairs]
        self._cum = list(accumulate(w for _, w in pairs))
        self._total = self._cum[-1]

    def __call__(self, rnd: float) -> Any:
        """The value at `rnd` in [0, 1)."""
        return self._values[bisect(self._cum, rnd * self._total)]


_PICK_CONTROLLER = _Picker(list(_CONTROLLER_WEIGHTS.items()))
_PICK_KIND = {c: _Picker(w) for c, w in _KIND_WEIGHTS.items()}
_PICK_STEP = {k: _Picker(w) for k, w in _STEPS.items()}
_PICK_RIGHT = _Picker(_RIGHTS)
_PICK_PURPOSE = _Picker(_CONSENT_PURPOSES)
_PICK_GRANT_CHANNEL = _Picker(_GRANT_CHANNELS)
_PICK_STOP_CHANNEL = _Picker(_STOP_CHANNELS)
_PICK_CURRENCY = {c: _Picker(s.currencies) for c, s in _STYLES.items()}
_TIME_STYLE = {c: (s.local, s.millis) for c, s in _STYLES.items()}


@dataclass(slots=True)
class _Subject:
    """One person (or visitor) and where they are in their life cycle."""

    controller: str
    subject_id: str
    kind: str  # customer, prospect, contact_person, supplier, visitor
    person: dict[str, Any]  # the fields of the `created` event
    ip: str
    user_agent: str
    anonymous_id: str | None
    created: bool = False
    ended: bool = False
    orders: list[list[Any]] = field(default_factory=list)  # [order_id, stage, amount, cur]
    consent: dict[str, str] = field(default_factory=dict)  # purpose -> last action
    follow_up: list[str] = field(default_factory=list)  # steps queued to come soon


_HHMM = tuple(f"{m // 60:02d}:{m % 60:02d}:" for m in range(1440))
_SS = tuple(f"{x:02d}" for x in range(60))
_MS = tuple(f".{x:03d}" for x in range(1000))


class _Clock:
    """Formats instants (whole ms since the epoch) in a producer's style, fast."""

    def __init__(self) -> None:
        self._zone: dict[int, tuple[int, str]] = {}  # hour -> (Stockholm offset ms, suffix)
        self._day: dict[int, str] = {}  # day since epoch -> "YYYY-MM-DDT"

    def format(self, ms: int, local: bool, millis: bool) -> str:
        if local:
            hour = ms // 3_600_000
            found = self._zone.get(hour)
            if found is None:
                delta = datetime.fromtimestamp(hour * 3600, STOCKHOLM).utcoffset()
                off = int(delta.total_seconds()) if delta is not None else 0
                found = (off * 1000, f"+{off // 3600:02d}:{off // 60 % 60:02d}")
                self._zone[hour] = found
            ms += found[0]
            zone = found[1]
        else:
            zone = "Z"
        day, of_day = divmod(ms, 86_400_000)
        prefix = self._day.get(day)
        if prefix is None:
            prefix = time.strftime("%Y-%m-%dT", time.gmtime(day * 86400))
            self._day[day] = prefix
        minute, of_minute = divmod(of_day, 60_000)
        if millis:
            return prefix + _HHMM[minute] + _SS[of_minute // 1000] + _MS[of_minute % 1000] + zone
        return prefix + _HHMM[minute] + _SS[of_minute // 1000] + zone


def _uuid4(rng: Random) -> str:
    """A UUID version 4 string from the seeded generator."""
    x = rng.getrandbits(128)
    h = f"{x:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[x & 3]}{h[17:20]}-{h[20:]}"


_VARIANT = "89ab"


def _below(rng: Random, n: int) -> int:
    """A whole number in [0, n); cheaper than randrange."""
    return int(rng.random() * n)


def _one(rng: Random, seq: Sequence[Any]) -> Any:
    return seq[int(rng.random() * len(seq))]


def _doc_ip(rng: Random) -> str:
    r = rng.random()
    if r < 0.06:
        return f"2001:db8:{_below(rng, 0x10000):x}::{1 + _below(rng, 0xFFFF):x}"
    net = ("192.0.2", "198.51.100", "203.0.113")[int(r * 3) % 3]
    return f"{net}.{1 + _below(rng, 254)}"


def _personnummer(rng: Random) -> str:
    """`19YYMMDD-NNNN` shaped, with a check digit that is never the valid one."""
    yy, mm, dd = 40 + _below(rng, 60), 1 + _below(rng, 12), 1 + _below(rng, 28)
    digits = f"{yy:02d}{mm:02d}{dd:02d}{_below(rng, 1000):03d}"
    total = 0
    for i, ch in enumerate(digits):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d // 10 + d % 10
    check = (10 - total % 10) % 10
    wrong = (check + 1 + _below(rng, 9)) % 10
    return f"19{digits[:6]}-{digits[6:]}{wrong}"


def _phone(rng: Random) -> str:
    return f"+46 70-174 06 {5 + _below(rng, 95):02d}"


def _address(rng: Random) -> str:
    city, zip2 = _one(rng, _CITIES)
    street = _one(rng, _STREETS)
    zipcode = f"{zip2}{_below(rng, 10)} {_below(rng, 100):02d}"
    return f"{street} {1 + _below(rng, 89)}, {zipcode} {city}"


def _email(rng: Random, first: str, last: str) -> str:
    local = f"{first}.{last}".lower().translate(_FOLD)
    if rng.random() < 0.5:
        local += str(1 + _below(rng, 99))
    return f"{local}@{_one(rng, _MAIL_DOMAINS)}"


def _new_subject(rng: Random, index: int) -> _Subject:
    controller = _PICK_CONTROLLER(rng.random())
    kind = _PICK_KIND[controller](rng.random())
    first = _one(rng, _FIRST)
    last = _one(rng, _LAST)
    person: dict[str, Any] = {"name": f"{first} {last}", "email": _email(rng, first, last)}
    if kind == "visitor":
        subject_id = f"visitor-{rng.getrandbits(48):012x}"
        person = {}
    elif controller == "rego":
        subject_id = f"C{1_000_000 + index}"
    elif controller == "inrego":
        subject_id = f"inr-{100_000 + index}"
    elif controller == "rejoin":
        subject_id = f"RJ{500_000 + index}"
    elif controller == "iret":
        subject_id = f"iret-{index:06d}"
    else:
        subject_id = _uuid4(rng)
    if kind in ("customer", "prospect") and rng.random() < 0.85:
        person["phone"] = _phone(rng)
    if kind == "customer":
        person["address"] = _address(rng)
        business = controller == "iret" or rng.random() < 0.15
        person["customer_type"] = "business" if business else "private"
        if rng.random() < (0.3 if business else 0.6):
            person["personnummer"] = _personnummer(rng)
    elif kind == "contact_person":
        person["phone"] = _phone(rng)
        person["title"] = _one(rng, _TITLES)
        person["employer"] = _one(rng, _COMPANIES)
    elif kind in ("supplier", "prospect"):
        person["company"] = _one(rng, _COMPANIES)
        if kind == "supplier":
            person["phone"] = _phone(rng)
            person["address"] = _address(rng)
    return _Subject(
        controller=controller,
        subject_id=subject_id,
        kind=kind,
        person=person,
        ip=_doc_ip(rng),
        user_agent=_one(rng, _USER_AGENTS),
        anonymous_id=f"ga1.{rng.getrandbits(40):x}" if rng.random() < 0.6 else None,
    )


class _NotJson(dict):  # type: ignore[type-arg]
    """An event `lines` writes as broken JSON."""


class TrafficModel:
    """Seeded, deterministic synthetic traffic for all five controllers.

    `subjects` people (and visitors) appear over the first 70 % of the stream; `events(n)`
    spreads `n` events over `[start, start + span)` in non-decreasing time order. Each call
    to `events` or `lines` starts afresh, so it gives the same stream every time.
    """

    def __init__(
        self,
        seed: int,
        subjects: int,
        start: datetime,
        span: timedelta,
        *,
        bad_ratio: float = 0.0,
    ) -> None:
        if subjects < 1:
            raise ValueError("subjects must be at least 1")
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if span <= timedelta(0):
            raise ValueError("span must be positive")
        if not 0.0 <= bad_ratio <= 1.0:
            raise ValueError("bad_ratio must be in [0, 1]")
        self.seed = seed
        self.subjects = subjects
        self.start = start
        self.span = span
        self.bad_ratio = bad_ratio

    # -- public ---------------------------------------------------------------------

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        """`n` events as dicts, in non-decreasing `occurred_at` order."""
        return (event for event, _ in self._stream(n))

    def marked_events(self, n: int) -> Iterator[tuple[dict[str, Any], bool]]:
        """The events of `events(n)`, each with True when the model made it malformed:
        telling them apart afterwards would cost a parse of every event."""
        return self._stream(n)

    def lines(self, n: int) -> Iterator[str]:
        """`n` events as compact JSON lines (no trailing newline); bad ones may not be JSON."""
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        for event, _ in self._stream(n, allow_non_json=True):
            text = dumps(event)
            if type(event) is _NotJson:
                text = text[: len(text) // 2]  # cut short, as by a crashed producer
            yield text

    # -- the generator ----------------------------------------------------------------

    def _stream(
        self, n: int, *, allow_non_json: bool = False
    ) -> Iterator[tuple[dict[str, Any], bool]]:
        rng = Random(self.seed)  # noqa: S311 - synthetic data, not security
        rnd = rng.random
        clock = _Clock()
        fmt = clock.format
        start_ms = int(self.start.timestamp() * 1000)
        span_ms = max(1, int(self.span.total_seconds() * 1000))
        n_subjects = self.subjects
        intro_steps = max(1.0, _INTRO_SHARE * n)
        population: list[_Subject] = []
        active: list[_Subject] = []  # may hold ended subjects: removed when picked
        recent: deque[_Subject] = deque(maxlen=_RECENT_SIZE)
        follow: deque[_Subject] = deque()
        bad_ratio = self.bad_ratio
        n_bad_kinds = len(BAD_KINDS) if allow_non_json else len(BAD_KINDS) - 1
        last_ms = start_ms
        top = 1.0  # sorted uniforms, generated in order: 1 - max of the rest
        for k in range(n):
            top *= rnd() ** (1.0 / (n - k))
            ms = start_ms + min(span_ms - 1, int((1.0 - top) * span_ms))

            subject: _Subject | None = None
            step: str | None = None
            if (
                len(population) < n_subjects
                and len(population) < (k + 1) * n_subjects / intro_steps
            ):
                subject = _new_subject(rng, len(population))
                population.append(subject)
                weight = 1 + int(rnd() * rnd() * 6)  # a few heavy users
                active.extend([subject] * weight)
                recent.append(subject)
                step = "created" if subject.kind != "visitor" else "click"
            else:
                r = rnd()
                if follow and r < _FOLLOW_UP:
                    subject = follow.popleft()
                    if subject.ended or not subject.follow_up:
                        subject = None
                    else:
                        step = subject.follow_up.pop(0)
                elif recent and r < _FOLLOW_UP + _RECENT:
                    subject = recent[int(rnd() * len(recent))]
                    if subject.ended:
                        subject = None
                while subject is None:
                    if not active:
                        subject = self._revive(rng, population)
                        active.append(subject)
                        step = "created" if subject.kind != "visitor" else "click"
                        break
                    i = int(rnd() * len(active))
                    subject = active[i]
                    if subject.ended:
                        active[i] = active[-1]
                        active.pop()
                        subject = None
                if step is None:
                    step = _PICK_STEP[subject.kind](rnd())

            local, millis = _TIME_STYLE[subject.controller]
            # Producers that write whole seconds drop the milliseconds; keep the order
            # non-decreasing across styles by never going below the last instant written.
            if ms < last_ms:
                ms = last_ms
            if not millis:
                whole = ms - ms % 1000
                ms = whole if whole >= last_ms else whole + 1000
            last_ms = ms
            event = self._event(rng, subject, step, fmt(ms, local, millis))
            if subject.follow_up and not subject.ended:
                follow.append(subject)

            corrupted = bool(bad_ratio) and rnd() < bad_ratio
            if corrupted:
                bad = BAD_KINDS[int(rnd() * n_bad_kinds)]
                if bad == "non_json":
                    event = _NotJson(event)
                else:
                    _corrupt(rng, event, bad)
            yield event, corrupted

    @staticmethod
    def _revive(rng: Random, population: list[_Subject]) -> _Subject:
        """Everyone has left: an earlier subject comes back and starts afresh."""
        subject = population[int(rng.random() * len(population))]
        subject.ended = False
        subject.created = False
        subject.orders.clear()
        subject.consent.clear()
        subject.follow_up.clear()
        return subject

    def _event(self, rng: Random, s: _Subject, step: str, at: str) -> dict[str, Any]:
        """The next event of subject `s`, of kind `step`, at `at`; updates the life cycle."""
        rnd = rng.random
        if step == "click":
            urls = _URLS[s.controller]
            ev: dict[str, Any] = {
                "event_id": _uuid4(rng),
                "type": "click",
                "controller": s.controller,
                "subject_id": s.subject_id,
                "occurred_at": at,
                "url": urls[int(rnd() * len(urls))],
                "ip": s.ip if rnd() < 0.9 else _doc_ip(rng),
                "user_agent": s.user_agent,
            }
            if s.anonymous_id is not None:
                ev["anonymous_id"] = s.anonymous_id
            return ev
        if step == "order":
            return _order(rng, s, at)
        if step == "consent":
            return _consent(rng, s, at, None)
        if step == "consent_grant":
            return _consent(rng, s, at, "direct_marketing")
        if step == "request":
            return _request(rng, s, at)
        return _customer(rng, s, step, at)


def _head(rng: Random, s: _Subject, etype: str, at: str) -> dict[str, Any]:
    return {
        "event_id": _uuid4(rng),
        "type": etype,
        "controller": s.controller,
        "subject_id": s.subject_id,
        "occurred_at": at,
    }


def _customer(rng: Random, s: _Subject, step: str, at: str) -> dict[str, Any]:
    rnd = rng.random
    ev = _head(rng, s, "customer", at)
    if step == "created":
        s.created = True
        ev["action"] = "created"
        ev["role"] = s.kind
        ev["fields"] = dict(s.person)
        if s.kind == "customer" and rnd() < _STYLES[s.controller].marketing_consent:
            s.follow_up.append("consent_grant")
        return ev
    if step == "convert":  # a prospect becomes a customer
        s.kind = "customer"
        s.person["address"] = _address(rng)
        s.person["customer_type"] = "business"
        ev["action"] = "updated"
        ev["role"] = "customer"
        ev["fields"] = dict(s.person)
        return ev
    if step in ("updated", "rectified"):
        ev["action"] = "updated"
        person = s.person
        r = rnd()
        if r < 0.4 or "address" not in person:
            first, _, last = person.get("name", "Anna Berg").partition(" ")
            person["email"] = _email(rng, first, last)
            ev["fields"] = {"email": person["email"]}
        elif r < 0.75:
            person["address"] = _address(rng)
            ev["fields"] = {"address": person["address"]}
        else:
            person["phone"] = _phone(rng)
            ev["fields"] = {"phone": person["phone"]}
    elif step == "contacted":
        ev["action"] = "contacted"
        if rnd() < 0.4:
            ev["fields"] = {"message": _MESSAGES[int(rnd() * len(_MESSAGES))]}
    else:  # relationship_ended, closed
        ev["action"] = step
        s.ended = True
    if s.kind != "customer" or rnd() < 0.3:
        ev["role"] = s.kind  # the default is customer; other roles always say so
    return ev


def _order(rng: Random, s: _Subject, at: str) -> dict[str, Any]:
    rnd = rng.random
    orders = s.orders
    if orders and (rnd() < 0.8 or len(orders) >= 3):
        order = orders[0]
        order[1] += 1
        stage = order[1]
        if stage == 1:
            action = "invoiced"
        elif stage == 2:
            action = "delivered"
            if rnd() >= 0.08:
                orders.pop(0)
        else:
            action = "returned" if rnd() < 0.6 else "complaint"
            orders.pop(0)
    else:
        amount = round(min(250_000.0, rng.lognormvariate(7.0, 1.1)), 2)
        order_id = f"{_STYLES[s.controller].order_prefix}{rng.getrandbits(32):08X}"
        order = [order_id, 0, amount, _PICK_CURRENCY[s.controller](rnd())]
        orders.append(order)
        action = "placed"
    ev = _head(rng, s, "order", at)
    ev["action"] = action
    ev["order_id"] = order[0]
    ev["amount"] = order[2]
    ev["currency"] = order[3]
    return ev


def _consent(rng: Random, s: _Subject, at: str, purpose: str | None) -> dict[str, Any]:
    rnd = rng.random
    if purpose is None:
        purpose = _PICK_PURPOSE(rnd())
    last = s.consent.get(purpose)
    r = rnd()
    if last is None:
        action = "grant" if r < 0.85 else "object"
    elif last == "grant":
        action = "withdraw" if r < 0.55 else "object"
    else:
        action = "grant" if r < 0.7 else "withdraw"
    s.consent[purpose] = action
    channel = (_PICK_GRANT_CHANNEL if action == "grant" else _PICK_STOP_CHANNEL)(rnd())
    ev = _head(rng, s, "consent", at)
    ev["purpose"] = purpose
    ev["action"] = action
    ev["channel"] = "web" if s.kind == "visitor" else channel
    return ev


def _request(rng: Random, s: _Subject, at: str) -> dict[str, Any]:
    rnd = rng.random
    right = _PICK_RIGHT(rnd())
    ev = _head(rng, s, "privacy_request", at)
    ev["request_id"] = f"DSR-{at[:4]}-{rng.getrandbits(24):06x}"
    ev["right"] = right
    r = rnd()
    if right == "objection" and r < 0.7:
        purpose = "direct_marketing" if r < 0.6 else "analytics"
        ev["purposes"] = [purpose]
        s.consent[purpose] = "object"
    elif right == "restriction" and r < 0.3:
        ev["purposes"] = ["analytics"]
    elif right == "erasure":
        if r < 0.1:
            ev["purposes"] = ["direct_marketing"]
        else:
            s.ended = True  # the person is gone
    elif right == "rectification":
        s.follow_up.append("rectified")
    return ev


def _corrupt(rng: Random, event: dict[str, Any], kind: str) -> None:
    """Make a valid event invalid in place, the way real producers get it wrong."""
    r = rng.random()
    if kind == "missing_field":
        specific = {
            "click": "url",
            "order": "order_id",
            "consent": "purpose",
            "privacy_request": "right",
            "customer": "action",
        }[event["type"]]
        name = ("event_id", "subject_id", "occurred_at", specific, specific)[int(r * 5)]
        event.pop(name, None)
    elif kind == "bad_timestamp":
        at = event["occurred_at"]
        choice = int(r * 4)
        if choice == 0:
            event["occurred_at"] = at[:19]  # no zone
        elif choice == 1:
            event["occurred_at"] = f"{at[8:10]}/{at[5:7]}/{at[:4]} {at[11:16]}"
        elif choice == 2:
            event["occurred_at"] = f"{at[:5]}13{at[7:]}"  # month 13
        else:
            event["occurred_at"] = int(datetime.fromisoformat(at).timestamp())  # epoch number
    elif kind == "unknown_controller":
        event["controller"] = ("acme", "rego-test", "Inrego AB")[int(r * 3)]
    elif kind == "unknown_type":
        event["type"] = ("pageview", "subscription", "Customer", "orders")[int(r * 4)]
    else:
        raise ValueError(f"unknown bad kind {kind!r}")


def lines(
    n: int,
    *,
    seed: int = 0,
    subjects: int = 1000,
    start: datetime | None = None,
    span: timedelta = timedelta(days=365),
    bad_ratio: float = 0.0,
) -> Iterator[str]:
    """`n` JSON lines of a `TrafficModel` (start defaults to 2024-01-01T00:00Z)."""
    begin = start if start is not None else datetime(2024, 1, 1, tzinfo=UTC)
    model = TrafficModel(seed, subjects, begin, span, bad_ratio=bad_ratio)
    return model.lines(n)


def main(argv: Sequence[str] | None = None) -> int:
    """Write synthetic events as JSON lines to stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=10_000, help="how many events")
    parser.add_argument("--subjects", type=int, default=1_000, help="how many subjects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--start", default="2024-01-01T00:00:00+01:00", help="ISO instant with a zone"
    )
    parser.add_argument("--days", type=float, default=365.0, help="span in days")
    parser.add_argument("--bad-ratio", type=float, default=0.0, help="share of bad events")
    args = parser.parse_args(argv)
    model = TrafficModel(
        args.seed,
        args.subjects,
        datetime.fromisoformat(args.start),
        timedelta(days=args.days),
        bad_ratio=args.bad_ratio,
    )
    write = sys.stdout.write
    for line in model.lines(args.events):
        write(line)
        write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
