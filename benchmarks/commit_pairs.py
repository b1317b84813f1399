"""Training speed of this checkout against an earlier commit: did a change make the step slower?

    .venv/bin/python benchmarks/commit_pairs.py --before REV [--cases tiny:8:256] [--repeats 4] [--out FILE]

The earlier commit is checked out into a temporary git worktree. Each pair runs
`train_throughput.py` from that worktree (A, with its own lumi_jax), then from this checkout (B),
each in a fresh process, alternating, so a drifting machine load favours neither
(benchmarks/paired.py). Ratio = this checkout's tokens/s over the earlier commit's; the result
records both revisions, the machine and the load average, and goes to
benchmarks/results/commit_pairs_<case>_cpu.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from host import cpu_model  # benchmarks/host.py, beside this script
from paired import pairs  # benchmarks/paired.py

REPO_ROOT = Path(__file__).resolve().parent.parent


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()


def comparison_start(before: str) -> dict:
    """What a before/after comparison records before its runs: both revisions, whether this
    checkout has uncommitted changes, and the load average."""
    return {"before": git("rev-parse", before), "after": git("rev-parse", "HEAD"),
            "after_has_uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
            "load_average_1min_before": round(os.getloadavg()[0], 2)}


def comparison_record(start: dict) -> dict:
    """`start` with the machine and the load average after the runs."""
    return start | {"machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                                "usable_cores": len(os.sched_getaffinity(0))},
                    "load_average_1min_after": round(os.getloadavg()[0], 2)}


@contextlib.contextmanager
def worktree_of(revision: str):
    """A temporary git worktree of `revision` (its root directory), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="lumi-before-") as scratch:
        worktree = Path(scratch) / "before"
        git("worktree", "add", "--detach", str(worktree), revision)
        try:
            yield worktree
        finally:
            git("worktree", "remove", "--force", str(worktree))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--cases", nargs="+", default=["tiny:8:256"], help="MODEL:BATCH:CONTEXT")
    parser.add_argument("--repeats", type=int, default=4, help="pairs per case")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    start = comparison_start(args.before)
    with worktree_of(start["before"]) as worktree:
        measured = {case: pairs(case, {}, {}, args.repeats, args.steps, ("before", "after"),
                                dirs=(worktree / "benchmarks", REPO_ROOT / "benchmarks"))
                    for case in args.cases}

    result = {
        "benchmark": "commit_pairs",
        "command": " ".join(["commit_pairs.py", *sys.argv[1:]]),
        "method": "train_throughput.py from a worktree of `before`, then from this checkout, alternating, each in a "
                  "fresh process; ratio = after tokens/s / before tokens/s",
        **comparison_record(start),
        "cases": measured,
    }
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"commit_pairs_{args.cases[0].split(':')[0]}_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({case: m["median_ratio"] for case, m in measured.items()}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
