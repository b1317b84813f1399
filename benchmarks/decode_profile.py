"""Where a decoding step's time goes: JAX's profiler over one generate call, per XLA operation.

    .venv/bin/python benchmarks/decode_profile.py [--model stories15m] [--checkout DIR] [--out FILE]

Runs greedy decoding of 128 new tokens after a 64-token prompt (batch 1) once to compile, then
once under `jax.profiler.trace`, and sums the trace's events by operation: each of XLA:CPU's
operations (a dot, a fusion, a copy) is one event per execution. Times are per decoded token
(the call's total over 127 steps); the profiler adds its own overhead, so the shares matter
more than the sums. Operations are grouped by name without their number (every `dot.N` in one
`dot` row), and the dots are also listed one by one (the head is the largest).
`--checkout DIR` imports lumi_jax from another checkout (a worktree of an earlier commit), to
see the same breakdown before a change. Writes
benchmarks/results/decode_profile_<model>_cpu.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEW_TOKENS = 128
PROMPT_TOKENS = 64


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stories15m")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="whose lumi_jax to profile")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout.resolve()))

    import jax
    from op_times import (  # benchmarks/op_times.py, beside this script
        by_kind,
        kind_of,
        traced_operations,
    )

    from lumi_jax import generate
    from lumi_jax.config import load_model_config
    from lumi_jax.model import init_params

    config = load_model_config(args.model)
    params = init_params(config, jax.random.key(0))
    prompts = [[1, *range(5, 4 + PROMPT_TOKENS)]]

    def call():
        return generate.generate_ids(config, params, prompts, max_new_tokens=NEW_TOKENS, eos_id=-1)

    call()  # compiles; the traced call below runs the compiled loop only
    times, executions = traced_operations(call)
    steps = NEW_TOKENS - 1
    rows = by_kind(times, executions, steps, "token")
    result = {
        "benchmark": "decode_profile",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "checkout": str(args.checkout.resolve()),
        "model": config.name, "batch": 1, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "sampling": "greedy",
        "machine": {"cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
                    "device": jax.devices()[0].device_kind},
        "versions": {"jax": jax.__version__},
        "operations_us_per_token": round(sum(times.values()) / steps, 1),
        "operations": rows[:40],
        "dots_us_per_token_largest_first": sorted((round(t / steps, 1) for name, t in times.items()
                                                   if kind_of(name) == "dot"), reverse=True),
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"decode_profile_{config.name}_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows[:15]:
        print(f"{row['us_per_token']:8.1f} µs/token  ×{row['executions_per_token']:<6} {row['operation']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
