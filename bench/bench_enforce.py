"""CPU per event of the live pipeline's Python stages, offline (no broker), side by side.

    python bench/bench_enforce.py [--events 100000] [--subjects 10000] [--batch 2000]
                                  [--profile 25]

Runs, in one process and on the same synthetic input (Avro-encoded as producers send it):

- passthrough: decode + encode each input record (the floor `bench_pipeline` measures
  with Kafka around it);
- ingest: what one `Ingest.step` does per consumed batch of `--batch` records, minus
  Kafka: decode, validate, group by subject-log partition, sort, encode `SubjectBatch`;
- enforce: `EnforceCore.process` on those micro-batches with a null output (decode the
  micro-batch, run the processors, encode the tagged records, commands and audit
  records, build the changelog records).

Prints µs of CPU per event for each and the ratios to the passthrough: the pipeline's
best possible `bench_pipeline` ratio on 2 cores is about
`passthrough / max(enforce, ingest + broker)`. `--profile N` adds a cProfile of enforce.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from privacy_pipeline.demo.traffic import TrafficModel
from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.events import EventError, parse_event
from privacy_pipeline.processors.policy import load_packs, packaged_policies
from privacy_pipeline.streams.enforce import EnforceCore
from privacy_pipeline.streams.records import subject_partition
from privacy_pipeline.streams.serde import AvroSerde, RecordError, event_to_avro
from privacy_pipeline.streams.subject_batch import SubjectBatchWriter, SubjectEntry
from privacy_pipeline.streams.testing import NullOutputs
from privacy_pipeline.streams.topics import CLICKS

PARTITIONS = 4


def encoded_inputs(serde: AvroSerde, events: Iterator[dict[str, Any]]) -> list[bytes]:
    out = []
    for event in events:
        try:
            name, record = event_to_avro(event)
            out.append(serde.encode(name, record))
        except RecordError:
            continue
    return out


def passthrough(serde: AvroSerde, values: list[bytes]) -> None:
    for value in values:
        name, record = serde.decode(value)
        serde.encode(name, record)


def ingest_batches(serde: AvroSerde, values: list[bytes], batch: int) -> list[tuple[int, bytes]]:
    """Micro-batches as `Ingest.step` builds them (same fields, same order)."""
    out: list[tuple[int, bytes]] = []
    writer = SubjectBatchWriter(serde)
    now_ms = int(time.time() * 1000)
    for start in range(0, len(values), batch):
        items: dict[int, list[tuple[Any, SubjectEntry]]] = {}
        for offset, value in enumerate(values[start : start + batch], start):
            name, record = serde.decode(value)
            try:
                event = parse_event(record)
            except EventError:
                continue
            key = f"{event.controller}:{event.subject_id}"
            entry = SubjectEntry(
                key, CLICKS.name, 0, offset, now_ms, name, writer.body(value, name, record)
            )
            items.setdefault(subject_partition(key, PARTITIONS), []).append(
                (event.occurred_at, entry)
            )
        for partition, part in items.items():
            part.sort(key=lambda pair: pair[0])
            value = writer.encode(f"b-{start}-{partition}", now_ms, [e for _, e in part])
            out.append((partition, value))
    return out


def enforce(batches: list[tuple[int, bytes]]) -> tuple[EnforceCore, NullOutputs]:
    outputs = NullOutputs()
    core = EnforceCore(
        PolicyEnforcer(load_packs(packaged_policies())), AvroSerde(), outputs, {}, PARTITIONS
    )
    for offset, (partition, value) in enumerate(batches):
        for record in core.process(partition, value, offset):
            outputs.bytes += len(record)
    return core, outputs


def cpu(fn: Any, *args: Any) -> tuple[float, Any]:
    t = time.process_time()
    result = fn(*args)
    return time.process_time() - t, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=2000, help="records per ingest step")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args()
    serde = AvroSerde()
    now = datetime.now(UTC)
    model = TrafficModel(7, args.subjects, now - timedelta(days=30), timedelta(days=30))
    values = encoded_inputs(serde, model.events(args.events))
    n = len(values)
    base, _ = cpu(passthrough, serde, values)
    ing, batches = cpu(ingest_batches, serde, values, args.batch)
    enf, (core, outputs) = cpu(enforce, batches)
    per = {"passthrough": base, "ingest": ing, "enforce": enf}
    print(f"{n:,} events, {len(batches):,} micro-batches, {outputs.sent:,} output records")
    for name, seconds in per.items():
        us = seconds / n * 1e6
        print(f"  {name:12} {us:7.1f} µs/event  ({us / (base / n * 1e6):.2f}x passthrough)")
    print(f"  output bytes per event (outputs + changelog): {outputs.bytes / n:,.0f}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        enforce(batches)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.profile)
        print(text.getvalue())
    print(json.dumps({k + "_us": round(v / n * 1e6, 1) for k, v in per.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
