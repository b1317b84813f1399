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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host import cpu_model  # benchmarks/host.py, beside this script

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent


def throughput(case: str, devices: str | None, steps: int) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "LUMI_CPU_DEVICES")}
    if devices:
        env["LUMI_CPU_DEVICES"] = devices
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        subprocess.run([sys.executable, str(HERE / "train_throughput.py"), "--cases", case, "--steps", str(steps),
                        "--out", str(out)], env=env, check=True, capture_output=True, text=True)
        result = json.loads(out.read_text())["results"][0]
    return {"devices_used": result["devices_used"], "tokens_per_s": result["tokens_per_s"],
            "step_s_median": result["step_s_median"], "load_average_1min": result["load_average_1min"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["micro:8:128", "tiny:8:256", "small:4:256"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "cpu_devices_cpu.json")
    args = parser.parse_args()

    rows = []
    for case in args.cases:
        pairs = []
        for _ in range(args.repeats):
            one = throughput(case, "1", args.steps)
            per_core = throughput(case, None, args.steps)
            pairs.append({"one_device": one, "one_per_core": per_core,
                          "ratio": round(per_core["tokens_per_s"] / one["tokens_per_s"], 3)})
            print(case, json.dumps(pairs[-1]), flush=True)
        rows.append({"case": case, "pairs": pairs,
                     "median_ratio": round(statistics.median(pair["ratio"] for pair in pairs), 3)})
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
