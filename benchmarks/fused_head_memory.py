"""The fused head and loss against the plain head: the train step's compiled memory, and its time.

    .venv/bin/python benchmarks/fused_head_memory.py [--cases small:8:1024 tiny:8:256] [--time-steps 3]

For each case the real train step (lumi_jax.step, as `lumi train` builds it) is compiled twice:
with the plain head (float32 logits for every position) and with the head fused into the loss
a chunk of positions at a time (lumi_jax/model.py: fused_head_nats). Training picks between the
two by the size of the logits (model.fused_head_chunk); here the threshold is overridden so that
both are compiled at the same shape. Reported per variant: XLA's own memory analysis of the
compiled step (temporary buffers: the activations; arguments: state and batch), `lumi
architecture`'s estimate for the variant, and, with --time-steps, the median step time.
XLA:CPU's analysis is the device's plan, so this runs without a GPU; on a GPU, benchmarks/gpu.sh
measures the real peak. Writes benchmarks/results/fused_head_memory_<platform>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax  # noqa: E402
from host import cpu_model  # benchmarks/host.py, beside this script
from train_throughput import (  # beside this script; it shows a CPU's cores as devices
    REPO_ROOT,
    compiled_step,
)

from lumi_jax import model  # noqa: E402
from lumi_jax.architecture import estimate_training_memory  # noqa: E402
from lumi_jax.config import TrainConfig, load_model_config  # noqa: E402

NEVER, ALWAYS = 1 << 62, 0  # FUSED_HEAD_ABOVE_BYTES for the plain and the fused head


def measure(model_name: str, batch: int, context: int, fuse_above: int, time_steps: int) -> dict:
    model.FUSED_HEAD_ABOVE_BYTES = fuse_above
    config = load_model_config(model_name)
    train_config = TrainConfig(steps=1000, batch_size=batch, context=context, warmup=10)
    compiled, state, batch_arrays, compile_s, _mesh = compiled_step(config, train_config)
    analysis = compiled.memory_analysis()
    row = {
        "head": "fused" if fuse_above == ALWAYS else "plain",
        "chunk": model.fused_head_chunk(config, batch, context),
        "compile_s": round(compile_s, 2),
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "estimated_activation_bytes": estimate_training_memory(config, batch, context)["activations"],
        "logits_bytes_per_copy": batch * context * config.vocab_size * 4,
    }
    if time_steps:
        times = []
        for _ in range(time_steps + 1):  # the first step is not timed
            started = time.perf_counter()
            state, metrics = compiled(state, batch_arrays, None)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - started)
        row["step_s_median"] = round(statistics.median(times[1:]), 4)
        row["loss"] = float(metrics["loss"])
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["small:8:1024", "tiny:8:256"], help="MODEL:BATCH:CONTEXT")
    parser.add_argument("--time-steps", type=int, default=0, help="timed steps per variant (0: memory only)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    rows = []
    for case in args.cases:
        name, batch, context = case.split(":")
        for fuse_above in (NEVER, ALWAYS):
            row = {"case": case, **measure(name, int(batch), int(context), fuse_above, args.time_steps)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    device = jax.devices()[0]
    result = {
        "benchmark": "fused_head_memory",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "device": f"{device.platform}:{device.device_kind}",
                    "device_count": jax.device_count(), "jax": jax.__version__, "load_average": os.getloadavg()},
        "method": "the real train step compiled with the plain head and with the fused head at the same shape; "
                  "temp_bytes = XLA's memory analysis of the compiled step (activations and scratch)",
        "rows": rows,
    }
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"fused_head_memory_{device.platform}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
