"""A/B pairs of `train_throughput.py` runs, each in a fresh process (shared by benchmark scripts).

Settings that JAX reads once at start-up (XLA_FLAGS, the CPU device count) can only be compared
across processes. Running A then B in each pair, rather than all A then all B, keeps a drifting
machine load from favouring either side.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def train_throughput(case: str, env_changes: dict[str, str | None], steps: int, warmup: int = 2,
                     benchmarks_dir: Path = HERE) -> dict:
    """One case of train_throughput.py in a new process, with environment variables set (or,
    for None, removed); its result row, or {"error": the last line of its stderr}.
    `benchmarks_dir`: whose train_throughput.py, and so whose lumi_jax (another checkout's)."""
    env = dict(os.environ)
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        done = subprocess.run([sys.executable, str(benchmarks_dir / "train_throughput.py"), "--cases", case, "--steps",
                               str(steps), "--warmup", str(warmup), "--out", str(out)],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            return {"error": lines[-1][:300] if lines else f"exit status {done.returncode}"}
        result = json.loads(out.read_text())["results"][0]
    return {key: result[key] for key in ("tokens_per_s", "step_s_median", "compile_s", "devices_used",
                                         "load_average_1min")}


def pairs(case: str, a: dict[str, str | None], b: dict[str, str | None], repeats: int, steps: int,
          labels: tuple[str, str], warmup: int = 2, dirs: tuple[Path, Path] = (HERE, HERE)) -> dict:
    """`repeats` pairs (A, then B) and the median of B's tokens/s over A's; `dirs`: the
    benchmarks directories A and B run from (two checkouts), this one by default."""
    measured = []
    for _ in range(repeats):
        first = train_throughput(case, a, steps, warmup, dirs[0])
        second = train_throughput(case, b, steps, warmup, dirs[1])
        ratio = (round(second["tokens_per_s"] / first["tokens_per_s"], 3)
                 if "tokens_per_s" in first and "tokens_per_s" in second else None)
        measured.append({labels[0]: first, labels[1]: second, "ratio": ratio})
        print(case, json.dumps(measured[-1]), flush=True)
    ratios = [pair["ratio"] for pair in measured if pair["ratio"] is not None]
    return {"pairs": measured, "median_ratio": round(statistics.median(ratios), 3) if ratios else None}
