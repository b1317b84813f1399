"""Where one cold compile of the train step goes: XLA's own trace events, summed by name.

    .venv/bin/python benchmarks/compile_profile.py [--case tiny:8:256] [--out FILE]

Builds the state and the jitted step as `lumi train` does (one XLA device per core, unless
LUMI_CPU_DEVICES says otherwise), lowers it, then compiles it once under `jax.profiler.trace`
with the persistent compile cache off, so XLA compiles everything. XLA marks its phases as trace
events (`spmd-partitioner`, `HLO passes after layout assignment`, `FusionCompiler::Compile`,
`JitCompiler::Compile`, ...); events nest, so the sums overlap and only compare like with like.
Also counts what the compiled program holds: fusions and distinct fusion kernels. Writes
benchmarks/results/compile_profile_<model>_cpu.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jax  # noqa: E402
import numpy as np  # noqa: E402
import train_throughput  # noqa: F401  (benchmarks/train_throughput.py: sets the CPU devices up first)
from train_throughput import REPO_ROOT, machine  # noqa: E402

from lumi_jax import sharding as shard  # noqa: E402
from lumi_jax.config import TrainConfig, load_model_config  # noqa: E402
from lumi_jax.optim import make_optimizer  # noqa: E402
from lumi_jax.step import initial_state, jit_train_step  # noqa: E402

# XLA's phases worth reading first (each a trace event name)
PHASES = ("PjRtCpuClient::Compile", "shardy-xla", "spmd-partitioner (jit_train_step)",
          "HLO passes through layout assignment (jit_train_step)", "HLO passes after layout assignment (jit_train_step)",
          "copy-insertion", "CpuCompiler::RunBackend", "FusionCompiler::Compile", "JitCompiler::Compile",
          "ThunkEmitter::EmitEntryComputation")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="tiny:8:256", help="MODEL:BATCH:CONTEXT")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model_name, batch_size, context = args.case.split(":")
    batch_size, context = int(batch_size), int(context)

    jax.config.update("jax_enable_compilation_cache", False)
    model = load_model_config(model_name)
    config = TrainConfig(steps=1000, batch_size=batch_size, context=context, warmup=10)
    mesh = shard.make_mesh(batch_rows=batch_size)
    state, shardings = initial_state(model, config, make_optimizer(config), mesh)
    step_fn = jit_train_step(model, config, mesh, shardings)
    spec = {name: jax.ShapeDtypeStruct((batch_size, context), np.float32 if name == "weights" else np.int32)
            for name in ("inputs", "targets", "weights")}
    started = time.perf_counter()
    lowered = step_fn.lower(jax.eval_shape(lambda: state), spec, None)
    lower_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            started = time.perf_counter()
            compiled = lowered.compile()
            compile_s = time.perf_counter() - started
        events = json.load(gzip.open(next(Path(trace_dir).rglob("*.trace.json.gz"))))["traceEvents"]
    total_us, count = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not event.get("name", "").startswith("$"):  # not Python frames
            total_us[event["name"]] += event["dur"]
            count[event["name"]] += 1

    hlo = compiled.as_text()
    entry = hlo[hlo.index("\nENTRY "):]
    result = {
        "benchmark": "compile_profile",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "case": {"model": model_name, "batch_size": batch_size, "context": context, "devices": int(mesh.devices.size)},
        "machine": machine() | {"load_average_1min": round(os.getloadavg()[0], 2)},
        "environment": {name: value for name, value in os.environ.items()
                        if name.startswith(("JAX_", "LUMI_")) or name == "XLA_FLAGS"},
        "lower_s": round(lower_s, 3),
        "compile_s": round(compile_s, 3),
        "phases_ms": {name: round(total_us[name] / 1e3, 1) for name in PHASES if name in total_us},
        "largest_events_ms": [{"event": name, "ms": round(us / 1e3, 1), "count": count[name]}
                              for name, us in total_us.most_common(40)],
        "program": {"fusions": len(re.findall(r"= [^=]* fusion\(", entry)),
                    "distinct_fusion_kernels": count["FusionCompiler::Compile"],
                    "hlo_lines": hlo.count("\n")},
    }
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"compile_profile_{model_name}_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("lower_s", "compile_s", "phases_ms", "program")}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
