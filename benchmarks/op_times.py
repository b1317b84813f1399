"""XLA operations' times from one JAX profiler trace (shared by decode_profile.py and train_profile.py).

On a CPU, JAX's profiler records each execution of each XLA operation (a dot, a fusion, a copy)
as one event named after it (`dot.12`, `copy_bitcast_fusion.3`). These helpers run a function
under the profiler and sum those events, by operation and by kind of operation (the name
without its number).
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax


def _is_xla_operation(event: dict) -> bool:
    """Not a Python frame ($...), an executor's own span (spaces, ::, parentheses), or an end marker."""
    name = event.get("name", "")
    return (event.get("ph") == "X" and not name.startswith(("$", "end: "))
            and not any(mark in name for mark in (" ", "::", "(")))


def kind_of(name: str) -> str:
    """`dot.12` -> `dot`, `cond.25.clone.3` -> `cond`."""
    return re.sub(r"(\.\d+|\.clone)+$", "", name)


def traced_events(run: Callable[[], object]) -> list[dict]:
    """The profiler's trace events over one call of `run`. `run` should be compiled already: a
    compilation inside would be traced too."""
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            jax.block_until_ready(run())
        return json.load(gzip.open(next(Path(trace_dir).rglob("*.trace.json.gz"))))["traceEvents"]


def operation_times(events: list[dict]) -> tuple[collections.Counter, collections.Counter]:
    """(microseconds, executions) per XLA operation."""
    times, executions = collections.Counter(), collections.Counter()
    for event in events:
        if _is_xla_operation(event):
            times[event["name"]] += event["dur"]
            executions[event["name"]] += 1
    return times, executions


def traced_operations(run: Callable[[], object]) -> tuple[collections.Counter, collections.Counter]:
    """(microseconds, executions) per XLA operation over one call of `run` under the profiler."""
    return operation_times(traced_events(run))


def thread_occupancy(events: list[dict], per: int) -> list[dict]:
    """For each thread that ran XLA operations: from its first operation to its last, how long it
    was inside one (nested ones counted once) and how long between them, per unit of `per`. The
    time between is where a thread waited for work: for the other device, a dependency, a hand-off."""
    by_thread: dict[tuple, list[tuple[float, float]]] = collections.defaultdict(list)
    for event in events:
        if _is_xla_operation(event):
            by_thread[(event["pid"], event["tid"])].append((event["ts"], event["ts"] + event["dur"]))
    rows = []
    for intervals in by_thread.values():
        intervals.sort()
        busy, gaps, end = 0.0, 0, intervals[0][0]
        for start, finish in intervals:
            if start > end:
                gaps += 1
            busy += max(0.0, finish - max(start, end))
            end = max(end, finish)
        span = end - intervals[0][0]
        rows.append({"operations_per_unit": round(len(intervals) / per, 1), "span_ms_per_unit": round(span / per / 1e3, 1),
                     "busy_ms_per_unit": round(busy / per / 1e3, 1), "between_ms_per_unit": round((span - busy) / per / 1e3, 1),
                     "gaps_per_unit": round(gaps / per, 1)})
    return sorted(rows, key=lambda row: -row["busy_ms_per_unit"])


def by_kind(times: collections.Counter, executions: collections.Counter, per: int, unit: str,
            top: int = 40) -> list[dict]:
    """Rows of (kind, time per `unit`, executions per `unit`), largest first, over `per` units."""
    total, count = collections.Counter(), collections.Counter()
    for name, microseconds in times.items():
        total[kind_of(name)] += microseconds
        count[kind_of(name)] += executions[name]
    return [{"operation": kind, f"us_per_{unit}": round(microseconds / per, 1),
             f"executions_per_{unit}": round(count[kind] / per, 2)}
            for kind, microseconds in total.most_common(top)]


def largest(times: collections.Counter, per: int, top: int = 25) -> list[dict]:
    """The single operations that took longest, per unit (for finding them in the compiled HLO)."""
    return [{"operation": name, "us": round(microseconds / per, 1)} for name, microseconds in times.most_common(top)]
