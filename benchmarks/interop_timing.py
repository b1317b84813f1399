"""Export and import times for a model config (default `small`, random weights), and its parity.

    .venv/bin/python benchmarks/interop_timing.py                 # small, 3 repeats
    .venv/bin/python benchmarks/interop_timing.py --model micro   # any config name

Timed in this process (median of --repeats, each into a fresh directory; JAX already started):
    write run        what `lumi import` does after reading: config.json, tokenizer, one checkpoint
    export hf        `lumi export --format hf` (float32, and bfloat16)
    export llama2c   `lumi export --format llama2c`
    import hf        `lumi import` of the float32 and the bfloat16 export
Timed as whole commands (a fresh Python, as a user runs them, with that process's peak resident
memory, VmHWM): `lumi export --format hf` and `lumi import`.
With transformers installed, the float32 and bfloat16 exports are loaded and their logits compared
with lumi's on one sequence of max_seq_len tokens.

The tokenizer must have the model's vocabulary size: for a 32,000-piece config it is trained on
../shared/data/war_and_peace.txt (or --text FILE). Writes benchmarks/results/interop_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from host import cpu_model  # noqa: E402

from lumi_jax.config import load_model_config  # noqa: E402
from lumi_jax.data.sample_corpus import generate_stories  # noqa: E402
from lumi_jax.data.tokenizer import train_tokenizer  # noqa: E402
from lumi_jax.interop.hf import export_hf, import_hf, write_run  # noqa: E402
from lumi_jax.interop.llama2c import export_llama2c  # noqa: E402
from lumi_jax.model import count_params, forward, init_params  # noqa: E402

SHARED_TEXT = ROOT.parent / "shared" / "data" / "war_and_peace.txt"
# `lumi export` / `lumi import` as cli.py runs them; at exit the process's own peak resident
# memory (VmHWM: per address space, so not inherited from this large parent as ru_maxrss is).
COMMAND = """
import argparse, atexit, os, sys
atexit.register(lambda: open(os.environ["PEAK_FILE"], "w").write(
    next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]))
from lumi_jax.errors import exit_on_user_error
from lumi_jax.interop import {module} as command
parser = argparse.ArgumentParser(); command.add_arguments(parser)
with exit_on_user_error():
    sys.exit(command.run(parser.parse_args(sys.argv[1:])))
"""


def median_time(function, directories: list[Path]) -> float:
    times = []
    for directory in directories:
        started = time.perf_counter()
        function(directory)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def as_command(module: str, *argv) -> tuple[float, float, list[str]]:
    """Wall seconds and peak resident MB of `lumi <module> argv` in a fresh process."""
    argv = [sys.executable, "-c", COMMAND.format(module=module), *map(str, argv)]
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak_kb"
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "PEAK_FILE": str(peak_file)})
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv[3:])} failed: {done.stderr.decode()[-2000:]}")
        peak_mb = int(peak_file.read_text()) / 1024
    return wall, peak_mb, ["lumi", "export" if module == "export_command" else "import", *map(str, argv[3:])]


def parity(config, params, export: Path) -> float | None:
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    model = AutoModelForCausalLM.from_pretrained(export).eval()  # float32 (bfloat16 weights are upcast)
    tokens = np.random.default_rng(0).integers(3, config.vocab_size, (1, config.max_seq_len))
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens).long()).logits.numpy()
    ours = np.asarray(forward(config, params, tokens))
    return float(np.abs(ours - theirs).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text", type=Path, default=None, help="text to train the tokenizer on")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_start = os.getloadavg()
    config = load_model_config(args.model)
    work = Path(tempfile.mkdtemp(prefix="lumi-interop-"))
    try:
        text_path = args.text or (SHARED_TEXT if SHARED_TEXT.is_file() else None)
        texts = [text_path.read_text(encoding="utf-8-sig")] if text_path else generate_stories(1.0, 0)
        tokenizer = train_tokenizer(texts, config.vocab_size, work / "tokenizer.model")
        started = time.perf_counter()
        params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
        init_seconds = time.perf_counter() - started
        repeats = [str(i) for i in range(args.repeats)]

        rows = {}
        rows["write run"] = median_time(lambda d: write_run(work / "runs" / d, config, params,
                                                           tokenizer_path=tokenizer.path, init_from="benchmark"),
                                        repeats)
        run_dir = work / "runs" / "0"
        rows["export hf float32"] = median_time(lambda d: export_hf(run_dir, work / "hf32" / d), repeats)
        rows["export hf bfloat16"] = median_time(lambda d: export_hf(run_dir, work / "hf16" / d, dtype="bfloat16"),
                                                 repeats)
        for directory in repeats:
            (work / "c" / directory).mkdir(parents=True)
        rows["export llama2c"] = median_time(lambda d: export_llama2c(run_dir, work / "c" / d / "model.bin"), repeats)
        rows["import hf float32"] = median_time(lambda d: import_hf(work / "hf32" / "0", work / "in32" / d), repeats)
        rows["import hf bfloat16"] = median_time(lambda d: import_hf(work / "hf16" / "0", work / "in16" / d), repeats)
        sizes = {"run checkpoint": size_of(run_dir / "checkpoints"), "hf float32": size_of(work / "hf32" / "0"),
                 "hf bfloat16": size_of(work / "hf16" / "0"), "llama2c .bin": size_of(work / "c" / "0" / "model.bin")}

        commands = []
        for module, argv in (("import_command", ("--from", work / "hf32" / "0", "--out", work / "cmd-import")),
                             ("export_command", ("--run", run_dir, "--format", "hf", "--out", work / "cmd-export"))):
            wall, peak_mb, shown = as_command(module, *argv)
            commands.append({"command": " ".join(shown).replace(str(work), "$WORK"), "wall_s": round(wall, 2),
                             "peak_rss_mb": round(peak_mb, 1)})

        differences = {"hf float32": parity(config, params, work / "hf32" / "0"),
                       "hf bfloat16 (weights rounded to bfloat16)": parity(config, params, work / "hf16" / "0")}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "benchmark": "interop_timing",
        "model": config.name,
        "params": count_params(params),
        "command": " ".join([".venv/bin/python", "benchmarks/interop_timing.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                    "device": str(jax.devices()[0]), "load_average_start": load_start,
                    "load_average_end": os.getloadavg()},
        "tokenizer_text": str(text_path.name) if text_path else "generated sample stories",
        "method": f"in-process phases: median of {args.repeats} runs, each into a fresh directory, JAX started; "
                  "commands: a fresh Python process each (imports, JAX start-up included), peak RSS = its VmHWM",
        "init_params_s": round(init_seconds, 2),
        "seconds": {name: round(value, 3) for name, value in rows.items()},
        "bytes": sizes,
        "commands": commands,
        "max_abs_logit_difference_vs_transformers": differences,
        "parity_tokens": config.max_seq_len,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"interop_{config.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
