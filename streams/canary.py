"""Deletion canaries: synthetic people planted in the live pipeline and erased again.

Every acknowledgement of an erasure says a target *claims* to have acted. A canary checks
the whole loop end to end, all the time: for each controller it plants a synthetic
person (a `customer` `created` event with a name and an e-mail address, the path any
producer's event takes: canonical JSON, Avro, the controller's input topic), so the
person's data is tagged and flows to the downstream systems like anyone's. Half an
interval later it files an erasure request for that person, and it follows the
request on `privacy-request-status` until the pipeline reports it settled. The time
from filing to `completed` (every target answered `done`, `not_found` or `retained`)
is exported as ``privacy_pipeline_canary_erasure_seconds{controller}``; the age of a
canary erasure still open as ``privacy_pipeline_canary_pending_seconds{controller}``.

**A canary never touches a real person.** Its subject id starts with the reserved
prefix :data:`~privacy_pipeline.processors.events.RESERVED_SUBJECT_PREFIX` (``canary-``),
and each of its records carries the header :data:`CANARY_HEADER`: an Ed25519 signature,
made with the worker's command-signing key, over the record's exact bytes and its topic.
Ingest dead-letters every event whose subject id has the prefix without a valid
signature (reason ``reserved_subject_id``). So no producer can plant a canary or erase
through a canary id, and a real id that starts with the prefix is refused loudly rather
than ever being mistaken for one. The commands a canary causes erase rows under the
canary's own id, and only the pipeline can put data under such an id.

The module has two halves. The schedule (:func:`start`, :func:`tick`, :func:`settle`,
:func:`pending_seconds`, the event builders and the signature claim) is pure: it takes
the time as an argument and does no I/O, so it is tested without a broker or a clock.
:class:`CanaryRunner` runs it live in a daemon thread of the worker's process: a few
records per controller per interval, and a reader of `privacy-request-status`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from prometheus_client import Counter

from privacy_pipeline.processors.events import (
    RESERVED_SUBJECT_PREFIX,
    parse_event,
    reserved_subject_id,
)
from privacy_pipeline.processors.instants import format_instant

from .metrics import PREFIX, PipelineMetrics, safe_label_value
from .serde import AvroSerde, RecordError, event_to_avro
from .settings import ENV_SECRETS, Settings, default_secrets
from .signing import CommandSigner, CommandVerifier, SigningKeyError
from .topics import CUSTOMERS, PRIVACY_REQUEST_STATUS, PRIVACY_REQUESTS, Topic

__all__ = [
    "CANARY_HEADER",
    "FINAL_STATUSES",
    "Canary",
    "CanaryMetrics",
    "CanaryPlan",
    "CanaryRunner",
    "CanaryState",
    "File",
    "Headers",
    "Plant",
    "Settled",
    "canary_claim",
    "canary_signed",
    "canary_verifier",
    "canary_verifier_from_env",
    "erasure_request",
    "parse_duration",
    "pending_seconds",
    "plant_event",
    "refile",
    "refuse_reserved",
    "settle",
    "sign_canary",
    "start",
    "start_canaries",
    "tick",
]

log = logging.getLogger(__name__)

CANARY_HEADER: Final = "privacy-pipeline-canary"
"""Kafka header of a canary's input records: the Ed25519 signature of :func:`canary_claim`."""

FINAL_STATUSES: Final = frozenset({"completed", "partially_completed", "failed"})
"""Request statuses after which nothing more happens to a request."""

_RUN_ID = re.compile(r"[a-z0-9]{1,16}\Z")
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*\Z")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``60s``, ``5m``, ``1.5h``, ``500ms`` or ``30`` (seconds).

    Raises ValueError for anything else, or for a duration that is not positive.
    """
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 60s, 5m, 1h, 500ms)")
    seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, not {text!r}")
    return seconds


# ------------------------------------------------------------------ the schedule (pure)


@dataclass(frozen=True, slots=True)
class CanaryPlan:
    """What to plant and how often: fixed for a run."""

    controllers: tuple[str, ...]
    every: float
    """Seconds between two canaries of one controller (at most one is in flight)."""
    erase_after: float
    """Seconds from planting a canary to filing its erasure request: downstream systems
    get time to store the person, so the erasure has rows to remove, as for anyone."""
    run_id: str
    """Tells this run's canaries from an earlier run's (whose requests it ignores)."""

    def __post_init__(self) -> None:
        """Refuse a plan that could not run."""
        if not self.controllers:
            raise ValueError("a canary plan needs at least one controller")
        if self.every <= 0 or self.erase_after < 0:
            raise ValueError("every must be positive and erase_after not negative")
        if _RUN_ID.match(self.run_id) is None:
            raise ValueError("run_id: 1-16 lower-case letters and digits")

    @classmethod
    def every_interval(
        cls, controllers: Iterable[str], every: float, run_id: str | None = None
    ) -> CanaryPlan:
        """A plan that files each erasure half an interval after its plant."""
        return cls(
            controllers=tuple(sorted(set(controllers))),
            every=every,
            erase_after=every / 2,
            run_id=run_id or uuid.uuid4().hex[:8],
        )


@dataclass(frozen=True, slots=True)
class Canary:
    """One synthetic person, from planting to the settling of its erasure."""

    controller: str
    subject_id: str
    request_id: str
    planted_at: float
    filed_at: float | None = None


@dataclass(frozen=True, slots=True)
class CanaryState:
    """Where each controller's canary stands. Treat as immutable: functions return anew."""

    next_plant: Mapping[str, float]
    in_flight: Mapping[str, Canary] = field(default_factory=dict)
    planted: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plant:
    """Decision: produce the canary's person record now."""

    canary: Canary


@dataclass(frozen=True, slots=True)
class File:
    """Decision: produce the canary's erasure request now."""

    canary: Canary


@dataclass(frozen=True, slots=True)
class Settled:
    """A canary's erasure came to its end: ``outcome`` is the request's final status,
    ``seconds`` the time from filing the request to reading that status."""

    controller: str
    request_id: str
    outcome: str
    seconds: float


def canary_subject_id(controller: str, run_id: str, number: int) -> str:
    """The subject id of a controller's *number*-th canary of a run (reserved prefix)."""
    return f"{RESERVED_SUBJECT_PREFIX}{controller}-{run_id}-{number}"


def start(plan: CanaryPlan, now: float) -> CanaryState:
    """The state at the start of a run: every controller's first canary is due at once."""
    return CanaryState(next_plant=dict.fromkeys(plan.controllers, now))


def tick(
    plan: CanaryPlan, state: CanaryState, now: float
) -> tuple[CanaryState, list[Plant | File]]:
    """What is due at *now*: a plant for each controller with no canary in flight whose
    interval has come, and the erasure request of each canary planted `erase_after` ago.

    A controller never has two canaries in flight: while one is stuck, the pending age
    grows (and alerts) instead of a pile of new requests growing behind it.
    """
    actions: list[Plant | File] = []
    next_plant = dict(state.next_plant)
    in_flight = dict(state.in_flight)
    planted = dict(state.planted)
    for controller in plan.controllers:
        canary = in_flight.get(controller)
        if canary is None and now >= next_plant.get(controller, now):
            number = planted.get(controller, 0) + 1
            planted[controller] = number
            subject_id = canary_subject_id(controller, plan.run_id, number)
            canary = Canary(controller, subject_id, f"{subject_id}-erasure", planted_at=now)
            in_flight[controller] = canary
            next_plant[controller] = now + plan.every
            actions.append(Plant(canary))
        if (
            canary is not None
            and canary.filed_at is None
            and now >= canary.planted_at + plan.erase_after
        ):
            canary = replace(canary, filed_at=now)
            in_flight[controller] = canary
            actions.append(File(canary))
    if not actions:
        return state, actions
    return CanaryState(next_plant, in_flight, planted), actions


def settle(
    state: CanaryState, request_id: str, status: str, now: float
) -> tuple[CanaryState, Settled | None]:
    """A status record of *request_id* read at *now*: the canary it ends, if any.

    Statuses on the way (`received`, `in_progress`) and requests that are not this run's
    canaries in flight change nothing.
    """
    if status not in FINAL_STATUSES:
        return state, None
    for controller, canary in state.in_flight.items():
        if canary.request_id == request_id and canary.filed_at is not None:
            in_flight = {c: k for c, k in state.in_flight.items() if c != controller}
            done = Settled(controller, request_id, status, max(0.0, now - canary.filed_at))
            return replace(state, in_flight=in_flight), done
    return state, None


def refile(state: CanaryState, controller: str) -> CanaryState:
    """A controller's erasure request did not reach the broker: file it again on the
    next :func:`tick` (and time it from then). A planted canary is never left behind
    unerased; a request that did arrive after all is the same event, deduplicated."""
    canary = state.in_flight.get(controller)
    if canary is None or canary.filed_at is None:
        return state
    return replace(state, in_flight={**state.in_flight, controller: replace(canary, filed_at=None)})


def pending_seconds(plan: CanaryPlan, state: CanaryState, now: float) -> dict[str, float]:
    """Per controller, the age of its canary erasure filed and not yet settled; 0 when
    there is none (a canary planted but not yet asked to be erased is not pending)."""
    ages = dict.fromkeys(plan.controllers, 0.0)
    for controller, canary in state.in_flight.items():
        if canary.filed_at is not None:
            ages[controller] = max(0.0, now - canary.filed_at)
    return ages


def plant_event(canary: Canary, at: datetime) -> dict[str, Any]:
    """The canary's person record, in canonical JSON: a customer with a name and an
    e-mail address, which every controller's pack tags as contact data (kept for the
    account or the contract, and sent to the targets that hold it). The address is
    under ``.invalid`` (RFC 2606), so nothing can ever be sent to it."""
    return {
        "event_id": f"{canary.subject_id}-created",
        "type": "customer",
        "controller": canary.controller,
        "subject_id": canary.subject_id,
        "occurred_at": format_instant(at),
        "action": "created",
        "role": "customer",
        "fields": {
            "name": f"Canary {canary.controller}",
            "email": f"{canary.subject_id}@canary.invalid",
        },
    }


def erasure_request(canary: Canary, at: datetime) -> dict[str, Any]:
    """The canary's erasure request, in canonical JSON."""
    return {
        "event_id": canary.request_id,
        "type": "privacy_request",
        "controller": canary.controller,
        "subject_id": canary.subject_id,
        "occurred_at": format_instant(at),
        "request_id": canary.request_id,
        "right": "erasure",
    }


# ------------------------------------------------------------------ the canary signature


def canary_claim(topic: str, value: bytes) -> dict[str, str]:
    """What a canary signature covers: the record's exact bytes (by SHA-256) and the
    contract name of its topic.

    It is signed with the command-signing key through the same canonical JSON as
    commands; its keys are no command's, so a canary signature never passes for a
    command's, nor a command's for a canary's.
    """
    return {"canary_record_sha256": hashlib.sha256(value).hexdigest(), "canary_topic": topic}


def sign_canary(signer: CommandSigner, topic: str, value: bytes) -> bytes:
    """The :data:`CANARY_HEADER` value for a canary record of *topic*."""
    return signer.sign(canary_claim(topic, value))


Headers = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None
"""Kafka record headers as confluent-kafka gives them (a list of pairs, or a dict)."""


def canary_signed(
    verifier: CommandVerifier | None, topic: str, value: bytes, headers: Headers
) -> bool:
    """True when the record carries exactly one :data:`CANARY_HEADER` whose signature
    the worker's key made over this record on this topic."""
    if verifier is None or not headers:
        return False
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    signatures = [v for k, v in pairs if k == CANARY_HEADER]
    if len(signatures) != 1 or not isinstance(signatures[0], bytes):
        return False
    return verifier.verify({**canary_claim(topic, value), "signature": signatures[0]})


def refuse_reserved(
    subject_id: str,
    verifier: CommandVerifier | None,
    topic: str,
    value: bytes,
    headers: Headers,
) -> bool:
    """Ingest's rule: True when an event must go to dead letters as `reserved_subject_id`
    (its subject id has the reserved prefix, and it is not a canary the worker signed)."""
    return reserved_subject_id(subject_id) and not canary_signed(verifier, topic, value, headers)


def canary_verifier_from_env(environ: Mapping[str, str] | None = None) -> CommandVerifier | None:
    """The verifier of the public key in ``$PRIVACY_PIPELINE_SECRETS`` (or the default
    secrets folder); None when there is no key, and then no canary is accepted.

    Ingest runs in a child process the worker spawns; `run` exports its ``--secrets``
    folder in that variable, so ingest checks against the key the worker signs with.
    """
    env = os.environ if environ is None else environ
    return canary_verifier(Path(env.get(ENV_SECRETS) or default_secrets()))


def canary_verifier(secrets: Path) -> CommandVerifier | None:
    """The verifier of the public key in *secrets*; None when there is no key, and then
    no canary is accepted."""
    try:
        return CommandVerifier.from_secrets(secrets)
    except SigningKeyError:
        return None


# ------------------------------------------------------------------ metrics


class CanaryMetrics:
    """The canary's metrics, on the worker's :class:`PipelineMetrics` and its registry.

    ``canary_erasure_seconds`` and ``canary_pending_seconds`` belong to the worker's
    metrics (ops/ alerts on them); the count of canaries by outcome is the canary's own.
    Labels are controller ids only.
    """

    def __init__(self, pipeline: PipelineMetrics, controllers: Iterable[str]) -> None:
        self.pipeline = pipeline
        self.canaries = Counter(
            PREFIX + "canaries",
            "Deletion canaries settled, by outcome: the final status of their erasure "
            "request (completed, partially_completed or failed).",
            ["controller", "outcome"],
            registry=pipeline.registry,
        )
        # Every series exists from the start: an alert sees 0, not nothing.
        controllers = list(controllers)
        pipeline.declare_canaries(controllers)
        for controller in controllers:
            self.canaries.labels(safe_label_value(controller), "completed")

    def observe(self, settled: Settled) -> None:
        """Count a settled canary; a completed one's seconds go to the histogram."""
        label = safe_label_value(settled.controller)
        self.canaries.labels(label, safe_label_value(settled.outcome)).inc()
        if settled.outcome == "completed":
            self.pipeline.observe_canary_erasure(settled.controller, settled.seconds)

    def set_pending(self, ages: Mapping[str, float]) -> None:
        """Set each controller's pending age."""
        for controller, seconds in ages.items():
            self.pipeline.set_canary_pending(controller, seconds)


# ------------------------------------------------------------------ live runner


class CanaryRunner:
    """Runs the canary schedule in a daemon thread of the worker's process.

    It waits for the pipeline's topics (producing earlier could make a broker
    auto-create them with the wrong partition count), reads `privacy-request-status`
    from its current end, and then, about five times a second: produces what
    :func:`tick` decides (signed, each followed to the broker's acknowledgement),
    settles the canaries whose status it read, and sets the pending gauges.
    :meth:`stop` ends it within a fraction of a second.
    """

    def __init__(
        self,
        settings: Settings,
        controllers: Iterable[str],
        every: float,
        secrets: Path,
        metrics: PipelineMetrics | None = None,
        *,
        erase_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        plan = CanaryPlan.every_interval(controllers, every)
        if erase_after is not None:
            plan = replace(plan, erase_after=erase_after)
        self.plan = plan
        self.settings = settings
        self.metrics = None if metrics is None else CanaryMetrics(metrics, plan.controllers)
        self._signer = CommandSigner.from_secrets(secrets)
        self._serde = AvroSerde()
        self._clock = clock
        self._wall = wall or (lambda: datetime.now(UTC))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name="privacy-pipeline-canary", daemon=True
        )
        self._lock = threading.Lock()
        self._state: CanaryState | None = None

    @property
    def state(self) -> CanaryState | None:
        """The schedule's state (None until the topics are there)."""
        with self._lock:
            return self._state

    def start(self) -> CanaryRunner:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and close its clients (waits at most *timeout* seconds)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> CanaryRunner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the thread ---------------------------------------------------------------

    def _main(self) -> None:
        bootstrap = self.settings.broker
        tuning = self.settings.tuning
        # Each record is followed to its acknowledgement at once: no linger to wait out.
        producer = Producer(tuning.traffic_producer(bootstrap, linger_ms=0))
        group = f"{self.settings.prefix}privacy-pipeline-canary-{self.plan.run_id}"
        consumer = Consumer(tuning.reader_consumer(bootstrap, group, from_beginning=False))
        try:
            if not self._wait_for_topics(producer):
                return
            self._assign_at_end(consumer)
            with self._lock:
                self._state = start(self.plan, self._clock())
            log.info(
                "canaries: one per controller every %.1f s, erased %.1f s after planting (%s)",
                self.plan.every,
                self.plan.erase_after,
                ", ".join(self.plan.controllers),
            )
            while not self._stop.is_set():
                try:
                    self._step(producer, consumer)
                except KafkaException as exc:
                    # The broker may come back: the schedule keeps its state meanwhile.
                    log.warning("canaries: Kafka error, retrying in 1 s: %s", exc)
                    self._stop.wait(1.0)
                except Exception:
                    # A thread that died would leave the pending gauges frozen below any
                    # alert line: keep going, loudly.
                    log.exception("canaries: unexpected error, retrying in 5 s")
                    self._stop.wait(5.0)
        finally:
            consumer.close()
            producer.flush(5)

    def _wait_for_topics(self, producer: Producer) -> bool:
        prefix = self.settings.prefix
        needed = {t.named(prefix) for t in (CUSTOMERS, PRIVACY_REQUESTS, PRIVACY_REQUEST_STATUS)}
        while not self._stop.is_set():
            try:
                # Listing every topic names none: nothing is auto-created by asking.
                if needed <= set(producer.list_topics(timeout=5).topics):
                    return True
            except KafkaException as exc:
                log.warning("canaries: waiting for the broker: %s", exc)
            self._stop.wait(0.5)
        return False

    def _assign_at_end(self, consumer: Consumer) -> None:
        topic = PRIVACY_REQUEST_STATUS.named(self.settings.prefix)
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        assignment = []
        for partition in sorted(metadata.partitions):
            # Explicit offsets: a status written after this point cannot be missed, and
            # earlier statuses (an earlier run's) are not read at all.
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            assignment.append(TopicPartition(topic, partition, high))
        consumer.assign(assignment)

    def _step(self, producer: Producer, consumer: Consumer) -> None:
        with self._lock:
            state = self._state
        assert state is not None  # noqa: S101 - set before the loop starts
        state, actions = tick(self.plan, state, self._clock())
        for action in actions:
            canary = action.canary
            at = self._wall()
            if isinstance(action, Plant):
                # Not delivered: its erasure is still filed when due, so whatever of it
                # arrives late is erased too; that canary then measures little.
                self._send(producer, CUSTOMERS, plant_event(canary, at))
            elif not self._send(producer, PRIVACY_REQUESTS, erasure_request(canary, at)):
                state = refile(state, canary.controller)
        for msg in consumer.consume(200, timeout=0.2):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("canaries: consume error: %s", err.str())
                continue
            try:
                _, record = self._serde.decode(msg.value() or b"")
            except RecordError:
                continue  # not ours to judge: the status topic is the pipeline's
            request_id = record.get("request_id")
            status = record.get("status")
            if not isinstance(request_id, str) or not isinstance(status, str):
                continue
            state, settled = settle(state, request_id, status, self._clock())
            self._record(settled)
        with self._lock:
            self._state = state
        if self.metrics is not None:
            self.metrics.set_pending(pending_seconds(self.plan, state, self._clock()))

    def _record(self, settled: Settled | None) -> None:
        if settled is None:
            return
        if self.metrics is not None:
            self.metrics.observe(settled)
        # Canary ids are synthetic, yet logs carry only the controller, as for anyone.
        log.info(
            "canary of %s: %s, %.2f s after its erasure request",
            settled.controller,
            settled.outcome,
            settled.seconds,
        )

    def _send(self, producer: Producer, topic: Topic, event: dict[str, Any]) -> bool:
        parsed = parse_event(event)  # our own records meet the contract, or we fail loudly
        name, record = event_to_avro(event)
        value = self._serde.encode(name, record)
        errors: list[str] = []

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                errors.append(err.str())

        producer.produce(
            topic.named(self.settings.prefix),
            value,
            key=parsed.key.encode(),
            headers=[(CANARY_HEADER, sign_canary(self._signer, topic.name, value))],
            on_delivery=delivered,
        )
        if producer.flush(10) or errors:
            log.warning(
                "canary of %s: %s not delivered: %s",
                parsed.controller,
                topic.name,
                "; ".join(errors) or "no acknowledgement within 10 s",
            )
            return False
        return True


def start_canaries(
    settings: Settings,
    controllers: Iterable[str],
    every: float,
    secrets: Path,
    metrics: PipelineMetrics | None = None,
) -> CanaryRunner:
    """Start deletion canaries beside a worker (what `run --canary-every` does).

    *secrets* must be the worker's folder: canaries are signed with its key, and ingest
    refuses them otherwise. Call it before the worker starts: it exports the folder in
    ``PRIVACY_PIPELINE_SECRETS`` for the ingest process the worker spawns. Stop the
    returned runner when the worker has stopped.
    """
    os.environ[ENV_SECRETS] = str(secrets.resolve())
    return CanaryRunner(settings, controllers, every, secrets, metrics).start()
