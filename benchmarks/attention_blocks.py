"""The causal core by query blocks (lumi_jax/model.py, causal_attention): the core alone, then the
whole train step, with and without the blocks.

    .venv/bin/python benchmarks/attention_blocks.py [--cases tiny:8:256 small:4:256] [--repeats 2] [--blocks N]

1. The core alone, in this process: forward and backward of causal_attention at tiny's shape on
   one device's half of an 8-row batch (4 × 8 heads × 256 × 32), for 1, 2, 4 and 8 query
   blocks; the median and the fastest of 20 calls, and the largest gradient difference from
   one block.
2. The train step: `train_throughput.py` in fresh processes, LUMI_CAUSAL_BLOCKS=1 (one block:
   the whole score matrix, as before) then unset (the default, model.causal_blocks) or
   `--blocks N`, alternating,
   `--repeats` pairs per case (benchmarks/paired.py). Ratio = blocked tokens/s over one block's.

Writes benchmarks/results/attention_blocks_cpu.json with the machine and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from host import cpu_model  # benchmarks/host.py, beside this script
from paired import pairs  # benchmarks/paired.py

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

ONE_BLOCK = {"LUMI_CAUSAL_BLOCKS": "1"}


def core_alone(calls: int = 20) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from lumi_jax.model import causal_attention

    B, N, G, T, K = 4, 8, 1, 256, 32
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (B, N, G, T, K))
    k, v = jax.random.normal(keys[1], (B, N, T, K)), jax.random.normal(keys[2], (B, N, T, K))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
    rows, reference = [], None
    for blocks in (1, 2, 4, 8):
        def loss(q, k, v, blocks=blocks):
            return jnp.sum(causal_attention(q, k, v, mask, blocks) ** 2)

        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        grads = jax.block_until_ready(step(q, k, v))
        reference = reference or grads
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            jax.block_until_ready(step(q, k, v))
            seconds.append(time.perf_counter() - start)
        rows.append({"blocks": blocks, "median_ms": round(1e3 * statistics.median(seconds), 2),
                     "fastest_ms": round(1e3 * min(seconds), 2),
                     "max_grad_difference": float(max(jnp.abs(a - b).max() for a, b in zip(grads, reference, strict=True)))})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["tiny:8:256", "small:4:256"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--blocks", type=int, help="the blocked side's count (default: model.causal_blocks)")
    parser.add_argument("--skip-core", action="store_true", help="only the train step pairs")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "attention_blocks_cpu.json")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    core = None if args.skip_core else core_alone()
    blocked = {"LUMI_CAUSAL_BLOCKS": str(args.blocks) if args.blocks else None}
    rows = [{"case": case, **pairs(case, ONE_BLOCK, blocked, args.repeats, args.steps,
                                   ("one_block", "blocked"))} for case in args.cases]
    result = {
        "benchmark": "attention_blocks",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0))},
        "load_average_1min_before": round(load_before, 2),
        "core_alone": {"shape": "B 4, heads 8, T 256, K 32, causal; forward and backward, jitted, one process",
                       "rows": core},
        "train_step": {"method": "train_throughput.py in fresh processes, LUMI_CAUSAL_BLOCKS=1 then "
                                 f"{args.blocks or 'unset (the default)'}, alternating; ratio = blocked tokens/s "
                                 "over one block's", "blocks": args.blocks or "default", "rows": rows},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps([{"case": row["case"], "median_ratio": row["median_ratio"]} for row in rows]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
