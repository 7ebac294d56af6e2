"""Subject-log records the enforce consumer passes over are read again, not lost.

faust can ack records it never handed to the agent (fetched before a rebalance, or while
its flow was suspended), and then commits past them; a restarted worker resumes from that
commit. The scenario sets up exactly that end state: micro-batches in the subject log, and
the worker's group committed past the first three of them, as if faust had acked them
unrun. The worker must see the gap at the first record it gets, read offsets 0-2 straight
from the broker, and run them in order before it.
"""

from __future__ import annotations

import re
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from worker_process import (
    SERDE,
    Readers,
    WorkerProcess,
    click,
    pick_port,
    pipeline_topics,
    send_raw,
)

from privacy_pipeline.processors.policy import load_packs, packaged_policies
from privacy_pipeline.streams.ingest import Ingest
from privacy_pipeline.streams.serde import event_to_avro

pytestmark = pytest.mark.integration

SKIPPED = 3  # micro-batches the worker's group is committed past


def test_records_the_consumer_skipped_are_read_again_and_run_in_order(
    broker: str, topic_prefix: str, tmp_path: Path
) -> None:
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    # Inrego §2.4: a visit is kept for analytics on legitimate interest, 24 months.
    visits = [click("inrego", f"visitor-{i}", start + timedelta(minutes=i)) for i in range(5)]
    with pipeline_topics(broker, topic_prefix, partitions=1):
        # The worker's own ingest group, so that the worker's ingest finds them done.
        ingest = Ingest(
            broker,
            sorted(load_packs(packaged_policies())),
            partitions=1,
            prefix=topic_prefix,
            group_id=f"{topic_prefix}privacy-pipeline-ingest",
            tick_interval=0,
        )
        try:
            for visit in visits:  # one micro-batch each: offsets 0-4 of the subject log
                name, record = event_to_avro(visit)
                send_raw(broker, topic_prefix + "clicks", [(None, SERDE.encode(name, record))])
                deadline = time.monotonic() + 60
                while ingest.step(timeout=0.5) == 0:
                    assert time.monotonic() < deadline, "ingest consumed nothing"
        finally:
            ingest.close()
        committer = Consumer(
            {"bootstrap.servers": broker, "group.id": f"{topic_prefix}privacy-pipeline"}
        )
        committer.commit(
            offsets=[TopicPartition(topic_prefix + "subject-log", 0, SKIPPED)],
            asynchronous=False,
        )
        committer.close()

        metrics_port = pick_port()
        worker = WorkerProcess(
            broker, topic_prefix, tmp_path, partitions=1, metrics_port=metrics_port
        )
        readers = Readers(broker, topic_prefix)
        try:
            worker.start().wait_ready()
            tagged = readers["tagged-clicks"]
            tagged.wait(len(visits), timeout=60)
            tagged.poll(1.0)  # and nothing more
            values = tagged.values()
            assert [v["event_id"] for v in values] == [v["event_id"] for v in visits]
            for value in values:
                (purpose,) = [p for p in value["purposes"] if p["purpose"] == "analytics"]
                assert purpose["legal_basis"] == "legitimate_interest"
            first = values[0]["purposes"]
            expiry = next(p["expires_at"] for p in first if p["purpose"] == "analytics")
            assert expiry == "2028-03-02T09:00:00Z"

            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as reply:
                text = reply.read().decode()
            refetched = re.search(
                r"^privacy_pipeline_subject_log_refetched_total (\S+)$", text, re.M
            )
            assert refetched is not None and float(refetched.group(1)) == SKIPPED
            assert f"offsets 0-{SKIPPED - 1} were skipped by the consumer" in worker.log()
        finally:
            readers.close()
            worker.cleanup()
