"""Training throughput: tokens/s and MFU of the real train step, per model, on this machine.

    .venv/bin/python benchmarks/train_throughput.py [--cases tiny:8:256 small:4:256] [--dtype float32|bfloat16]
        [--grad-accum N] [--remat off full dots]

For each case (model config : batch size : context) it builds the state and the jitted, donated train step exactly as `lumi train` does,
compiles it ahead of time (compile seconds reported apart), runs warm-up steps, then times
--steps steps on fixed random tokens (throughput does not depend on the text). Reported:
median step seconds, tokens/s, achieved FLOP/s and MFU with

    FLOPs per token = 6 · N_matmul + 12 · n_layers · context · d_model     (lumi_jax/metrics.py)

against the device's dense peak (CPU: cores × clock × FLOP/cycle, stated in the result). On an
accelerator it also records the peak device memory next to `lumi architecture`'s estimate.
The machine may be shared: the load average and this process's CPU seconds are recorded next
to the wall time. Like `lumi train`, it shows a CPU's cores as devices (lumi_jax/cpu_devices.py;
LUMI_CPU_DEVICES=1 measures one device). Writes benchmarks/results/train_<platform>_<dtype>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from host import cpu_model  # benchmarks/host.py, beside this script

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lumi_jax.cpu_devices import use_cpu_cores  # noqa: E402

use_cpu_cores()  # as `lumi train` does: one device per core on a CPU (LUMI_CPU_DEVICES=1 turns it off)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lumi_jax import sharding as shard  # noqa: E402
from lumi_jax.architecture import count_params, estimate_training_memory  # noqa: E402
from lumi_jax.config import TrainConfig, load_model_config  # noqa: E402
from lumi_jax.metrics import flops_per_token, matmul_params, peak_flops  # noqa: E402
from lumi_jax.optim import make_optimizer  # noqa: E402
from lumi_jax.step import initial_state, jit_train_step  # noqa: E402

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def machine() -> dict:
    cpu = cpu_model()
    device = jax.devices()[0]
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": device.platform,
            "device_kind": getattr(device, "device_kind", ""), "device_count": jax.device_count(),
            "jax": jax.__version__, "python": platform.python_version()}


def compiled_step(model, config: TrainConfig):
    """(compiled step, state, a batch of fixed random tokens, compile seconds, mesh): the step and
    state exactly as `lumi train` builds them, compiled ahead of time. Shared with the other
    benchmarks of the step (fused_head_memory.py)."""
    batch_size, context = config.batch_size, config.context
    mesh = shard.make_mesh(batch_rows=batch_size // config.grad_accum)
    state, shardings = initial_state(model, config, make_optimizer(config), mesh)
    step_fn = jit_train_step(model, config, mesh, shardings)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, model.vocab_size, size=(batch_size, context + 1), dtype=np.int32)
    batch = shard.put_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                             "weights": np.ones((batch_size, context), np.float32)}, mesh)
    started = time.perf_counter()
    compiled = step_fn.lower(jax.eval_shape(lambda: state), jax.eval_shape(lambda: batch), None).compile()
    return compiled, state, batch, time.perf_counter() - started, mesh


def measure(model_name: str, batch_size: int, context: int, dtype: str, steps: int, warmup: int,
            grad_accum: int = 1, remat: str = "off") -> dict:
    model = dataclasses.replace(load_model_config(model_name), dtype=dtype)
    config = TrainConfig(steps=1000, batch_size=batch_size, context=context, warmup=10, dtype=dtype,
                         grad_accum=grad_accum, remat=remat)
    compiled, state, batch, compile_s, mesh = compiled_step(model, config)
    for _ in range(warmup):
        state, metrics = compiled(state, batch, None)
    jax.block_until_ready(metrics)

    times = []
    load_before = os.getloadavg()[0]
    cpu_started = time.process_time()
    for _ in range(steps):
        started = time.perf_counter()
        state, metrics = compiled(state, batch, None)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - started)
    cpu_s = time.process_time() - cpu_started
    assert np.isfinite(float(metrics["loss"]))

    step_s = statistics.median(times)
    memory = jax.devices()[0].memory_stats() or {}  # None on a CPU
    micro_batch = batch_size // grad_accum
    estimate = estimate_training_memory(model, micro_batch, context, dtype, remat)["total"]
    tokens_per_step = batch_size * context
    tokens_per_s = tokens_per_step / step_s
    flops_token = flops_per_token(model, context)
    peak, peak_how = peak_flops()
    return {
        "model": model_name, "params": count_params(model).total, "matmul_params": matmul_params(model),
        "batch_size": batch_size, "context": context, "dtype": dtype,
        "compile_s": round(compile_s, 2), "steps_timed": steps,
        "step_s_median": round(step_s, 4), "step_s_min": round(min(times), 4), "step_s_max": round(max(times), 4),
        "tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": flops_token,
        "achieved_tflops": round(flops_token * tokens_per_s / 1e12, 4),
        "peak_tflops": None if peak is None else round(peak / 1e12, 3), "peak_how": peak_how,
        "mfu": None if peak is None else round(flops_token * tokens_per_s / peak, 4),
        "process_cpu_s_per_step": round(cpu_s / steps, 3),
        "tokens_per_process_cpu_s": round(tokens_per_step * steps / cpu_s, 1),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "grad_accum": grad_accum, "remat": remat, "devices_used": int(mesh.devices.size),
        "peak_device_bytes": memory.get("peak_bytes_in_use"),
        "estimated_train_bytes": estimate,
        "estimate_over_peak": round(estimate / memory["peak_bytes_in_use"], 3) if memory.get("peak_bytes_in_use") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["tiny:8:256", "small:4:256"], help="MODEL:BATCH:CONTEXT")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--remat", nargs="+", default=["off"], choices=("off", "full", "dots"),
                        help="remat policies to measure, each case under each (what the backward pass recomputes)")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/train_<platform>_<dtype>.json)")
    args = parser.parse_args()

    results = []
    for case in args.cases:
        name, batch, context = (case.split(":") + ["8", "256"])[:3]
        for remat in args.remat:
            result = measure(name, int(batch), int(context), args.dtype, args.steps, args.warmup, args.grad_accum, remat)
            print(json.dumps(result), flush=True)
            results.append(result)
    info = machine()
    record = {
        "benchmark": "train_throughput",
        "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info,
        "flop_formula": "6*N_matmul + 12*n_layers*context*d_model per token (PaLM appendix B); N_matmul = "
                        "block matrices + output head (V*D, counted even when tied), not the embedding lookup",
        "results": results,
    }
    out = Path(args.out) if args.out else RESULTS_DIR / f"train_{info['platform']}_{args.dtype}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
