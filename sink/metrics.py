"""Prometheus metrics of a sink, built against a registry passed in.

Label values are target ids, actions, ack statuses and dead-letter reasons: closed sets,
and every value still goes through :func:`~privacy_pipeline.streams.metrics.safe_label_value`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from privacy_pipeline.streams.metrics import PREFIX, PROCESSING_BUCKETS, safe_label_value

__all__ = ["SinkMetrics"]


class SinkMetrics:
    """Commands applied (by target, action, ack status), their time, and dead letters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.commands_total = Counter(
            PREFIX + "sink_commands",
            "Erasure commands a sink applied, by target, action and ack status.",
            ("target", "action", "status"),
            registry=registry,
        )
        self.apply_seconds = Histogram(
            PREFIX + "sink_apply_seconds",
            "Time to apply one command in its database transaction.",
            ("target",),
            buckets=PROCESSING_BUCKETS,
            registry=registry,
        )
        self.dead_letters_total = Counter(
            PREFIX + "sink_dead_letters",
            "Commands a sink refused (undecodable, wrong schema, invalid signature, "
            "unmapped category), by target and reason.",
            ("target", "reason"),
            registry=registry,
        )

    def observe_command(self, target: str, action: str, status: str, seconds: float) -> None:
        """Count one applied command and its time."""
        safe = safe_label_value(target)
        self.commands_total.labels(safe, safe_label_value(action), safe_label_value(status)).inc()
        self.apply_seconds.labels(safe).observe(seconds)

    def observe_dead_letter(self, target: str, reason: str) -> None:
        """Count one refused command."""
        self.dead_letters_total.labels(safe_label_value(target), safe_label_value(reason)).inc()
