"""One device against one device per core: the train step's throughput on this CPU, alternating.

    .venv/bin/python benchmarks/cpu_devices.py [--cases micro:8:128 tiny:8:256 small:4:256] [--repeats 2]

For each case and repeat, `benchmarks/train_throughput.py` runs twice in fresh processes, first
with LUMI_CPU_DEVICES=1 (one XLA device: JAX's default) and then with LUMI_CPU_DEVICES unset
(one device per usable core, what `lumi train` now does; lumi_jax/cpu_devices.py). Alternating
the two in one run keeps a drifting machine load from favouring either. Reports tokens/s of
both and their ratio per pair, and writes benchmarks/results/cpu_devices_cpu.json.
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
ONE_DEVICE = {"XLA_FLAGS": None, "LUMI_CPU_DEVICES": "1"}
ONE_PER_CORE = {"XLA_FLAGS": None, "LUMI_CPU_DEVICES": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["micro:8:128", "tiny:8:256", "small:4:256"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "cpu_devices_cpu.json")
    args = parser.parse_args()

    rows = [{"case": case, **pairs(case, ONE_DEVICE, ONE_PER_CORE, args.repeats, args.steps,
                                   ("one_device", "one_per_core"))} for case in args.cases]
    result = {
        "benchmark": "cpu_devices",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0))},
        "method": "train_throughput.py in fresh processes, LUMI_CPU_DEVICES=1 then unset (one device per core), "
                  "alternating; ratio = per-core tokens/s over one-device tokens/s",
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps([{"case": row["case"], "median_ratio": row["median_ratio"]} for row in rows]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
