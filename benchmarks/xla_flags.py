"""XLA:CPU flags against the default, on the real train step: which ones buy speed on this CPU.

    .venv/bin/python benchmarks/xla_flags.py [--case tiny:8:256] [--repeats 2] [--steps 6]

Each candidate flag set runs `benchmarks/train_throughput.py` in a fresh process (XLA reads its
flags once, at start-up), right after a run with no extra flags, so every candidate has its own
baseline measured next to it on the same machine state. The flags are added to whatever
XLA_FLAGS lumi itself sets (the CPU device count, lumi_jax/cpu_devices.py). Flags that change
numerics (fast math) are not candidates: a speed gain that changes the losses is not the same step.
Writes benchmarks/results/xla_flags_cpu.json: tokens/s of each pair and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from host import cpu_model  # benchmarks/host.py, beside this script
from paired import pairs  # benchmarks/paired.py

REPO_ROOT = Path(__file__).resolve().parent.parent

CANDIDATES = [
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_experimental_ynn_fusion_type=dot",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_use_fusion_emitters=false",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="tiny:8:256")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--flags", nargs="+", default=CANDIDATES)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "xla_flags_cpu.json")
    args = parser.parse_args()

    rows = [{"flags": flags, **pairs(args.case, {"XLA_FLAGS": None}, {"XLA_FLAGS": flags}, args.repeats, args.steps,
                                     ("default", "with_flags"), warmup=1)} for flags in args.flags]
    result = {
        "benchmark": "xla_flags",
        "case": args.case,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count()},
        "method": "train_throughput.py in fresh processes: no extra flags, then the candidate, per pair; "
                  "ratio = candidate tokens/s over default tokens/s",
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps([{"flags": row["flags"], "median_ratio": row["median_ratio"]} for row in rows], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
