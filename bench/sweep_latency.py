"""Opt-out latency against the input rate, on one embedded broker and one warm worker.

    python bench/sweep_latency.py [--rates 100,1000,2000] [--seconds 10] [--send-ms 20]

Starts the embedded broker (a port in 19800-19899) and `privacy-pipeline run`, waits until
the worker is ready and its ingest has joined, then for each rate produces fresh synthetic
traffic (as `bench_pipeline.py`'s latency step does) and prints, from the worker's
histograms over that traffic only: opt-out p50/p99, all events p50/p99, the enforce side
(subject log to decisions sent) p50/p99, and the CPU share of the broker, the worker and
its ingest process. Quantiles interpolate within buckets, as Prometheus does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import bench_pipeline as bp

from privacy_pipeline.embedded_broker.launcher import EmbeddedBroker
from privacy_pipeline.streams.serde import AvroSerde
from privacy_pipeline.streams.topic_admin import ensure_topics
from privacy_pipeline.streams.topics import topic_specs

PREFIX = "sweep-"
WARM_UP_S = 8.0  # ingest joins its consumer group after the worker is ready


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,1000,2000", help="events/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="traffic per rate")
    ap.add_argument("--send-ms", type=int, default=bp.SEND_EVERY_MS, help="producer step")
    args = ap.parse_args()
    bp.SEND_EVERY_MS = args.send_ms
    rates = [float(r) for r in args.rates.split(",")]
    logdir = Path(tempfile.mkdtemp(prefix="sweep-latency-"))
    broker_port, metrics_port = bp.free_ports(2)
    broker = EmbeddedBroker(port=broker_port, log_file=logdir / "broker.log").start()
    serde = AvroSerde()
    ensure_topics(broker.bootstrap, topic_specs(PREFIX, bp.PARTITIONS))
    worker = bp.Worker(broker.bootstrap, PREFIX, metrics_port, logdir).start()
    try:
        while bp.READY_RE.search(worker.log_path.read_text()) is None:
            if not worker.alive():
                raise SystemExit(f"worker exited:\n{worker.log_tail()}")
            time.sleep(0.5)
        time.sleep(WARM_UP_S)
        print(f"logs in {logdir}; producer steps of {args.send_ms} ms")
        print("events/s | opt-out p50/p99 ms | all p50/p99 ms | enforce side p50/p99 ms | CPU %")
        for rate in rates:
            before = worker.metrics()
            broker0, cpu0 = bp.cpu_seconds(broker.pid), worker.cpu()
            r = bp.run_latency(broker.bootstrap, PREFIX, worker, rate, args.seconds, 11, serde)
            after = worker.metrics()
            broker1, cpu1 = bp.cpu_seconds(broker.pid), worker.cpu()
            side = bp.histogram_delta(before, after, "privacy_pipeline_subject_log_delay_seconds")
            elapsed = r["produce_s"] + r["drain_s"]

            def ms(buckets: list[tuple[float, float]], q: float) -> str:
                v = bp.quantile(buckets, q)
                return "-" if v is None else f"{v * 1000:.0f}"

            shares = {
                "broker": broker1 - broker0,
                "worker": cpu1["worker"] - cpu0["worker"],
                "ingest": cpu1["ingest"] - cpu0["ingest"],
            }
            cpu = ", ".join(f"{name} {100 * sec / elapsed:.0f}" for name, sec in shares.items())

            late = "" if r["drain_s"] < 1 else f" (fell behind: done {r['drain_s']:.1f} s late)"
            print(
                f"{rate:8.0f} | {r['p50_ms'] or 0:.0f} / {r['p99_ms'] or 0:.0f}"
                f" | {r['all_p50_ms'] or 0:.0f} / {r['all_p99_ms'] or 0:.0f}"
                f" | {ms(side, 0.5)} / {ms(side, 0.99)}"
                f" | {cpu}{late}",
                flush=True,
            )
            time.sleep(2)
    finally:
        worker.stop()
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
