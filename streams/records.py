"""Decisions to wire records, and the subject-log partitioning shared by every producer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from hashlib import blake2b
from typing import Any

from aiokafka.partitioner import murmur2

from privacy_pipeline.processors.instants import format_instant

from .signing import CommandSigner


@lru_cache(maxsize=200_000)
def subject_partition(key: str, partitions: int) -> int:
    """The subject-log partition of `controller:subject_id`: murmur2, as Java and faust."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def subject_ref(controller: str | None, subject_id: str | None) -> str | None:
    """A pseudonymous reference for logs and audit headers (never the id itself)."""
    if controller is None or subject_id is None:
        return None
    digest = blake2b(f"{controller}:{subject_id}".encode(), digest_size=8).hexdigest()
    return f"{controller}:{digest}"


def tagged_record(
    decision: dict[str, Any], event_type: str, record: dict[str, Any], version: str
) -> dict[str, Any]:
    """A `TaggedRecord`: the tag decision with the record it is about."""
    return {
        "decision": "tag",
        "event_id": decision["event_id"],
        "controller": decision["controller"],
        "subject_id": decision["subject_id"],
        "type": event_type,
        "purposes": decision["purposes"],
        "suppressed": decision["suppressed"],
        "policy_version": version,
        "record": record,
    }


def erasure_command(
    decision: dict[str, Any], version: str, signer: CommandSigner | None = None
) -> dict[str, Any]:
    """An `ErasureCommand`: the erasure decision plus the policy version, first attempt,
    signed by *signer* (unsigned without one: sinks reject those)."""
    command = dict(decision)
    command["policy_version"] = version
    command.setdefault("recorded_before", None)
    command.setdefault("due_at", None)
    command.setdefault("request_id", None)
    command.setdefault("attempt", 1)
    command["signature"] = None if signer is None else signer.sign(command)
    return command


def audit_record(decision: dict[str, Any], at: str) -> dict[str, Any]:
    """An `AuditRecord` carrying the whole decision as canonical JSON."""
    return {
        "decision": decision["decision"],
        "controller": decision.get("controller"),
        "subject_ref": subject_ref(decision.get("controller"), decision.get("subject_id")),
        "event_id": decision.get("event_id"),
        "at": at,
        "payload_json": json.dumps(decision, ensure_ascii=False, separators=(",", ":")),
    }


def wall_instant(seconds: float) -> str:
    """A wall-clock instant for record headers (`at` of audit records and dead letters).

    Never used for decisions: those run on the log's own clock.
    """
    return format_instant(datetime.fromtimestamp(seconds, tz=UTC))
