"""Generation speed of lumi_jax.generate: prefill and decode tokens per second, at batch 1 and 8.

The decoder is one jitted function (prefill + decoding loop) whose token budget is a traced
value, so one compiled function serves both timings:

    prefill  = a call with max_new_tokens=1 (the prompt pass and one sampled token);
    decode   = (a call with N new tokens) − prefill, for the N − 1 tokens of the loop.

Compile time is reported apart. For scale, the cost of decoding WITHOUT a cache is shown too:
one full forward pass at the final length per new token. Every row runs its full N tokens (no EOS can stop it: the EOS
id is set to -1), and each timing is the median of several calls. Weights are random: speed
does not depend on their values.

Each batch size is timed with three ways of choosing tokens, since on a large vocabulary the
choice costs as much as a layer: greedy (arg-max), temperature 0.8 alone, and temperature 0.8
with top-p 0.95 (the `lumi generate` default).

    .venv/bin/python benchmarks/generation_speed.py                # tiny, batch 1 and 8
    .venv/bin/python benchmarks/generation_speed.py --model stories15m --batches 1
    .venv/bin/python benchmarks/generation_speed.py --model micro  # any config name
writes benchmarks/results/generation_<model>_<platform>.json (or --out), stating the machine and
its load. llama2.c's run.c decodes the stories15m shape at 576–594 tokens/s on the development
CPU (greedy, 2 OpenMP threads; ../shared/probes/README.md), the issue's reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lumi_jax import generate  # noqa: E402
from lumi_jax.config import load_model_config  # noqa: E402
from lumi_jax.model import forward, init_params  # noqa: E402


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


SAMPLINGS = {
    "greedy": generate.GREEDY,
    "temperature-0.8": generate.Sampling(temperature=0.8, top_p=1.0),
    "temperature-0.8+top-p-0.95": generate.Sampling(temperature=0.8, top_p=0.95),
}


def measure(config, params, batch: int, prompt_len: int, new_tokens: int, repeats: int, sampling_name: str) -> dict:
    rng = np.random.default_rng(0)
    prompts = [[1, *rng.integers(3, config.vocab_size, prompt_len - 1).tolist()] for _ in range(batch)]
    sampling = SAMPLINGS[sampling_name]

    def call(n):
        results = generate.generate_ids(config, params, prompts, max_new_tokens=n, sampling=sampling, eos_id=-1,
                                        new_tokens_bucket=new_tokens)
        assert all(len(r.new_ids) == n for r in results)

    compiles_before = generate.compiled_count()
    started = time.perf_counter()
    call(new_tokens)
    first_call_s = time.perf_counter() - started
    prefill_s = timed(lambda: call(1), repeats)
    total_s = timed(lambda: call(new_tokens), repeats)
    decode_s = max(total_s - prefill_s, 1e-9)
    # Without a cache every new token needs a pass over the whole sequence so far; one pass at
    # the final length, times the steps, bounds that from above (the length grows step by step).
    full_BT = np.ones((batch, prompt_len + new_tokens), np.int32)
    full_pass = jax.jit(lambda p, t: forward(config, p, t))
    full_pass(params, full_BT).block_until_ready()
    full_s = timed(lambda: full_pass(params, full_BT).block_until_ready(), repeats)
    return {
        "batch": batch, "sampling": sampling_name, "prompt_tokens": prompt_len, "new_tokens": new_tokens,
        "compile_s": round(first_call_s - total_s, 3),
        "compilations": generate.compiled_count() - compiles_before,
        "prefill_s": round(prefill_s, 4),
        "prefill_tokens_per_s": round(batch * prompt_len / prefill_s, 1),
        "decode_s": round(decode_s, 4),
        "decode_tokens_per_s": round(batch * (new_tokens - 1) / decode_s, 1),
        "decode_ms_per_step": round(1000 * decode_s / (new_tokens - 1), 3),
        "end_to_end_tokens_per_s": round(batch * new_tokens / total_s, 1),
        "no_cache_full_pass_s": round(full_s, 4),
        "no_cache_decode_tokens_per_s_at_final_length": round(batch / full_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samplings", default=",".join(SAMPLINGS), help="comma-separated names from: "
                        + "; ".join(SAMPLINGS))
    parser.add_argument("--out", type=Path, help="result file (default benchmarks/results/generation_<model>_<platform>.json)")
    args = parser.parse_args()

    config = load_model_config(args.model)
    params = init_params(config, jax.random.key(0))
    device = jax.devices()[0]
    load_start = os.getloadavg()
    rows = [measure(config, params, int(b), args.prompt_tokens, args.new_tokens, args.repeats, name)
            for b in args.batches.split(",") for name in args.samplings.split(",")]
    result = {
        "benchmark": "generation_speed",
        "model": config.name,
        "dtype": config.dtype,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "device": f"{device.platform}:{device.device_kind}",
                    "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "method": "prefill = call with 1 new token; decode = call with N new tokens minus prefill; "
                  "median of --repeats calls; compile time = first call minus the median",
        "rows": rows,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"generation_{config.name}_{device.platform}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
