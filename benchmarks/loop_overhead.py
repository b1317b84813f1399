"""The training loop's own cost: the real `lumi train` of this tree against another commit's.

    .venv/bin/python benchmarks/loop_overhead.py --before 4b604f0 --cases micro:8:32 tiny:8:256

Issue 13 asked for a loop that never waits for the step it has just dispatched (metrics read
every `log_every` steps in one transfer, the divergence guard one read late). This measures it
as a user meets it: each case runs `lumi train` in its own process, from this checkout and from
a worktree of `--before`, alternating, `--repeats` times; the figure is the wall time per step
between the first and the last logged step (metrics.jsonl `elapsed_s`), so compiling and
starting are left out and saves, logging and batch loading are in. Small models show the loop's
overhead (a micro step is a few milliseconds); tiny shows what is left of it at a real size.
Writes benchmarks/results/loop_overhead_cpu.json. Run it on an otherwise idle machine.
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

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "loop_overhead_cpu.json"


def seconds_per_step(tree: Path, data: Path, out: Path, model: str, batch: int, context: int, steps: int) -> float:
    command = [sys.executable, "-m", "lumi_jax.cli", "train", "--model", model, "--data", str(data), "--out", str(out),
               "--steps", str(steps), "--batch-size", str(batch), "--context", str(context), "--warmup", "5",
               "--eval-every", "0", "--save-every", str(steps), "--log-every", "10", "--quiet"]
    subprocess.run(command, cwd=tree, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "loss" in r and r["step"] >= 10]
    return (timed[-1]["elapsed_s"] - timed[0]["elapsed_s"]) / (timed[-1]["step"] - timed[0]["step"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="the commit to compare against (its loop)")
    parser.add_argument("--cases", nargs="+", default=["micro:8:32", "tiny:8:256"], help="MODEL:BATCH:CONTEXT")
    parser.add_argument("--steps", type=int, default=0, help="steps per run (default: 400 for micro, 60 otherwise)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from lumi_jax.data.prepare import prepare_dataset

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        before = scratch / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=REPO, check=True,
                       capture_output=True)
        try:
            for case in args.cases:
                model, batch, context = case.split(":")
                vocab = 512 if model == "micro" else 4096
                data = scratch / f"data-{vocab}"
                if not data.exists():
                    prepare_dataset("sample", data, vocab_size=vocab, size_mb=1, log=None)
                steps = args.steps or (400 if model == "micro" else 60)
                times: dict[str, list[float]] = {"before": [], "after": []}
                for repeat in range(args.repeats):
                    for name, tree in (("before", before), ("after", REPO)):
                        out = scratch / f"{name}-{model}-{repeat}"
                        times[name].append(seconds_per_step(tree, data, out, model, int(batch), int(context), steps))
                median = {name: statistics.median(values) for name, values in times.items()}
                results.append({"case": case, "steps": steps, "seconds_per_step": times,
                                "median_before_s": round(median["before"], 5), "median_after_s": round(median["after"], 5),
                                "speedup": round(median["before"] / median["after"], 3)})
                print(json.dumps(results[-1]), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, capture_output=True)
    args.out.write_text(json.dumps({
        "benchmark": "loop_overhead", "command": " ".join(["benchmarks/loop_overhead.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "before": args.before,
        "after": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() + " (with the working tree)",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": os.getloadavg()},
        "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
