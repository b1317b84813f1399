"""Decoding speed of this checkout against an earlier commit, in alternating fresh processes.

    .venv/bin/python benchmarks/generation_pairs.py --before REV [--model stories15m] [--repeats 3]

The earlier commit is checked out into a temporary git worktree (commit_pairs.worktree_of). Each
pair runs `generation_speed.py` (batch 1, every way of choosing tokens) from that worktree, then
from this checkout, each in a new process, so a drifting machine load favours neither. Ratio =
this checkout's decode tokens/s over the earlier commit's, per way of choosing tokens; the
result names both revisions, the machine and its load, and keeps every run's rows. It goes to
benchmarks/results/generation_pairs_<model>_cpu.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from commit_pairs import (  # benchmarks/commit_pairs.py, beside this script
    REPO_ROOT,
    comparison_record,
    comparison_start,
    worktree_of,
)


def generation_speed(checkout: Path, model: str, repeats: int) -> list[dict]:
    """generation_speed.py's rows from `checkout` (its own lumi_jax), batch 1, in a new process."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        subprocess.run([sys.executable, str(checkout / "benchmarks" / "generation_speed.py"), "--model", model,
                        "--batches", "1", "--repeats", str(repeats), "--out", str(out)],
                       check=True, capture_output=True, text=True)
        return json.loads(out.read_text())["rows"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--model", default="stories15m")
    parser.add_argument("--pairs", type=int, default=3, help="before/after pairs")
    parser.add_argument("--repeats", type=int, default=5, help="generation_speed.py's calls per timing")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    start = comparison_start(args.before)
    runs = []
    with worktree_of(start["before"]) as worktree:
        for _ in range(args.pairs):
            pair = {"before": generation_speed(worktree, args.model, args.repeats),
                    "after": generation_speed(REPO_ROOT, args.model, args.repeats)}
            runs.append(pair)
            print(json.dumps({side: {row["sampling"]: row["decode_tokens_per_s"] for row in rows}
                              for side, rows in pair.items()}), flush=True)

    summary = {}
    for sampling in [row["sampling"] for row in runs[0]["after"]]:
        def rates(side, sampling=sampling):
            return [next(r["decode_tokens_per_s"] for r in pair[side] if r["sampling"] == sampling) for pair in runs]
        summary[sampling] = {
            "before_decode_tokens_per_s": rates("before"), "after_decode_tokens_per_s": rates("after"),
            "median_ratio": round(statistics.median(a / b for a, b in zip(rates("after"), rates("before"),
                                                                          strict=True)), 3)}
    result = {
        "benchmark": "generation_pairs",
        "command": " ".join(["generation_pairs.py", *sys.argv[1:]]),
        "method": "generation_speed.py --batches 1 from a worktree of `before`, then from this checkout, alternating, "
                  "each in a fresh process; ratio = after decode tokens/s / before decode tokens/s, per pair",
        **comparison_record(start),
        "summary": summary,
        "runs": runs,
    }
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"generation_pairs_{args.model}_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({sampling: entry["median_ratio"] for sampling, entry in summary.items()}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
