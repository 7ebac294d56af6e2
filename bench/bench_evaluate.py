"""Benchmark `evaluate` against a bare JSON read-and-write of the same lines, side by side.

    python bench/bench_evaluate.py [--events 200000] [--subjects 10000] [--check]
                                   [--profile 25]

1. Generates synthetic events for all five controllers (privacy_pipeline.demo.traffic) to a
   temporary JSON-lines file; not timed.
2. Times, interleaved and best of `--repeats`, on the same file and the same sink
   (/dev/null):
   - bare: `for line in file: json.loads; json.dumps; write`, with the very `json.dumps`
     arguments `encode_decision` uses: the floor for any Python evaluator;
   - bare, cached encoder: the same with one `JSONEncoder` made once (information only);
   - evaluate: what `privacy-pipeline evaluate` runs, in process:
     `Replay(PolicyEnforcer(packs)).run(lines)` + `encode_decision` + write.
     Loading the YAML packs is timed apart (once per process, not per event).
3. Memory, in a separate evaluate run under tracemalloc: the peak divided by subjects, and
   the memory retained per subject (what is freed when the Replay drops its subject states
   and then its timer index), plus the mean size of `json.dumps(state.to_dict())`.

Prints a table, then as the last line one JSON object with the figures. Targets: ratio
(bare events/s over evaluate events/s) <= 6, retained state < 2048 bytes per subject. Exits
0 even when a target is missed (the table says MISSED) unless `--check` is given.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from privacy_pipeline.demo.traffic import CONTROLLERS, TrafficModel
from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.policy import PolicyPack, load_packs, packaged_policies
from privacy_pipeline.processors.replay import Replay, encode_decision

TARGET_RATIO = 6.0
TARGET_STATE_BYTES = 2048
START = datetime(2022, 1, 1, tzinfo=ZoneInfo("Europe/Stockholm"))


# -- the runs ---------------------------------------------------------------------------


def run_bare(path: Path, sink: IO[str]) -> int:
    """The floor: decode and re-encode every line, as encode_decision encodes."""
    loads, dumps = json.loads, json.dumps
    write = sink.write
    n = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            write(dumps(loads(line), ensure_ascii=False, separators=(",", ":")))
            write("\n")
            n += 1
    return n


def run_bare_cached(path: Path, sink: IO[str]) -> int:
    """The floor with one encoder made up front (what a cached encoder would save)."""
    loads = json.loads
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    write = sink.write
    n = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            write(dumps(loads(line)))
            write("\n")
            n += 1
    return n


def run_evaluate(
    path: Path, packs: dict[str, PolicyPack], sink: IO[str]
) -> tuple[Counter[str], Replay]:
    """`privacy-pipeline evaluate` in process: the same processors, encoding and counts."""
    replay = Replay(PolicyEnforcer(packs))
    counts: Counter[str] = Counter()
    write = sink.write
    with path.open(encoding="utf-8") as f:
        for decision in replay.run(f):
            counts[decision["decision"]] += 1
            write(encode_decision(decision))
            write("\n")
    return counts, replay


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


# -- memory -------------------------------------------------------------------------------


def measure_memory(
    path: Path, packs: dict[str, PolicyPack], sink: IO[str], top: int
) -> dict[str, Any]:
    """Peak and retained memory of one evaluate run, from tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        before = tracemalloc.take_snapshot() if top else None
        _, replay = run_evaluate(path, packs, sink)
        gc.collect()
        after_run, peak = tracemalloc.get_traced_memory()
        retained_top: list[str] = []
        if before is not None:
            after = tracemalloc.take_snapshot()
            filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
            diff = after.filter_traces(filters).compare_to(before.filter_traces(filters), "lineno")
            for stat in diff[:top]:
                frame = stat.traceback[0]
                retained_top.append(
                    f"{stat.size_diff / 1024:10.0f} KiB {stat.count_diff:9,d} blocks  "
                    f"{_short(frame.filename)}:{frame.lineno}"
                )
            del after, diff
        subjects = len(replay.states)
        pending = replay.pending_timers()
        # What the subjects' states hold: freed when the Replay lets go of them.
        replay.states = {}
        gc.collect()
        after_states = tracemalloc.get_traced_memory()[0]
        # The timer index (heap + schedule) is per-subject state too.
        replay._timers = []
        gc.collect()
        after_timers = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    states_bytes = after_run - after_states
    timer_bytes = after_states - after_timers
    return {
        "subjects": subjects,
        "pending_timers": pending,
        "peak_bytes": peak - base,
        "states_bytes": states_bytes,
        "timer_bytes": timer_bytes,
        "retained_bytes": after_run - base,
        "retained_top": retained_top,
    }


def _short(filename: str) -> str:
    for marker in ("privacy_pipeline/", "site-packages/", "lib/python"):
        i = filename.find(marker)
        if i >= 0:
            return filename[i:]
    return filename


def state_json_sizes(replay: Replay) -> tuple[float, int]:
    """Mean and largest size of `json.dumps(state.to_dict())` over the subjects."""
    sizes = [len(json.dumps(s.to_dict()).encode()) for s in replay.states.values()]
    return (sum(sizes) / len(sizes) if sizes else 0.0), max(sizes, default=0)


# -- profile --------------------------------------------------------------------------------


def profile_evaluate(path: Path, packs: dict[str, PolicyPack], sink: IO[str], top: int) -> str:
    """cProfile of one evaluate run: top functions by cumulative and by own time."""
    prof = cProfile.Profile()
    prof.enable()
    run_evaluate(path, packs, sink)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# -- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--span-days", type=float, default=4 * 365.25, help="time the events cover (days)"
    )
    parser.add_argument("--bad-ratio", type=float, default=0.0, help="share of bad events")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (best)")
    parser.add_argument("--policies", type=Path, default=None, help="packs (default: seeds)")
    parser.add_argument("--keep", type=Path, default=None, help="write the events here, keep")
    parser.add_argument("--top", type=int, default=8, help="retained-memory lines to show")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also cProfile evaluate, top N"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    policies = args.policies or packaged_policies()
    t0 = time.perf_counter()
    packs = load_packs(policies)
    load_s = time.perf_counter() - t0
    missing = set(CONTROLLERS) - set(packs)
    if missing:
        parser.error(f"policies lack packs for {', '.join(sorted(missing))}")

    if args.keep is not None:
        path = args.keep
    else:
        fd, name = tempfile.mkstemp(prefix="bench-evaluate-", suffix=".jsonl")
        os.close(fd)
        path = Path(name)
    try:
        model = TrafficModel(
            args.seed,
            args.subjects,
            START,
            timedelta(days=args.span_days),
            bad_ratio=args.bad_ratio,
        )
        t0 = time.perf_counter()
        types: Counter[str] = Counter()
        with path.open("w", encoding="utf-8") as f:
            for line in model.lines(args.events):
                f.write(line)
                f.write("\n")
                i = line.find('"type":"')
                types[line[i + 8 : line.find('"', i + 8)] if i >= 0 else "?"] += 1
        gen_s = time.perf_counter() - t0
        size = path.stat().st_size
        return _bench(args, path, packs, load_s, gen_s, size, types)
    finally:
        if args.keep is None:
            path.unlink(missing_ok=True)


def _bench(
    args: argparse.Namespace,
    path: Path,
    packs: dict[str, PolicyPack],
    load_s: float,
    gen_s: float,
    size: int,
    types: Counter[str],
) -> int:
    n_events = args.events
    print(
        f"events: {n_events:,} lines ({size / n_events:.0f} bytes each, "
        f"{size / 1e6:.1f} MB), {args.subjects:,} subjects, {len(packs)} controllers, "
        f"span {args.span_days:g} days; generated in {gen_s:.1f} s ({n_events / gen_s:,.0f}/s)"
    )
    print("types:", ", ".join(f"{t} {c:,}" for t, c in types.most_common()))
    print(f"policy packs loaded in {load_s * 1000:.0f} ms (once per process; not in the runs)")

    best = {"bare": float("inf"), "bare_cached": float("inf"), "evaluate": float("inf")}
    kinds: Counter[str] = Counter()
    last: Replay | None = None
    with open(os.devnull, "w", encoding="utf-8") as sink:
        for _ in range(args.repeats):
            t, n = timed(lambda: run_bare(path, sink))
            assert n == n_events
            best["bare"] = min(best["bare"], t)
            t, n = timed(lambda: run_bare_cached(path, sink))
            best["bare_cached"] = min(best["bare_cached"], t)
            last = None
            t, (kinds, last) = timed(lambda: run_evaluate(path, packs, sink))
            best["evaluate"] = min(best["evaluate"], t)
        assert last is not None
        decisions = sum(kinds.values())
        json_mean, json_max = state_json_sizes(last)
        del last
        mem = measure_memory(path, packs, sink, args.top)
        profile = profile_evaluate(path, packs, sink, args.profile) if args.profile else ""

    bare_eps = n_events / best["bare"]
    cached_eps = n_events / best["bare_cached"]
    eval_eps = n_events / best["evaluate"]
    ratio = bare_eps / eval_eps
    subjects = max(1, mem["subjects"])
    peak_ps = mem["peak_bytes"] / subjects
    state_ps = (mem["states_bytes"] + mem["timer_bytes"]) / subjects
    ratio_ok = ratio <= TARGET_RATIO
    state_ok = state_ps < TARGET_STATE_BYTES

    w = 44
    print()
    print(f"{'run (best of ' + str(args.repeats) + ', sink /dev/null)':<{w}} {'s':>7} {'ev/s':>10}")
    print(f"{'bare: json.loads + json.dumps + write':<{w}} {best['bare']:7.2f} {bare_eps:10,.0f}")
    print(
        f"{'  (same, encoder made once; info)':<{w}} {best['bare_cached']:7.2f} {cached_eps:10,.0f}"
    )
    print(
        f"{'evaluate: Replay + encode_decision + write':<{w}} "
        f"{best['evaluate']:7.2f} {eval_eps:10,.0f}"
    )
    print(
        f"evaluate wrote {decisions:,} decisions ({decisions / n_events:.2f} per event): "
        + ", ".join(f"{k} {v:,}" for k, v in kinds.most_common())
    )
    print(
        f"per event: bare {1e6 / bare_eps:.1f} us, evaluate {1e6 / eval_eps:.1f} us "
        f"(+{1e6 / eval_eps - 1e6 / bare_eps:.1f} us)"
    )
    print()
    print(f"memory (tracemalloc, separate run; {mem['subjects']:,} subjects in the Replay)")
    print(
        f"  peak during the run        {mem['peak_bytes'] / 1e6:8.1f} MB  {peak_ps:8,.0f} B/subject"
    )
    print(
        f"  retained: subject states   {mem['states_bytes'] / 1e6:8.1f} MB  "
        f"{mem['states_bytes'] / subjects:8,.0f} B/subject"
    )
    print(
        f"  retained: timer index      {mem['timer_bytes'] / 1e6:8.1f} MB  "
        f"{mem['timer_bytes'] / subjects:8,.0f} B/subject ({mem['pending_timers']:,} pending)"
    )
    print(f"  retained state, total      {'':8}     {state_ps:8,.0f} B/subject")
    print(f"  json.dumps(state.to_dict()) mean {json_mean:,.0f} B, max {json_max:,} B")
    if mem["retained_top"]:
        print("  retained after the run, by allocating line:")
        for line in mem["retained_top"]:
            print("   ", line)
    print()
    print("targets:")
    print(
        f"  ratio bare/evaluate {ratio:.2f} (target <= {TARGET_RATIO:g}): "
        + ("ok" if ratio_ok else "MISSED")
    )
    print(
        f"  retained state {state_ps:,.0f} B/subject (target < {TARGET_STATE_BYTES}): "
        + ("ok" if state_ok else "MISSED")
    )
    if profile:
        print()
        print("cProfile of one evaluate run (profiling slows it; compare shares, not times):")
        print(profile)
    summary = {
        "evaluate_eps": round(eval_eps),
        "bare_eps": round(bare_eps),
        "ratio": round(ratio, 2),
        "peak_bytes_per_subject": round(peak_ps),
        "state_bytes_per_subject": round(state_ps),
        "state_json_bytes_per_subject": round(json_mean),
        "events": n_events,
        "subjects": mem["subjects"],
        "decisions": decisions,
        "bare_cached_encoder_eps": round(cached_eps),
        "states_only_bytes_per_subject": round(mem["states_bytes"] / subjects),
        "timer_index_bytes_per_subject": round(mem["timer_bytes"] / subjects),
        "targets": {"ratio_max": TARGET_RATIO, "state_bytes_max": TARGET_STATE_BYTES},
        "missed": [m for m, ok in (("ratio", ratio_ok), ("state", state_ok)) if not ok],
    }
    sys.stdout.flush()
    print(json.dumps(summary))
    if args.check and not (ratio_ok and state_ok):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
