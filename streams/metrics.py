"""Prometheus metrics of the pipeline worker.

Everything is grouped in :class:`PipelineMetrics`, built against a registry
passed in, so tests (and several workers in one process) never clash on the
global default registry. Every metric name starts with ``privacy_pipeline_``.

Label values are a privacy risk of their own: a subject id, an e-mail
address or an IP address put into a label ends up in Prometheus, in Grafana
and in every alert. So every label value goes through
:func:`safe_label_value`, which lets through only short identifiers of the
kind closed vocabularies use (purposes, reasons, actions, controller ids,
topic names, target ids) and replaces anything else with ``"other"``. Each
metric also caps the number of distinct label sets it will create
(``max_series``); label sets beyond the cap are counted under ``"other"``.
Subject ids, event ids and command ids are never labels.

The hot path is :meth:`PipelineMetrics.observe_decisions`, called for every
micro-batch of decisions (tens of thousands of decisions a second). It
aggregates counts per label set in plain dicts first and then increments
each pre-bound child once, so the per-decision cost is a few dict look-ups
and the per-child lock is taken once per distinct label set per call.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "ACK_LATENCY_BUCKETS",
    "ACK_STATUSES",
    "BATCH_SIZE_BUCKETS",
    "CANARY_BUCKETS",
    "COMMAND_STATES",
    "MAX_LABEL_LENGTH",
    "OPTOUT_LATENCY_BUCKETS",
    "OTHER",
    "PREFIX",
    "PROCESSING_BUCKETS",
    "MetricsServer",
    "PipelineMetrics",
    "PipelineRegistry",
    "make_registry",
    "safe_label_value",
    "serve_metrics",
]

PREFIX = "privacy_pipeline_"
"""Prefix of every metric name."""

OTHER = "other"
"""Label value that replaces anything that may be personal data."""

NONE = "none"
"""Label value used when a label is missing (``None`` or empty)."""

MAX_LABEL_LENGTH = 64
"""Longest label value let through; longer values become :data:`OTHER`."""

DEFAULT_MAX_SERIES = 2000
"""Default cap on distinct label sets per metric."""

PROCESSING_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Buckets of ``processing_seconds``: 100 µs .. 5 s."""

OPTOUT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Buckets of ``optout_latency_seconds``: 1 ms .. 10 s (0.1 s is the alert line)."""

BATCH_SIZE_BUCKETS: tuple[float, ...] = (
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10000,
)
"""Buckets of ``batch_size_events`` (events per subject-log micro-batch)."""

ACK_LATENCY_BUCKETS: tuple[float, ...] = (
    1.0,
    10.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    3 * 3600.0,
    6 * 3600.0,
    12 * 3600.0,
    86400.0,
    3 * 86400.0,
    7 * 86400.0,
    30 * 86400.0,
)
"""Buckets of ``erasure_ack_latency_seconds``: 1 s .. 30 days. A third-party target may
take days and still be on time (deadlines are days to a month), so the buckets reach the
legal month rather than stopping at the minutes a database sink takes."""

CANARY_BUCKETS: tuple[float, ...] = (
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
)
"""Buckets of ``canary_erasure_seconds``: 5 s .. 1 h; 600 s (the canary SLO of
ops/alerts.yml) is a bound, so "erased within the SLO" is one bucket read exactly."""

ACK_STATUSES = frozenset({"done", "not_found", "failed", "retained"})
"""Ack statuses of the erasure-acks contract; a sink's other values count as ``other``."""

COMMAND_STATES = ("waiting", "escalated")
"""States of an open command: ``waiting`` for an answer (re-issued when none comes), or
``escalated`` to a person (no more re-issues; a late answer still closes it)."""

# Closed-vocabulary identifiers: purposes, reasons, actions, controller ids,
# Kafka topic names (whose legal characters are exactly these), target ids.
_SAFE_LABEL = re.compile(r"[A-Za-z0-9_.\-]{1,%d}\Z" % MAX_LABEL_LENGTH)
# Things that pass the character class but may still identify a person.
_SUSPECT = re.compile(
    r"(?:\d{1,3}\.){3}\d{1,3}"  # IPv4 address (IPv6 needs ':', refused above)
    r"|(?<!\d)(?:\d{2})?\d{6}[-+]\d{4}(?!\d)"  # personnummer YYMMDD-NNNN, YYYYMMDD-NNNN
    r"|\d{7,}"  # personnummer without separator, phone, card or account numbers
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|[0-9a-fA-F]{16,}"  # long hex: hashed ids, event/command ids
)


def safe_label_value(value: object) -> str:
    """Return ``value`` as a label value, or :data:`OTHER` if it may be personal data.

    ``None`` and ``""`` become :data:`NONE`. A value is kept only if it is at
    most :data:`MAX_LABEL_LENGTH` characters of ``[A-Za-z0-9_.-]`` (so no
    ``@``, ``:``, ``/``, whitespace) and does not look like an IP address, a
    personnummer, a long digit run (phone, account numbers), a UUID or a long
    hex string (hashed or generated ids).
    """
    if value is None:
        return NONE
    text = value if isinstance(value, str) else str(value)
    if not text:
        return NONE
    if _SAFE_LABEL.match(text) is None or _SUSPECT.search(text) is not None:
        return OTHER
    return text


_M = TypeVar("_M", Counter, Gauge, Histogram)


class _Children(Generic[_M]):
    """Pre-bound label children of one metric, cached by raw label tuple.

    The first time a raw tuple is seen its values are sanitised with
    :func:`safe_label_value` and the child is bound; later look-ups are one
    dict access. At most ``max_series`` distinct sanitised label sets are
    created; beyond that, new label sets go to the all-``"other"`` child.
    The raw-tuple cache is bounded too, so hostile input cannot grow memory.
    """

    __slots__ = ("_metric", "_cache", "_series", "_max_series", "_max_cache", "_lock")

    def __init__(self, metric: _M, max_series: int) -> None:
        self._metric: _M = metric
        self._cache: dict[tuple[Any, ...], _M] = {}
        self._series: set[tuple[str, ...]] = set()
        self._max_series = max_series
        self._max_cache = max_series * 4
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> _M:
        """Return the child for a raw label tuple (values in label-name order)."""
        child = self._cache.get(key)
        if child is None:
            child = self._bind(key)
        return child

    def _bind(self, key: tuple[Any, ...]) -> _M:
        safe = tuple(safe_label_value(v) for v in key)
        with self._lock:
            if safe not in self._series:
                if len(self._series) >= self._max_series:
                    safe = (OTHER,) * len(key)
                self._series.add(safe)
            child: _M = self._metric.labels(*safe)
            if len(self._cache) < self._max_cache:
                self._cache[key] = child
        return child


class _GaugeSet:
    """A labelled gauge set from whole snapshots.

    `replace` sums the values of raw label sets that export as one (two targets that
    both become ``"other"`` add up rather than overwrite each other) and sets every label
    set of the previous snapshot that is missing from this one to 0, so a target whose
    last open command closed reads 0, not its last count.
    """

    __slots__ = ("_children", "_last")

    def __init__(self, gauge: Gauge, max_series: int) -> None:
        self._children = _Children(gauge, max_series)
        self._last: dict[int, Gauge] = {}

    def get(self, key: tuple[Any, ...]) -> Gauge:
        """The child of one raw label tuple (to set or move it alone)."""
        return self._children.get(key)

    def replace(self, values: Mapping[tuple[Any, ...], float]) -> None:
        """Set the gauge to this snapshot: one value per raw label tuple."""
        children: dict[int, Gauge] = {}
        sums: dict[int, float] = {}
        for key, value in values.items():
            child = self._children.get(key)
            ident = id(child)  # children live as long as their metric: ids are stable
            children[ident] = child
            sums[ident] = sums.get(ident, 0.0) + value
        for ident, child in self._last.items():
            if ident not in sums:
                child.set(0)
        for ident, total in sums.items():
            children[ident].set(total)
        self._last = children


class PipelineMetrics:
    """All Prometheus metrics of the pipeline, registered on one registry.

    Attributes are the underlying ``prometheus_client`` metrics, named as
    exported less the ``privacy_pipeline_`` prefix (``events_total``,
    ``processing_seconds``, ...), for callers that need them directly; the
    methods are the cheap, label-safe way to record.

    ``controllers``, if given, is the closed set of controller ids (from the
    loaded policy packs): any other controller value is counted as
    ``"other"``. ``max_series`` caps distinct label sets per metric.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        controllers: Iterable[str] | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        self.registry = registry
        self._controllers: frozenset[str] | None = (
            frozenset(controllers) if controllers is not None else None
        )
        reg = registry

        self.events_total = Counter(
            PREFIX + "events",
            "Input events accepted, by source topic, event type and controller.",
            ("topic", "type", "controller"),
            registry=reg,
        )
        self.decisions_total = Counter(
            PREFIX + "decisions",
            "Decisions emitted (tag, erasure, extract, escalation, request_status, reject), by"
            " kind and controller.",
            ("decision", "controller"),
            registry=reg,
        )
        self.suppressions_total = Counter(
            PREFIX + "suppressions",
            "Purposes suppressed on tagged records (opt-out, objection, restriction).",
            ("purpose", "reason", "controller"),
            registry=reg,
        )
        self.erasure_commands_total = Counter(
            PREFIX + "erasure_commands",
            "Erasure commands issued to downstream targets, each once (its re-issues count"
            " in erasure_retries_total).",
            ("reason", "action", "target", "controller"),
            registry=reg,
        )
        self.erasure_acks_total = Counter(
            PREFIX + "erasure_acks",
            "Acks of the worker's open erasure commands, by the command's target and the"
            " ack's status (redelivered acks and acks of no open command are not counted).",
            ("target", "status", "controller"),
            registry=reg,
        )
        self.erasure_retries_total = Counter(
            PREFIX + "erasure_retries",
            "Erasure commands issued again (attempt 2 and later): no answer within the wait,"
            " or a retryable failure.",
            ("target", "controller"),
            registry=reg,
        )
        self.erasure_escalations_total = Counter(
            PREFIX + "erasure_escalations",
            "Erasure commands handed to a person, by reason: attempts_exhausted,"
            " deadline_passed, failed (a failure a retry cannot mend).",
            ("target", "reason", "controller"),
            registry=reg,
        )
        self.erasure_commands_open = Gauge(
            PREFIX + "erasure_commands_open",
            "Erasure commands not yet answered done, not_found or retained, by state:"
            " waiting (re-issued while unanswered) or escalated (left to a person).",
            ("target", "state", "controller"),
            registry=reg,
        )
        self.erasure_commands_overdue = Gauge(
            PREFIX + "erasure_commands_overdue",
            "Open erasure commands whose deadline has passed on the wall clock.",
            ("target", "controller"),
            registry=reg,
        )
        self.erasure_ack_latency_seconds = Histogram(
            PREFIX + "erasure_ack_latency_seconds",
            "Time from a command's first issue (its issued_at) to the target's answer that"
            " closed it (the ack's completed_at): retries included.",
            ("target",),
            registry=reg,
            buckets=ACK_LATENCY_BUCKETS,
        )
        self.request_statuses_total = Counter(
            PREFIX + "request_statuses",
            "Privacy-request status records written (privacy-request-status), by right and"
            " status: in_progress, completed, partially_completed, failed.",
            ("right", "status", "controller"),
            registry=reg,
        )
        self.canary_erasure_seconds = Histogram(
            PREFIX + "canary_erasure_seconds",
            "Time from a deletion canary's erasure request until every target acknowledged.",
            ("controller",),
            registry=reg,
            buckets=CANARY_BUCKETS,
        )
        self.canary_pending_seconds = Gauge(
            PREFIX + "canary_pending_seconds",
            "Age of the oldest canary erasure not yet completed; 0 when none is pending.",
            ("controller",),
            registry=reg,
        )
        self.dead_letters_total = Counter(
            PREFIX + "dead_letters",
            "Records sent to the dead-letter topic, by source topic and reason.",
            ("topic", "reason"),
            registry=reg,
        )
        self.processing_seconds = Histogram(
            PREFIX + "processing_seconds",
            "Time from an event (or micro-batch) being consumed to its decisions being sent.",
            registry=reg,
            buckets=PROCESSING_BUCKETS,
        )
        self.optout_latency_seconds = Histogram(
            PREFIX + "optout_latency_seconds",
            "Time from a consent withdrawal or objection being produced to it being in force.",
            registry=reg,
            buckets=OPTOUT_LATENCY_BUCKETS,
        )
        self.subject_log_delay_seconds = Histogram(
            PREFIX + "subject_log_delay_seconds",
            "Time from a micro-batch written to the subject log to its decisions sent: the"
            " enforce side of processing_seconds (the rest is ingest and the input hop).",
            registry=reg,
            buckets=OPTOUT_LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            PREFIX + "batch_size_events",
            "Events per subject-log micro-batch.",
            registry=reg,
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.retention_timers = Gauge(
            PREFIX + "retention_timers",
            "Subjects with a retention timer pending in this worker, by controller.",
            ("controller",),
            registry=reg,
        )
        self.subject_log_refetched_total = Counter(
            PREFIX + "subject_log_refetched",
            "Subject-log records the enforce consumer skipped and the worker read again"
            " straight from the broker (each is then run in order, none is lost).",
            registry=reg,
        )
        self.consumer_lag_records = Gauge(
            PREFIX + "consumer_lag_records",
            "Records not yet read (high watermark less committed offset) by the ingest"
            " group (input topics, erasure-acks) and the enforce group (subject-log), per"
            " topic and partition. Every worker reports every partition: take the max over"
            " instances. Under-counted on the embedded broker.",
            ("topic", "partition"),
            registry=reg,
        )

        self._events = _Children(self.events_total, max_series)
        self._decisions = _Children(self.decisions_total, max_series)
        self._suppressions = _Children(self.suppressions_total, max_series)
        self._erasures = _Children(self.erasure_commands_total, max_series)
        self._acks = _Children(self.erasure_acks_total, max_series)
        self._retries = _Children(self.erasure_retries_total, max_series)
        self._escalations = _Children(self.erasure_escalations_total, max_series)
        self._statuses = _Children(self.request_statuses_total, max_series)
        self._ack_latency = _Children(self.erasure_ack_latency_seconds, max_series)
        self._dead_letters = _Children(self.dead_letters_total, max_series)
        self._canary_erasure = _Children(self.canary_erasure_seconds, max_series)
        self._canary_pending = _Children(self.canary_pending_seconds, max_series)
        self._timers = _GaugeSet(self.retention_timers, max_series)
        self._open = _GaugeSet(self.erasure_commands_open, max_series)
        self._overdue = _GaugeSet(self.erasure_commands_overdue, max_series)
        self._lag = _GaugeSet(self.consumer_lag_records, max_series)

    # -- helpers ---------------------------------------------------------

    def _controller(self, controller: object) -> object:
        """Map a controller outside the known set (if one was given) to ``"other"``."""
        known = self._controllers
        if known is None or controller is None or controller in known:
            return controller
        return OTHER

    # -- counters --------------------------------------------------------

    def observe_decisions(self, decisions: Iterable[Mapping[str, Any]]) -> None:
        """Count decision dicts (the ``evaluate`` contract shapes).

        Every decision counts in ``decisions_total{decision, controller}``;
        a ``tag`` decision also counts each entry of ``suppressed`` in
        ``suppressions_total{purpose, reason, controller}``; an ``erasure``
        decision counts in ``erasure_commands_total{reason, action, target,
        controller}`` when it is a command's first issue and in
        ``erasure_retries_total{target, controller}`` when it is a re-issue
        (``attempt`` > 1); an ``escalation`` in ``erasure_escalations_total{target,
        reason, controller}``; a ``request_status`` in ``request_statuses_total{right,
        status, controller}``. ``reject`` decisions carry no controller and count
        under ``controller="none"``.
        """
        dec: dict[tuple[Any, ...], int] = {}
        sup: dict[tuple[Any, ...], int] = {}
        era: dict[tuple[Any, ...], int] = {}
        ret: dict[tuple[Any, ...], int] = {}
        esc: dict[tuple[Any, ...], int] = {}
        req: dict[tuple[Any, ...], int] = {}
        known = self._controllers
        for d in decisions:
            kind = d.get("decision")
            controller = d.get("controller")
            if known is not None and controller is not None and controller not in known:
                controller = OTHER
            key = (kind, controller)
            dec[key] = dec.get(key, 0) + 1
            if kind == "tag":
                suppressed = d.get("suppressed")
                if suppressed:
                    for s in suppressed:
                        skey = (s.get("purpose"), s.get("reason"), controller)
                        sup[skey] = sup.get(skey, 0) + 1
            elif kind == "erasure":
                if d.get("attempt", 1) > 1:
                    rkey = (d.get("target"), controller)
                    ret[rkey] = ret.get(rkey, 0) + 1
                else:
                    ekey = (d.get("reason"), d.get("action"), d.get("target"), controller)
                    era[ekey] = era.get(ekey, 0) + 1
            elif kind == "escalation":
                xkey = (d.get("target"), d.get("reason"), controller)
                esc[xkey] = esc.get(xkey, 0) + 1
            elif kind == "request_status":
                qkey = (d.get("right"), d.get("status"), controller)
                req[qkey] = req.get(qkey, 0) + 1
        for children, counts in (
            (self._decisions, dec),
            (self._suppressions, sup),
            (self._erasures, era),
            (self._retries, ret),
            (self._escalations, esc),
            (self._statuses, req),
        ):
            for key, n in counts.items():
                children.get(key).inc(n)

    def observe_decision(self, decision: Mapping[str, Any]) -> None:
        """Count one decision dict; see :meth:`observe_decisions`."""
        self.observe_decisions((decision,))

    def observe_event(
        self, topic: str, event_type: str | None, controller: str | None, count: int = 1
    ) -> None:
        """Count ``count`` accepted input events of one topic, type and controller."""
        self._events.get((topic, event_type, self._controller(controller))).inc(count)

    def observe_events(self, topic: str, events: Iterable[Mapping[str, Any]]) -> None:
        """Count accepted input events (canonical dicts with ``type`` and ``controller``)."""
        counts: dict[tuple[Any, Any, Any], int] = {}
        for e in events:
            key = (topic, e.get("type"), self._controller(e.get("controller")))
            counts[key] = counts.get(key, 0) + 1
        children = self._events
        for key, n in counts.items():
            children.get(key).inc(n)

    def observe_dead_letter(self, topic: str, reason: str, count: int = 1) -> None:
        """Count records sent to dead letters; ``reason`` must be a short code."""
        self._dead_letters.get((topic, reason)).inc(count)

    def observe_ack(
        self, target: str | None, status: str | None, controller: str | None, count: int = 1
    ) -> None:
        """Count acks of open commands; a status outside :data:`ACK_STATUSES` (a sink
        writes the field) counts as ``"other"``."""
        if status not in ACK_STATUSES:
            status = OTHER
        self._acks.get((target, status, self._controller(controller))).inc(count)

    def observe_ack_latency(self, target: str | None, seconds: float) -> None:
        """Record the time from a command's first issue to the answer that closed it."""
        self._ack_latency.get((target,)).observe(seconds)

    def observe_canary_erasure(self, controller: str | None, seconds: float) -> None:
        """Record the time from a canary's erasure request until every target acked."""
        self._canary_erasure.get((self._controller(controller),)).observe(seconds)

    # -- histograms ------------------------------------------------------

    def observe_processing(self, seconds: float) -> None:
        """Record the time from an event or micro-batch consumed to its decisions sent."""
        self.processing_seconds.observe(seconds)

    def observe_optout_latency(self, seconds: float) -> None:
        """Record the time from a withdrawal or objection produced to it being in force."""
        self.optout_latency_seconds.observe(seconds)

    def observe_subject_log_delay(self, seconds: float) -> None:
        """Record the time from a micro-batch written by ingest to its decisions sent."""
        self.subject_log_delay_seconds.observe(seconds)

    def observe_batch_size(self, events: int) -> None:
        """Record the number of events in one subject-log micro-batch."""
        self.batch_size.observe(events)

    def observe_refetched(self, records: int) -> None:
        """Count subject-log records read again because the consumer skipped them."""
        self.subject_log_refetched_total.inc(records)

    # -- gauges ----------------------------------------------------------

    def set_retention_timers(self, controller: str | None, count: int) -> None:
        """Set the number of subjects with a retention timer pending of one controller."""
        self._timers.get((self._controller(controller),)).set(count)

    def add_retention_timers(self, controller: str | None, delta: int) -> None:
        """Add ``delta`` (negative when timers fire or are cancelled) to one controller's timers."""
        self._timers.get((self._controller(controller),)).inc(delta)

    def replace_retention_timers(self, counts: Mapping[str, int]) -> None:
        """Set the timers of every controller: ``controller -> subjects with a timer``;
        a controller missing from ``counts`` reads 0."""
        self._timers.replace({(self._controller(c),): n for c, n in counts.items()})

    def replace_open_commands(
        self,
        open_commands: Mapping[tuple[str, str, str], int],
        overdue: Mapping[tuple[str, str], int],
    ) -> None:
        """Set the open commands, ``(target, state, controller) -> count`` with a state of
        :data:`COMMAND_STATES`, and the overdue ones, ``(target, controller) -> count``.
        Label sets missing from a snapshot read 0."""
        control = self._controller
        self._open.replace({(t, s, control(c)): n for (t, s, c), n in open_commands.items()})
        self._overdue.replace({(t, control(c)): n for (t, c), n in overdue.items()})

    def replace_consumer_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        """Set the records not yet read, ``(topic, partition) -> records``, of every
        partition measured; those missing from ``lag`` read 0."""
        self._lag.replace(lag)

    def set_canary_pending(self, controller: str | None, seconds: float) -> None:
        """Set the age of the oldest canary erasure of ``controller`` not yet completed
        (0 when none is pending)."""
        self._canary_pending.get((self._controller(controller),)).set(seconds)

    def declare_canaries(self, controllers: Iterable[str]) -> None:
        """Export the canary series of each controller before its first canary: the
        histogram at zero and nothing pending. A series that first appears holding one
        canary gives ``increase()`` nothing to count, and the alert on slow canaries
        (ops/alerts.yml) would miss that first one."""
        for controller in controllers:
            key = (self._controller(controller),)
            self._canary_erasure.get(key)
            self._canary_pending.get(key).set(0)


class PipelineRegistry(CollectorRegistry):
    """A registry that exports no ``*_created`` series.

    prometheus_client gives every counter and histogram (and each of their label sets) a
    ``_created`` sample, the Unix time it was first seen: a third of the worker's series
    that no query of ours reads. ``disable_created_metrics()`` would drop them for every
    registry of the process; this drops them for this registry only, when collected.
    """

    def collect(self) -> Iterator[Metric]:
        """Every metric of the registry, less its ``_created`` samples."""
        for metric in super().collect():
            samples = [s for s in metric.samples if not s.name.endswith("_created")]
            if len(samples) == len(metric.samples):
                yield metric
                continue
            trimmed = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            trimmed.samples = samples
            yield trimmed


def make_registry(*, process: bool = True) -> CollectorRegistry:
    """Return a fresh registry, with the process, platform and GC collectors if ``process``.

    A custom registry has none of the collectors the global default one has;
    these give CPU, memory, file descriptors and GC figures of the worker. It exports no
    ``*_created`` series (see :class:`PipelineRegistry`).
    """
    registry = PipelineRegistry()
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


class MetricsServer:
    """A running ``/metrics`` HTTP server; calling it (or :meth:`stop`) stops it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._stopped = False
        address = server.server_address
        self.host: str = str(address[0])
        self.port: int = int(address[1])

    @property
    def url(self) -> str:
        """URL of the metrics endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __call__(self) -> None:
        """Stop the server; see :meth:`stop`."""
        self.stop()


def serve_metrics(port: int, registry: CollectorRegistry, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` at ``http://addr:port/metrics`` in a daemon thread.

    Returns a :class:`MetricsServer`, which is a ``Callable[[], None]`` that
    stops the server; it also tells the bound ``port`` (useful with
    ``port=0``, which picks a free one).
    """
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread)
