"""Step time of two joined processes against one process with two simulated devices, on this machine.

    .venv/bin/python benchmarks/multihost_step_time.py [--model micro] [--steps 200] [--repeats 2] [--batch 32]
        [--context 128] [--out FILE]

Both layouts run the same `lumi train` (`--model`, `--mesh data=2`, the same global batch), so they
do the same arithmetic (tests/test_multihost.py proves the losses are bit-identical); what differs
is how the two halves of the batch meet for the gradient all-reduce:

    one process   XLA_FLAGS=--xla_force_host_platform_device_count=2: two CPU devices in one
                  process, the all-reduce in shared memory;
    two processes `lumi launch --processes 2`: one CPU device each, joined through
                  jax.distributed, the all-reduce over gloo (TCP on 127.0.0.1).

The layouts alternate (`--repeats` rounds) so a change in the machine's load hits both. Per run:
the median and mean step time of the steps after the first 10 (from metrics.jsonl), compile and
wall time (summary.json), and the load average before and after. The machine may be shared;
run it when `uptime` shows little else running. Writes benchmarks/results/multihost_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from host import cpu_model  # benchmarks/host.py, beside this script

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lumi_jax.config import load_model_config  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "multihost_cpu.json"
SKIP_FIRST = 10  # steps left out of the statistics: the first ones still warm caches up


def clean_environment(**extra: str) -> dict[str, str]:
    dropped = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS")
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    return dict(env, JAX_PLATFORMS="cpu", **extra)


def train_flags(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    return ["train", "--model", args.model, "--data", str(data), "--out", str(out), "--mesh", "data=2",
            "--steps", str(args.steps), "--batch-size", str(args.batch), "--context", str(args.context),
            "--lr", "3e-3", "--warmup", "10", "--min-lr", "3e-4", "--eval-every", "0",
            "--save-every", str(args.steps), "--log-every", "1", "--quiet"]


def run_layout(layout: str, args: argparse.Namespace, data: Path, out: Path) -> dict:
    lumi = [sys.executable, "-m", "lumi_jax.cli"]
    if layout == "one process, 2 devices":
        command = [*lumi, *train_flags(args, data, out)]
        env = clean_environment(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    else:
        command = [*lumi, "launch", "--processes", "2", "--", *train_flags(args, data, out)]
        env = clean_environment()
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{layout} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    times = [r["step_time_s"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "step_time_s" in r and r["step"] > SKIP_FIRST]
    return {
        "layout": layout,
        "command": " ".join("python" if part == sys.executable else part for part in command)
                   .replace(str(data), "DATA").replace(str(out), "OUT"),
        "median_step_ms": round(1e3 * statistics.median(times), 3),
        "mean_step_ms": round(1e3 * statistics.fmean(times), 3),
        "tokens_per_s": round(args.batch * args.context / statistics.median(times)),
        "compile_s": round(summary["compile_time_s"], 2),
        "train_wall_s": round(summary["wall_time_s"], 2),
        "command_wall_s": round(wall, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="micro", help="a model config (the sample data gets its vocabulary)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory(prefix="lumi-multihost-") as scratch:
        data = Path(scratch) / "data"
        vocab_size = load_model_config(args.model).vocab_size
        subprocess.run([sys.executable, "-m", "lumi_jax.cli", "prepare", "--source", "sample", "--out", str(data),
                        "--vocab-size", str(vocab_size), "--size-mb", "0.5" if vocab_size <= 512 else "4"],
                       cwd=REPO_ROOT, env=clean_environment(),
                       check=True, capture_output=True)
        for round_index in range(args.repeats):
            for layout in ("one process, 2 devices", "two processes, 1 device each"):
                run = run_layout(layout, args, data, Path(scratch) / f"{round_index}-{len(runs)}")
                runs.append(run)
                print(f"{layout}: median {run['median_step_ms']:.2f} ms/step, compile {run['compile_s']:.1f} s, "
                      f"load {run['load_average_before'][0]:.2f}", flush=True)

    def median_of(layout: str) -> float:
        return statistics.median(run["median_step_ms"] for run in runs if run["layout"] == layout)

    one, two = median_of("one process, 2 devices"), median_of("two processes, 1 device each")
    result = {
        "what": f"{args.model}, --mesh data=2, the same global batch: one process with 2 simulated CPU devices "
                "against 2 processes joined through jax.distributed (gloo over 127.0.0.1), 1 CPU device each",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "jax": version("jax")},
        "settings": {"steps": args.steps, "batch": args.batch, "context": args.context,
                     "statistics": f"steps after the first {SKIP_FIRST}, from metrics.jsonl step_time_s"},
        "runs": runs,
        "median_step_ms": {"one process, 2 devices": one, "two processes, 1 device each": two},
        "two_processes_over_one": round(two / one, 3),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"two processes take {result['two_processes_over_one']:.2f}× the step time of one; wrote {args.out}")


if __name__ == "__main__":
    main()
