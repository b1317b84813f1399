"""Where a train step's time goes: JAX's profiler over a few steps of the real step, per XLA operation.

    .venv/bin/python benchmarks/train_profile.py [--case tiny:8:256] [--steps 3] [--out FILE]

Builds and compiles the step exactly as `lumi train` does (train_throughput.compiled_step, one
device per core unless LUMI_CPU_DEVICES=1), runs two warm-up steps, then --steps steps under
`jax.profiler.trace`, and sums the trace's events by operation (op_times.py). Times are per
step; with several devices each device's operations are counted, so the sum can exceed the
wall time. The profiler adds its own overhead: the shares matter more than the sums. The
largest single operations are listed too, by the names they have in the compiled HLO
(`compiled.as_text()`). Writes benchmarks/results/train_profile_<model>_cpu.json unless --out
says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax  # noqa: E402  (after train_throughput, which sets the CPU devices up first)
from op_times import (  # benchmarks/op_times.py, beside this script
    by_kind,
    largest,
    operation_times,
    thread_occupancy,
    traced_events,
)
from train_throughput import REPO_ROOT, compiled_step, machine  # benchmarks/train_throughput.py

from lumi_jax.config import TrainConfig, load_model_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="tiny:8:256", help="MODEL:BATCH:CONTEXT")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model_name, batch_size, context = args.case.split(":")
    model = load_model_config(model_name)
    config = TrainConfig(steps=1000, batch_size=int(batch_size), context=int(context), warmup=10)
    compiled, state, batch, compile_s, mesh = compiled_step(model, config)
    for _ in range(2):
        state, metrics = compiled(state, batch, None)
    jax.block_until_ready(metrics)

    def steps():
        nonlocal state
        for _ in range(args.steps):
            state, step_metrics = compiled(state, batch, None)
        return step_metrics

    events = traced_events(steps)
    times, executions = operation_times(events)
    rows = by_kind(times, executions, args.steps, "step")
    result = {
        "benchmark": "train_profile",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "case": {"model": model_name, "batch_size": int(batch_size), "context": int(context), "dtype": config.dtype,
                 "devices": int(mesh.devices.size)},
        "machine": machine() | {"load_average_1min": round(os.getloadavg()[0], 2)},
        "operations_ms_per_step": round(sum(times.values()) / args.steps / 1e3, 1),
        "operations": rows,
        "largest_operations_us_per_step": largest(times, args.steps),
        # Per thread that ran operations (both devices share the process's threads): time inside
        # operations against time between them, per step. Steps run back to back, so the span of
        # the traced steps is close to their wall time.
        "threads": thread_occupancy(events, args.steps),
    }
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"train_profile_{model_name}_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for thread in result["threads"]:
        print(f"thread: {thread}")
    for row in rows[:15]:
        print(f"{row['us_per_step'] / 1e3:8.1f} ms/step  ×{row['executions_per_step']:<6} {row['operation']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
