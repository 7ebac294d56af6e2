"""Where the pipeline's Kafka is and how its clients are tuned: one typed object.

Every Kafka client of the pipeline (ingest, the enforce worker and its outputs, the
subject-log re-reader, `produce`, `tail`, the demo's traffic) takes its configuration
from :class:`ClientTuning`, so each setting has one value and one stated reason. The
environment variables are read in one place, :meth:`Settings.from_env`, and the command
line names the same variables for its options.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ENV_BOOTSTRAP",
    "ENV_POLICIES",
    "ENV_METRICS_HOST",
    "ENV_PREFIX",
    "ENV_SECRETS",
    "ClientTuning",
    "Settings",
    "default_secrets",
]

ENV_BOOTSTRAP: Final = "KAFKA_BOOTSTRAP_SERVERS"
"""HOST:PORT of a Kafka broker; without it `run` and `demo` start the embedded one."""
ENV_PREFIX: Final = "PRIVACY_PIPELINE_TOPIC_PREFIX"
"""Prepended to every topic name (several pipelines on one cluster, tests)."""
ENV_POLICIES: Final = "PRIVACY_PIPELINE_POLICIES"
"""A policy pack file or folder instead of the five shipped seed packs."""
ENV_METRICS_HOST: Final = "PRIVACY_PIPELINE_METRICS_HOST"
"""The address the metrics endpoint listens on (0.0.0.0 in a container)."""
ENV_SECRETS: Final = "PRIVACY_PIPELINE_SECRETS"
"""The folder of the pipeline's keys (design.md, "Secrets")."""


def default_secrets() -> Path:
    """Where the keys live when neither --secrets nor the environment says."""
    return Path.home() / ".privacy-pipeline" / "secrets"


class ClientTuning(BaseModel):
    """Kafka client settings, each with the reason for its value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    session_timeout_ms: int = Field(
        10_000,
        description="Group members (the worker, tail). The embedded broker finishes a "
        "join about half a session timeout after it starts: Kafka's 45 s default would "
        "make every start take 20 s.",
    )
    ingest_session_timeout_ms: int = Field(
        6_000,
        description="Ingest's group: 6 s is Kafka's minimum, so ingest owns its inputs "
        "3 s after a join instead of 5 s.",
    )
    heartbeat_interval_ms: int = Field(1_000, description="A third or less of the session.")
    ingest_fetch_wait_ms: int = Field(
        30,
        description="Opt-outs must be in force within 100 ms; every hop's idle fetch wait "
        "adds to it.",
    )
    enforce_fetch_wait_ms: int = Field(
        30, description="The faust consumer of the subject log (faust hard-codes 1.5 s)."
    )
    sink_fetch_wait_ms: int = Field(
        100,
        description="Sinks and materialisers: commands have deadlines of hours, and waits "
        "below ~100 ms can stall on topics of tiny batches on the embedded broker (a sink "
        "at 30 ms was seen to get no command of one partition for 90 s).",
    )
    reader_fetch_wait_ms: int = Field(
        100,
        description="Readers with no latency target (tail, the subject-log re-reader): "
        "shorter waits can stall on topics of tiny batches on the embedded broker.",
    )
    output_linger_ms: int = Field(
        8,
        description="Enforce outputs. 2 ms made the embedded broker take a request per "
        "partition every 2 ms (p99 939 ms at 2k events/s); 20 ms added its wait at low "
        "rates (p99 204 ms at 100 events/s).",
    )
    faust_producer_linger_ms: int = Field(
        2, description="faust's own producer (changelog records, one per micro-batch group)."
    )
    traffic_linger_ms: int = Field(
        20,
        description="Producers of input events (demo, produce, benchmarks): bigger "
        "batches cost the embedded broker far less CPU than many small ones.",
    )
    message_max_bytes: int = Field(
        8_000_000,
        description="A micro-batch of about a thousand events, or a changelog record "
        "(split at 256 KiB), must fit in one record.",
    )

    def producer(self, bootstrap: str, **overrides: Any) -> dict[str, Any]:
        """A producer's config: murmur2 key placement, as faust, aiokafka and Java place keys
        (confluent-kafka's own default hashes with CRC32 and puts keys elsewhere)."""
        return {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "message.max.bytes": self.message_max_bytes,
            **overrides,
        }

    def output_producer(self, bootstrap: str) -> dict[str, Any]:
        """Enforce's producer of tagged records, commands, audit and dead letters."""
        return self.producer(bootstrap, **{"linger.ms": self.output_linger_ms})

    def subject_log_producer(self, bootstrap: str) -> dict[str, Any]:
        """Ingest's producer: one micro-batch per Kafka record batch.

        With several records in one batch, faust's consumer (aiokafka) on the embedded
        broker was seen to skip all but the first of them; a micro-batch is big enough alone.
        """
        return self.producer(bootstrap, **{"linger.ms": 0, "batch.num.messages": 1})

    def traffic_producer(self, bootstrap: str, linger_ms: float | None = None) -> dict[str, Any]:
        """A producer of input events (demo, `produce`, benchmarks, tests)."""
        linger = self.traffic_linger_ms if linger_ms is None else linger_ms
        return self.producer(
            bootstrap, **{"linger.ms": linger, "queue.buffering.max.messages": 500_000}
        )

    def ingest_consumer(self, bootstrap: str, group_id: str) -> dict[str, Any]:
        """Ingest's consumer of the input topics (offsets committed by hand)."""
        return {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self.ingest_session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            "fetch.wait.max.ms": self.ingest_fetch_wait_ms,
        }

    def sink_consumer(self, bootstrap: str, group_id: str) -> dict[str, Any]:
        """A sink's (or materialiser's) consumer: its group's offsets committed by hand."""
        return {
            **self.ingest_consumer(bootstrap, group_id),
            "fetch.wait.max.ms": self.sink_fetch_wait_ms,
        }

    def reader_consumer(
        self, bootstrap: str, group_id: str, *, from_beginning: bool = True
    ) -> dict[str, Any]:
        """A reader that assigns partitions itself and never commits (tail, re-reads, tests)."""
        return {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "session.timeout.ms": self.session_timeout_ms,
            "fetch.wait.max.ms": self.reader_fetch_wait_ms,
        }

    def faust_app(self) -> dict[str, Any]:
        """The Kafka settings of the faust app (its units are seconds)."""
        return {
            "broker_session_timeout": self.session_timeout_ms / 1000,
            "broker_heartbeat_interval": self.heartbeat_interval_ms / 1000,
            "producer_linger": self.faust_producer_linger_ms / 1000,
        }


class Settings(BaseModel):
    """Which broker, which topic prefix, and how the clients are tuned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str | None = Field(None, description=f"Kafka HOST:PORT (env {ENV_BOOTSTRAP})")
    prefix: str = Field("", description=f"topic name prefix (env {ENV_PREFIX})")
    tuning: ClientTuning = Field(default_factory=ClientTuning)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> Settings:
        """Settings from the environment; values in *given* that are not None win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "bootstrap": env.get(ENV_BOOTSTRAP) or None,
            "prefix": env.get(ENV_PREFIX, ""),
        }
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)

    @property
    def broker(self) -> str:
        """The bootstrap address; raises if none is configured."""
        if not self.bootstrap:
            raise ValueError(f"no Kafka broker configured (--broker or {ENV_BOOTSTRAP})")
        return self.bootstrap

    def with_broker(self, bootstrap: str) -> Settings:
        """The same settings on another broker (e.g. the embedded one just started)."""
        return self.model_copy(update={"bootstrap": bootstrap})
