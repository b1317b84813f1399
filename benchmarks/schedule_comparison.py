"""The time-aware schedule against a cosine cut by the budget, for tiny, at equal wall time.

    .venv/bin/python benchmarks/schedule_comparison.py [--budget 2] [--seeds 2]

Issue 16 asks for this comparison for tiny on the sample stories and on real text. Each point is
its own `lumi train --model tiny --time-budget B` process with the prototype recipe's settings
(8 × 256 tokens, lr 1e-3, warmup 100, min_lr 1e-4, weight decay 0.1) and 20,000 steps asked, so
the budget binds: the cosine is still near its peak learning rate when the budget cuts it, and
the time-aware WSD plan decays to `min_lr` at the deadline (train.py, optim.py). Scored by
`evaluate_run` on the held-out split in bits per byte:

    sample   the `sample` stories prepared at vocab 4096 (tiny's), its own validation split;
    text     the recipe study's first 1 MB of War and Peace at vocab 4096, held out on the next
             100 kB (benchmarks/recipe_study.py's cut).

Runs live in .tmp/recipe_study/runs (shared with the study; a finished run is reused), results
go to benchmarks/results/schedule_comparison.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from recipe_study import REPO, TextCut, dataset, train_and_score  # benchmarks/recipe_study.py

from lumi_jax.data.prepare import prepare_dataset

VOCAB = 4096
STEPS_ASKED = 20_000
TINY_FLAGS = ["--model", "tiny", "--batch-size", "8", "--context", "256", "--lr", "1e-3", "--min-lr", "1e-4",
              "--warmup", "100", "--weight-decay", "0.1", "--steps", str(STEPS_ASKED), "--save-every", "100000",
              "--log-every", "10"]


def sample_dataset(work: Path) -> Path:
    out = work / f"sample-v{VOCAB}"
    if not (out / "meta.json").is_file():
        prepare_dataset("sample", out, vocab_size=VOCAB, force=True, log=None)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=2.0, help="minutes per run")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / ".tmp" / "recipe_study")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "schedule_comparison.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    datasets = {"sample": sample_dataset(args.work), "text": dataset(args.work, VOCAB, TextCut())}
    rows = {}
    for data_name, data in datasets.items():
        runs = {"cosine": [], "wsd": []}
        for seed in range(args.seeds):
            for schedule in runs:
                name = f"schedule-tiny-{data_name}-{schedule}-seed{seed}"
                flags = [*TINY_FLAGS, "--schedule", schedule, "--seed", str(seed)]
                runs[schedule].append(train_and_score(args.work, name, args.budget, VOCAB, flags, TextCut(), data))
        scores = {schedule: [run["held_out_bits_per_byte"] for run in done] for schedule, done in runs.items()}
        rows[data_name] = {
            "runs": runs,
            "mean_bits_per_byte": {schedule: round(statistics.mean(values), 4) for schedule, values in scores.items()},
            "range_bits_per_byte": {schedule: [min(values), max(values)] for schedule, values in scores.items()},
            "wsd_minus_cosine": round(statistics.mean(scores["wsd"]) - statistics.mean(scores["cosine"]), 4),
        }
        print(data_name, json.dumps({k: v for k, v in rows[data_name].items() if k != "runs"}), flush=True)
    result = {
        "benchmark": "schedule_comparison",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "budget_min": args.budget, "steps_asked": STEPS_ASKED, "model": "tiny", "vocab": VOCAB,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
