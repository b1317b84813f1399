"""Compile time of the real train step, cold and with the persistent compile cache warm.

    .venv/bin/python benchmarks/compile_time.py [--case tiny:8:256] [--repeats 3] [--devices one|cores] [--out FILE]

Each measurement runs in a fresh Python process, as a user's `lumi train` would start:

    cold  a new, empty LUMI_COMPILE_CACHE directory: XLA compiles everything;
    warm  the directory the cold process just filled: the executable comes from disk.

A process builds the state and the jitted step exactly as `lumi train` does (lumi_jax.step), then
times `lower` (tracing to StableHLO) and `compile` (XLA, or a cache hit) apart, the two calls
`Trainer` makes before the loop. Process start-up and imports are not counted; they are shown
apart (`import_s`). The issue's targets: tiny's step ≤ 4 s cold and ≤ 1 s warm. `--devices
cores` starts each process with one XLA device per core, as `lumi train` does on a CPU (the
default, one device, keeps the earlier figures comparable). Writes
benchmarks/results/compile_time_<platform>[_cores].json with the machine and its load.
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
from pathlib import Path

from host import cpu_model  # benchmarks/host.py, beside this script

REPO_ROOT = Path(__file__).resolve().parent.parent

# Runs in the child process: prints one JSON line.
CHILD = r"""
import json, sys, time
started = time.perf_counter()
sys.path.insert(0, sys.argv[1])
if sys.argv[5] == "cores":  # as `lumi train` starts: one XLA device per core (lumi_jax/cpu_devices.py)
    from lumi_jax.cpu_devices import use_cpu_cores
    use_cpu_cores()
import jax, numpy as np
from lumi_jax import sharding as shard
from lumi_jax.config import TrainConfig, load_model_config
from lumi_jax.optim import make_optimizer
from lumi_jax.step import enable_compilation_cache, initial_state, jit_train_step
import_s = time.perf_counter() - started
enable_compilation_cache()
model_name, batch_size, context = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = load_model_config(model_name)
config = TrainConfig(steps=1000, batch_size=batch_size, context=context, warmup=10)
mesh = shard.make_mesh()
state, shardings = initial_state(model, config, make_optimizer(config), mesh)
step_fn = jit_train_step(model, config, mesh, shardings)
spec = {"inputs": jax.ShapeDtypeStruct((batch_size, context), np.int32),
        "targets": jax.ShapeDtypeStruct((batch_size, context), np.int32),
        "weights": jax.ShapeDtypeStruct((batch_size, context), np.float32)}
started = time.perf_counter()
lowered = step_fn.lower(jax.eval_shape(lambda: state), spec, None)
lower_s = time.perf_counter() - started
started = time.perf_counter()
lowered.compile()
compile_s = time.perf_counter() - started
print(json.dumps({"import_s": import_s, "lower_s": lower_s, "compile_s": compile_s}))
"""


def one_process(case: tuple[str, int, int], cache_dir: Path, devices: str) -> dict:
    env = {**os.environ, "LUMI_COMPILE_CACHE": str(cache_dir), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "")}
    done = subprocess.run([sys.executable, "-c", CHILD, str(REPO_ROOT), *map(str, case), devices], env=env,
                          capture_output=True, text=True, check=True)
    timing = json.loads(done.stdout.strip().splitlines()[-1])
    timing["lower_plus_compile_s"] = timing["lower_s"] + timing["compile_s"]
    return {key: round(value, 3) for key, value in timing.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="tiny:8:256", help="model:batch:context")
    parser.add_argument("--repeats", type=int, default=3, help="cold/warm pairs, each with a new cache directory")
    parser.add_argument("--devices", choices=("one", "cores"), default="one",
                        help="one XLA device (as the earlier figures), or one per core as `lumi train` runs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    name, batch, context = args.case.split(":")
    case = (name, int(batch), int(context))

    load_start = os.getloadavg()
    pairs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="lumi-compile-cache-") as cache_dir:
            cold = one_process(case, Path(cache_dir), args.devices)
            warm = one_process(case, Path(cache_dir), args.devices)
            pairs.append({"cold": cold, "warm": warm})
            print(json.dumps(pairs[-1]), flush=True)

    def median(kind: str, key: str) -> float:
        return round(statistics.median(pair[kind][key] for pair in pairs), 3)

    import jax

    result = {
        "benchmark": "compile_time",
        "case": {"model": name, "batch_size": case[1], "context": case[2], "dtype": "float32",
                 "devices": "one per core, as lumi train" if args.devices == "cores" else "one"},
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "device": jax.devices()[0].platform, "jax": jax.__version__,
                    "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        # Settings from the environment that change what is compiled (the processes inherit them):
        # JAX's, lumi's (LUMI_CAUSAL_BLOCKS, ...) and XLA's flags
        "jax_environment": {name: value for name, value in os.environ.items()
                            if name.startswith(("JAX_", "LUMI_")) or name == "XLA_FLAGS"},
        "method": "each figure from a fresh process; cold = empty LUMI_COMPILE_CACHE, warm = the directory the "
                  "cold process filled; lower and compile timed apart, imports not counted",
        "median": {kind: {key: median(kind, key) for key in ("lower_s", "compile_s", "lower_plus_compile_s", "import_s")}
                   for kind in ("cold", "warm")},
        "targets_s": {"cold": 4.0, "warm": 1.0},
        "pairs": pairs,
    }
    suffix = "_cores" if args.devices == "cores" else ""
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"compile_time_{result['machine']['device']}{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
